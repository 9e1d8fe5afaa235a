"""The fleet's TUF repository (python-tuf's Metadata API): root, targets, snapshot, timestamp.

Files are laid out for consistent snapshots, as the fleet service serves them:
  metadata/<N>.root.json, metadata/<N>.targets.json, metadata/<N>.snapshot.json,
  metadata/timestamp.json, targets/<dirs>/<sha256>.<name>.
A release is a target "products/<product>/<channel>" whose custom fields carry the version,
the rollout groups and the compatible hardware; publishing a new release re-points it.
Root and targets keys belong offline in the EU zone (threshold signing is supported: pass
as many signers as the role's threshold); snapshot and timestamp are the online keys.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

EXPIRY = {"root": datetime.timedelta(days=365), "targets": datetime.timedelta(days=90),
          "snapshot": datetime.timedelta(days=7), "timestamp": datetime.timedelta(days=1)}
SERIALIZER = JSONSerializer(compact=False)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class UpdateRepository:
    def __init__(self, folder: Path, signers: dict[str, Sequence[Signer]]) -> None:
        self.folder, self.signers = folder, signers
        self.metadata_dir, self.targets_dir = folder / "metadata", folder / "targets"

    # --- creation and keys -----------------------------------------------------------------
    @classmethod
    def create(cls, folder: Path, signers: dict[str, Sequence[Signer]],
               thresholds: dict[str, int] | None = None) -> UpdateRepository:
        repo = cls(folder, signers)
        root = Root(expires=_now() + EXPIRY["root"], consistent_snapshot=True)
        for role, role_signers in signers.items():
            for signer in role_signers:
                root.add_key(signer.public_key, role)
            root.roles[role].threshold = (thresholds or {}).get(role, 1)
        repo._publish("root", Metadata(root))
        repo._publish("targets", Metadata(Targets(expires=_now() + EXPIRY["targets"])))
        repo._publish_snapshot_and_timestamp()
        return repo

    def load(self, role: str) -> Metadata:
        if role == "timestamp":
            return Metadata.from_file(str(self.metadata_dir / "timestamp.json"))
        versions = sorted(int(p.name.split(".")[0]) for p in self.metadata_dir.glob(f"*.{role}.json"))
        return Metadata.from_file(str(self.metadata_dir / f"{versions[-1]}.{role}.json"))

    def _publish(self, role: str, metadata: Metadata, signers: Sequence[Signer] | None = None) -> None:
        metadata.signatures.clear()
        for signer in signers if signers is not None else self.signers[role]:
            metadata.sign(signer, append=True)
        data = metadata.to_bytes(SERIALIZER)
        name = "timestamp.json" if role == "timestamp" else f"{metadata.signed.version}.{role}.json"
        _write(self.metadata_dir / name, data)

    def _publish_snapshot_and_timestamp(self) -> None:
        targets = self.load("targets")
        if any(self.metadata_dir.glob("*.snapshot.json")):
            snapshot = self.load("snapshot")
            snapshot.signed.version += 1
        else:
            snapshot = Metadata(Snapshot(expires=_now()))
        snapshot.signed.expires = _now() + EXPIRY["snapshot"]
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        self._publish("snapshot", snapshot)
        if (self.metadata_dir / "timestamp.json").exists():
            timestamp = self.load("timestamp")
            timestamp.signed.version += 1
        else:
            timestamp = Metadata(Timestamp(expires=_now()))
        timestamp.signed.expires = _now() + EXPIRY["timestamp"]
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        self._publish("timestamp", timestamp)

    # --- releases --------------------------------------------------------------------------
    def release(self, product: str, version: str, artifact: bytes, *, hardware: list[str], groups: list[str],
                channel: str = "stable") -> TargetFile:
        path = f"products/{product}/{channel}"
        target = TargetFile.from_data(path, artifact, ["sha256"])
        target.unrecognized_fields["custom"] = {"version": version, "hardware": sorted(hardware),
                                                "rolloutGroups": sorted(groups)}
        # Consistent snapshot naming: <dir>/<sha256>.<name>, as ngclient requests it.
        _write(self.targets_dir / Path(path).parent / f"{target.hashes['sha256']}.{Path(path).name}", artifact)
        targets = self.load("targets")
        targets.signed.version += 1
        targets.signed.expires = _now() + EXPIRY["targets"]
        targets.signed.targets[path] = target
        self._publish("targets", targets)
        self._publish_snapshot_and_timestamp()
        return target

    def refresh_timestamp(self) -> None:
        """Re-sign timestamp (and snapshot) before they expire; run by the online signer."""
        self._publish_snapshot_and_timestamp()

    def rotate_root(self, role: str, old: Sequence[Signer], new: Sequence[Signer], threshold: int = 1) -> None:
        """Replace `role`'s keys; the new root is signed by the old and the new root keys."""
        root = self.load("root")
        for key_id in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(key_id, role)
        for signer in new:
            root.signed.add_key(signer.public_key, role)
        root.signed.roles[role].threshold = threshold
        root.signed.version += 1
        root.signed.expires = _now() + EXPIRY["root"]
        # A new root must satisfy the old root's threshold and its own (TUF 5.3.4).
        signers = [*old, *new] if role == "root" else list(self.signers["root"])
        self._publish("root", root, signers)
        self.signers[role] = list(new)
        if role in ("targets", "snapshot", "timestamp"):  # re-sign what the new keys now own
            targets = self.load("targets")
            targets.signed.version += 1
            self._publish("targets", targets)
            self._publish_snapshot_and_timestamp()

    def trusted_root(self) -> bytes:
        """The initial root a device is provisioned with (version 1)."""
        return (self.metadata_dir / "1.root.json").read_bytes()


def new_signer() -> CryptoSigner:
    return CryptoSigner.generate_ed25519()


ROLES = ("root", "targets", "snapshot", "timestamp")


def save_keys(folder: Path, signers: dict[str, Sequence[CryptoSigner]]) -> None:
    """PEM private keys, one file per key (<role>-<n>.pem, mode 0600), for an offline key ceremony."""
    folder.mkdir(parents=True, exist_ok=True)
    for role, role_signers in signers.items():
        for number, signer in enumerate(role_signers, 1):
            path = folder / f"{role}-{number}.pem"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(signer.private_bytes)


def load_keys(folder: Path) -> dict[str, list[CryptoSigner]]:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    keys: dict[str, list[CryptoSigner]] = {role: [] for role in ROLES}
    for path in sorted(folder.glob("*-*.pem")):
        role = path.name.rsplit("-", 1)[0]
        if role in keys:
            keys[role].append(CryptoSigner(load_pem_private_key(path.read_bytes(), password=None)))
    missing = [role for role, found in keys.items() if not found]
    if missing:
        raise ValueError(f"{folder}: no key for {', '.join(missing)} (expected <role>-<n>.pem files)")
    return keys
