"""Audit-log exports and evidence bundles archived in OpenStack Swift with object versioning.

A container with `X-Versions-Enabled: true` keeps every version of an object: overwriting an
archived export adds a version, never replaces the old one. Every upload carries its MD5 as
`ETag` so Swift refuses a body that arrived altered, and the version id Swift assigned is
returned for the record. Authentication: a Keystone application credential of the EU PHI
project (keystoneauth1), the object-store endpoint from the catalog.

Operators archive with `medplat audit archive EXPORT --key KEY --to swift://CONTAINER` (the
export is verified against its signed checkpoints first) and `medplat evidence export ...
--archive swift://CONTAINER`; both read the same `OS_*` variables as the official clients.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote


class ArchiveError(RuntimeError):
    pass


@dataclass(frozen=True)
class ArchivedVersion:
    name: str
    version_id: str
    etag: str
    is_latest: bool


SCHEME = "swift://"


def parse_target(target: str) -> str:
    """`swift://<container>` -> the container name."""
    container = target[len(SCHEME):] if target.startswith(SCHEME) else ""
    if not container or "/" in container or len(container) > 256:
        raise ArchiveError(f"{target!r}: expected swift://<container> (a container name without '/')")
    return container


class SwiftArchive:
    def __init__(self, session, container: str, account_url: str | None = None, *, interface: str = "public",
                 region: str | None = None) -> None:
        self.session, self.container = session, container
        if account_url is None:
            account_url = self._call("finding the object-store endpoint", lambda: session.get_endpoint(
                service_type="object-store", interface=interface, region_name=region))
            if not account_url:
                raise ArchiveError("no object-store endpoint in the Keystone catalog")
        self.url = f"{account_url.rstrip('/')}/{quote(container)}"

    @staticmethod
    def _call(what: str, action):
        """keystoneauth raises on refused authentication and unreachable servers even with
        raise_exc=False: one ArchiveError line instead of a traceback."""
        from keystoneauth1 import exceptions

        try:
            return action()
        except exceptions.ClientException as exc:
            raise ArchiveError(f"{what}: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def from_environment(cls, container: str, environ: Mapping[str, str] = os.environ) -> "SwiftArchive":
        """The application credential from OS_AUTH_URL, OS_APPLICATION_CREDENTIAL_ID and
        OS_APPLICATION_CREDENTIAL_SECRET (as `openstack`/`swift` read them; OS_REGION_NAME and
        OS_INTERFACE are honoured)."""
        wanted = ("OS_AUTH_URL", "OS_APPLICATION_CREDENTIAL_ID", "OS_APPLICATION_CREDENTIAL_SECRET")
        missing = [name for name in wanted if not environ.get(name)]
        if missing:
            raise ArchiveError(f"archiving to Swift needs a Keystone application credential: set {', '.join(missing)}")
        return cls.from_application_credential(*(environ[name] for name in wanted), container,
                                               interface=environ.get("OS_INTERFACE") or "public",
                                               region=environ.get("OS_REGION_NAME") or None)

    @classmethod
    def from_application_credential(cls, auth_url: str, credential_id: str, secret: str,
                                    container: str, **endpoint) -> "SwiftArchive":
        from keystoneauth1 import session
        from keystoneauth1.identity import v3

        return cls(session.Session(auth=v3.ApplicationCredential(
            auth_url=auth_url, application_credential_id=credential_id, application_credential_secret=secret)),
            container, **endpoint)

    def ensure_versioned(self) -> None:
        """Create the container with versioning on, and refuse a Swift that does not keep versions."""
        created = self._call(f"creating {self.container}", lambda: self.session.put(
            self.url, headers={"X-Versions-Enabled": "true"}, raise_exc=False))
        if created.status_code not in (201, 202):
            raise ArchiveError(f"cannot create {self.container}: HTTP {created.status_code} {created.text[:200]}")
        head = self._call(f"reading {self.container}", lambda: self.session.head(self.url, raise_exc=False))
        if head.headers.get("X-Versions-Enabled", "").lower() != "true":
            raise ArchiveError(f"{self.container}: this Swift does not keep object versions "
                               "(versioned_writes with allow_object_versioning)")

    def put(self, name: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        """Store one version; returns the version id Swift assigned."""
        response = self._call(f"archiving {name}", lambda: self.session.put(
            f"{self.url}/{quote(name)}", data=body, raise_exc=False, headers={
                "ETag": hashlib.md5(body, usedforsecurity=False).hexdigest(), "Content-Type": content_type}))
        if response.status_code != 201:
            raise ArchiveError(f"archiving {name} failed: HTTP {response.status_code} {response.text[:200]}")
        version = response.headers.get("X-Object-Version-Id")
        if not version:
            raise ArchiveError(f"{self.container} returned no version id for {name}: versioning is off")
        return version

    def versions(self, name: str) -> list[ArchivedVersion]:
        response = self._call(f"listing {self.container}", lambda: self.session.get(
            self.url, params={"versions": "", "prefix": name, "format": "json"}, raise_exc=False))
        if response.status_code != 200:
            raise ArchiveError(f"listing {self.container}: HTTP {response.status_code}")
        return [ArchivedVersion(item["name"], item["version_id"], item["hash"], item["is_latest"])
                for item in response.json() if item["name"] == name]

    def get(self, name: str, version_id: str | None = None) -> bytes:
        params = {"version-id": version_id} if version_id else None
        response = self._call(f"reading {name}", lambda: self.session.get(
            f"{self.url}/{quote(name)}", params=params, raise_exc=False))
        if response.status_code != 200:
            raise ArchiveError(f"reading {name}: HTTP {response.status_code}")
        return response.content


def archive_audit_export(archive: SwiftArchive, export: Path, log_name: str = "audit-log") -> str:
    """An audit export (`medplat audit` JSON lines with checkpoints) under audit/<log>/<file name>."""
    return archive.put(f"audit/{log_name}/{export.name}", export.read_bytes(), "application/x-ndjson")


def archive_evidence_bundle(archive: SwiftArchive, bundle: Path) -> dict[str, str]:
    """Every file of an evidence bundle under evidence/<bundle folder>/... (a .zip bundle as one
    object evidence/<file name>); returns name -> version id."""
    if bundle.is_file() and bundle.suffix == ".zip":
        return {bundle.name: archive.put(f"evidence/{bundle.name}", bundle.read_bytes(), "application/zip")}
    if not (bundle / "manifest.json").is_file():
        raise ArchiveError(f"{bundle} is not an evidence bundle (no manifest.json)")
    return {str(path.relative_to(bundle)): archive.put(f"evidence/{bundle.name}/{path.relative_to(bundle)}",
                                                       path.read_bytes())
            for path in sorted(bundle.rglob("*")) if path.is_file()}
