"""One key domain per project: the same patient gets the same date shift and the same
pseudonyms in FHIR, telemetry and DICOM. Every derivation is a keyed HMAC-SHA256 with a
label, so one project key serves them all without one output revealing another."""
from __future__ import annotations

import datetime
import hmac
from dataclasses import dataclass, field
from typing import Callable

# Pseudonymize(domain, values) -> pseudonyms, e.g. the pseudonymizer service or library.
Pseudonymize = Callable[[str, list[str]], list[str]]

MAX_SHIFT_DAYS = 3650


def date_shift_days(key: bytes, patient_key: str) -> int:
    """1 day .. 10 years back, per patient; the DICOM anonymizer derives its shift identically."""
    digest = hmac.digest(key, b"date-shift|" + patient_key.encode(), "sha256")
    return -(int.from_bytes(digest[:4], "big") % MAX_SHIFT_DAYS + 1)


def crypto_hash(key: bytes, value: str) -> str:
    """Hex HMAC-SHA256 (64 characters: still a valid FHIR id)."""
    return hmac.digest(key, value.encode(), "sha256").hex()


@dataclass
class KeyDomain:
    """The project's keys. `project` keys hashes and date shifts; `pseudonymize` renders
    pseudonyms in the pseudonymizer's domains (cached per run: one call per distinct value)."""
    project: bytes
    pseudonymize: Pseudonymize | None = None
    _cache: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    _hashes: dict[str, str] = field(default_factory=dict, repr=False)
    _shifts: dict[str, int] = field(default_factory=dict, repr=False)

    def hash(self, value: str) -> str:
        cached = self._hashes.get(value)
        if cached is None:
            if len(self._hashes) > 100_000:
                self._hashes.clear()
            cached = self._hashes[value] = crypto_hash(self.project, value)
        return cached

    def shift_days(self, patient_key: str) -> int:
        cached = self._shifts.get(patient_key)
        if cached is None:
            if len(self._shifts) > 100_000:
                self._shifts.clear()
            cached = self._shifts[patient_key] = date_shift_days(self.project, patient_key)
        return cached

    def time_shift(self, patient_key: str) -> datetime.timedelta:
        return datetime.timedelta(days=self.shift_days(patient_key))

    def pseudonym(self, domain: str, value: str) -> str:
        if self.pseudonymize is None:
            raise ValueError(f"pseudonymize rule for domain {domain!r} but no pseudonymizer configured")
        cached = self._cache.get((domain, value))
        if cached is None:
            cached = self._cache[(domain, value)] = self.pseudonymize(domain, [value])[0]
        return cached

    def prefetch(self, domain: str, values: list[str]) -> None:
        """One round trip for many values (the pseudonymizer service takes lists)."""
        missing = sorted({v for v in values if (domain, v) not in self._cache})
        if missing and self.pseudonymize is not None:
            for value, result in zip(missing, self.pseudonymize(domain, missing)):
                self._cache[(domain, value)] = result


def load_key(path, *, create: bool = False) -> bytes:
    """The project key (32 bytes) from a secret file — a Barbican secret or Kubernetes secret
    mount in production; with create=True (embedded defaults) generated once, mode 0600."""
    import os
    from pathlib import Path

    path = Path(path)
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(32))
    key = path.read_bytes()
    if len(key) < 32:
        raise ValueError(f"{path}: a de-identification key needs at least 32 bytes, found {len(key)}")
    return key
