"""Device / gateway update client on TUF's ngclient.

ngclient refuses expired, rolled-back, mix-and-match and wrongly signed metadata and any
artifact whose length or hashes differ from the signed targets metadata; only then does this
client check the release's hardware compatibility, rollout group and version, and install
the artifact atomically. Nothing is applied before every check passed.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater


class HttpxFetcher(FetcherInterface):
    """ngclient's transport over an httpx client (mTLS-capable; the fleet API is mTLS)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def _fetch(self, url: str) -> Iterator[bytes]:
        response = self.client.get(url)
        if response.status_code != 200:
            raise DownloadHTTPError(f"GET {url}: {response.status_code}", response.status_code)
        yield response.content


class UpdateRefused(Exception):
    pass


@dataclass(frozen=True)
class Installed:
    product: str
    version: str
    path: Path


class DeviceUpdater:
    def __init__(self, state: Path, base_url: str, *, hardware: str, group: str, trusted_root: bytes | None,
                 client: httpx.Client) -> None:
        self.state, self.hardware, self.group = state, hardware, group
        (state / "metadata").mkdir(parents=True, exist_ok=True)
        (state / "downloads").mkdir(parents=True, exist_ok=True)
        self.base_url = base_url.rstrip("/")
        self.fetcher = HttpxFetcher(client)
        self.trusted_root = trusted_root

    def _updater(self) -> Updater:
        # A fresh Updater per check: ngclient refreshes metadata once per instance.
        bootstrap = None if (self.state / "metadata" / "root.json").exists() else self.trusted_root
        return Updater(str(self.state / "metadata"), f"{self.base_url}/metadata/",
                       str(self.state / "downloads"), f"{self.base_url}/targets/", fetcher=self.fetcher,
                       bootstrap=bootstrap)

    def installed_version(self, product: str) -> str | None:
        marker = self.state / "installed" / f"{product}.version"
        return marker.read_text().strip() if marker.exists() else None

    def update(self, product: str, channel: str = "stable") -> Installed | None:
        """Install the product's current release if it is newer and meant for this device."""
        updater = self._updater()
        updater.refresh()  # raises on any metadata attack (tuf.api.exceptions.RepositoryError)
        info = updater.get_targetinfo(f"products/{product}/{channel}")
        if info is None:
            return None
        custom = info.unrecognized_fields.get("custom", {})
        version = str(custom.get("version", ""))
        if self.hardware not in custom.get("hardware", []):
            raise UpdateRefused(f"release {version} is not for hardware {self.hardware!r}")
        if self.group not in custom.get("rolloutGroups", []):
            return None  # not rolled out to this group yet
        current = self.installed_version(product)
        if current is not None and _version(version) <= _version(current):
            return None
        path = updater.find_cached_target(info) or updater.download_target(info)  # length + hashes verified
        target = self.state / "installed" / product
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(product + ".partial")
        partial.write_bytes(Path(path).read_bytes())
        os.replace(partial, target)
        marker = target.with_name(f"{product}.version")
        marker.write_text(version + "\n")
        return Installed(product, version, target)


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise UpdateRefused(f"release version {text!r} is not numeric (major.minor.patch)") from None
