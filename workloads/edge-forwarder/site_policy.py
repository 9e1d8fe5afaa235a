"""The site policy pushed from the EU zone (ConfigMap `site-policy`): which data classes may leave.

Re-read when the mounted file changes, so a policy pushed by `pulumi up` applies without a
restart. Key material never leaves a site, whatever the file says.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("medplat.edge-forwarder.policy")

NEVER_LEAVES = frozenset({"key-material"})
# Embedded default when no policy file is configured (local runs): what ingest accepts.
DEFAULT_EGRESS = frozenset({"phi", "pseudonymized", "deidentified", "operational"})


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class SitePolicy:
    site: str
    egress: frozenset[str]

    def may_leave(self, data_class: str) -> bool:
        return data_class in self.egress and data_class not in NEVER_LEAVES

    @classmethod
    def from_file(cls, path: Path) -> SitePolicy:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            egress = doc["egressDataClasses"]
            if not isinstance(egress, list) or not all(isinstance(c, str) for c in egress):
                raise TypeError("egressDataClasses must be a list of strings")
            refused = set(doc.get("refusedDataClasses") or [])
            return cls(site=str(doc.get("site", "local")), egress=frozenset(egress) - refused)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PolicyError(f"site policy {path}: {exc}") from None


class PolicySource:
    """The current policy; keeps the last good one if a pushed file is unreadable."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._policy = SitePolicy("local", DEFAULT_EGRESS) if path is None else SitePolicy.from_file(path)
        if path is not None:
            self._mtime = path.stat().st_mtime

    def __call__(self) -> SitePolicy:
        if self.path is not None:
            self._reload_if_changed()
        return self._policy

    def _reload_if_changed(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return
        if mtime == self._mtime:
            return
        with self._lock:
            try:
                self._policy = SitePolicy.from_file(self.path)
                log.info("site policy reloaded: egress %s", sorted(self._policy.egress))
            except PolicyError as exc:
                log.error("%s; keeping the previous policy", exc)
            self._mtime = mtime
