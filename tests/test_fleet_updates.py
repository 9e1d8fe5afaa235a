"""OTA updates on TUF: the device client (ngclient) accepts a correct update and a root key
rotation, and refuses bad signatures, wrong keys, expired metadata, roll-backs, freeze and
mix-and-match attacks and tampered artifacts before anything is installed."""
from __future__ import annotations

import datetime
import time

import pytest
from fastapi.testclient import TestClient
from tuf.api.exceptions import (BadVersionNumberError, ExpiredMetadataError, LengthOrHashMismatchError,
                                UnsignedMetadataError)
from tuf.api.metadata import Metadata

from medplat.workloads.fleet.app import Settings, build
from medplat.workloads.fleet.tuf_repo import UpdateRepository, new_signer
from medplat.workloads.fleet.updater import DeviceUpdater, UpdateRefused

FIRMWARE_1, FIRMWARE_2 = b"pump firmware 1.0.0" * 100, b"pump firmware 1.1.0" * 100


@pytest.fixture
def fleet(tmp_path):
    root_keys = [new_signer(), new_signer()]
    signers = {"root": root_keys, "targets": [new_signer()], "snapshot": [new_signer()], "timestamp": [new_signer()]}
    repo = UpdateRepository.create(tmp_path / "tuf", signers, thresholds={"root": 2})
    repo.release("pump-fw", "1.0.0", FIRMWARE_1, hardware=["pump-x"], groups=["canary", "general"])
    app, _ = build(Settings(data_dir=tmp_path / "fleet", tuf_repository=tmp_path / "tuf"))
    with TestClient(app) as client:
        yield repo, client, tmp_path


def device(fleet, name="dev-1", hardware="pump-x", group="canary") -> DeviceUpdater:
    repo, client, tmp_path = fleet
    return DeviceUpdater(tmp_path / name, "http://testserver/tuf", hardware=hardware, group=group,
                         trusted_root=repo.trusted_root(), client=client)


def installed(updater: DeviceUpdater) -> bytes | None:
    path = updater.state / "installed" / "pump-fw"
    return path.read_bytes() if path.exists() else None


def test_a_correct_update_is_installed_once_and_only_for_its_hardware_and_group(fleet):
    repo = fleet[0]
    updater = device(fleet)
    assert updater.update("pump-fw").version == "1.0.0" and installed(updater) == FIRMWARE_1
    assert updater.update("pump-fw") is None, "same version: nothing to do"
    repo.release("pump-fw", "1.1.0", FIRMWARE_2, hardware=["pump-x"], groups=["canary"])
    assert updater.update("pump-fw").version == "1.1.0" and installed(updater) == FIRMWARE_2
    general = device(fleet, "dev-2", group="general")
    assert general.update("pump-fw") is None, "1.1.0 is not rolled out to the general group yet"
    with pytest.raises(UpdateRefused, match="not for hardware"):
        device(fleet, "dev-3", hardware="pump-y").update("pump-fw")


def _edit(repo: UpdateRepository, name: str, edit) -> None:
    path = repo.metadata_dir / name
    path.write_bytes(edit(path.read_bytes()))


def test_tampered_artifact_is_refused_and_nothing_installed(fleet):
    repo = fleet[0]
    updater = device(fleet)
    updater.update("pump-fw")
    target = repo.release("pump-fw", "1.1.0", FIRMWARE_2, hardware=["pump-x"], groups=["canary"])
    (repo.targets_dir / "products" / "pump-fw" / f"{target.hashes['sha256']}.stable").write_bytes(FIRMWARE_2.replace(b"1.1.0", b"6.6.6"))
    with pytest.raises(LengthOrHashMismatchError):
        updater.update("pump-fw")
    assert installed(updater) == FIRMWARE_1 and updater.installed_version("pump-fw") == "1.0.0"


def test_metadata_changed_without_re_signing_is_refused(fleet):
    repo = fleet[0]
    _edit(repo, "timestamp.json", lambda data: data.replace(b'"version": 2', b'"version": 9'))
    with pytest.raises(UnsignedMetadataError):
        device(fleet).update("pump-fw")
    assert installed(device(fleet)) is None


def test_targets_signed_with_a_key_root_does_not_trust_are_refused(fleet):
    repo = fleet[0]
    repo.signers["targets"] = [new_signer()]  # an attacker's key
    repo.release("pump-fw", "6.6.6", b"malware", hardware=["pump-x"], groups=["canary"])
    updater = device(fleet)
    with pytest.raises(UnsignedMetadataError):
        updater.update("pump-fw")
    assert installed(updater) is None


def test_expired_metadata_is_refused(fleet):
    repo = fleet[0]
    snapshot = repo.load("snapshot")
    snapshot.signed.version += 1
    snapshot.signed.expires = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    repo._publish("snapshot", snapshot)
    timestamp = repo.load("timestamp")
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta.version = snapshot.signed.version
    repo._publish("timestamp", timestamp)
    with pytest.raises(ExpiredMetadataError):
        device(fleet).update("pump-fw")


def test_rollback_to_older_signed_metadata_is_refused(fleet):
    repo = fleet[0]
    updater = device(fleet)
    old_timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()
    updater.update("pump-fw")
    repo.release("pump-fw", "1.1.0", FIRMWARE_2, hardware=["pump-x"], groups=["canary"])
    updater.update("pump-fw")
    (repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)  # valid signature, older version
    with pytest.raises(BadVersionNumberError):
        updater.update("pump-fw")
    assert updater.installed_version("pump-fw") == "1.1.0"


def test_freeze_attack_replaying_metadata_past_its_expiry_is_refused(fleet):
    repo = fleet[0]
    timestamp = repo.load("timestamp")
    timestamp.signed.version += 1
    timestamp.signed.expires = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + \
        datetime.timedelta(seconds=2)
    repo._publish("timestamp", timestamp)
    updater = device(fleet)
    assert updater.update("pump-fw").version == "1.0.0"
    time.sleep(2.5)  # the mirror keeps serving the same, now stale, timestamp
    with pytest.raises(ExpiredMetadataError):
        updater.update("pump-fw")


def test_mix_and_match_targets_is_refused(fleet):
    repo = fleet[0]
    updater = device(fleet)
    updater.update("pump-fw")
    old_targets = repo.load("targets")
    repo.release("pump-fw", "1.1.0", FIRMWARE_2, hardware=["pump-x"], groups=["canary"])
    current = repo.load("targets")
    # Serve the old (validly signed) targets under the current version's name.
    (repo.metadata_dir / f"{current.signed.version}.targets.json").write_bytes(
        (repo.metadata_dir / f"{old_targets.signed.version}.targets.json").read_bytes())
    with pytest.raises(BadVersionNumberError):
        updater.update("pump-fw")
    assert updater.installed_version("pump-fw") == "1.0.0"


def test_root_key_rotation_is_followed_and_a_root_below_threshold_is_not(fleet):
    repo = fleet[0]
    updater = device(fleet)
    updater.update("pump-fw")
    old_root, new_root = list(repo.signers["root"]), [new_signer(), new_signer()]
    repo.rotate_root("root", old_root, new_root, threshold=2)
    repo.rotate_root("timestamp", new_root, [new_signer()])  # signed by the new root keys
    repo.release("pump-fw", "1.1.0", FIRMWARE_2, hardware=["pump-x"], groups=["canary"])
    assert updater.update("pump-fw").version == "1.1.0"
    assert Metadata.from_file(str(updater.state / "metadata" / "root.json")).signed.version == 3

    # A root v4 signed by only one of the two root keys does not meet the threshold.
    root = repo.load("root")
    root.signed.version += 1
    repo._publish("root", root, [new_root[0]])
    with pytest.raises(UnsignedMetadataError):
        updater.update("pump-fw")


def test_cli_creates_a_repository_the_service_serves_and_a_device_installs_from(tmp_path):
    from typer.testing import CliRunner

    from medplat.cli import app as cli

    runner = CliRunner()
    repository, keys, artifact = tmp_path / "tuf", tmp_path / "keys", tmp_path / "fw.bin"
    assert runner.invoke(cli, ["fleet", "init", str(repository), "--keys", str(keys), "--root-threshold", "2"]).exit_code == 0
    assert sorted(p.name for p in keys.iterdir()) == ["root-1.pem", "root-2.pem", "snapshot-1.pem", "targets-1.pem",
                                                      "timestamp-1.pem"]
    artifact.write_bytes(FIRMWARE_2)
    bad = runner.invoke(cli, ["fleet", "release", str(repository), str(artifact), "--keys", str(keys),
                              "--product", "pump-fw", "--version", "1.1-beta", "--hardware", "pump-x", "--group", "canary"])
    assert bad.exit_code == 2 and "not numeric" in bad.stderr
    released = runner.invoke(cli, ["fleet", "release", str(repository), str(artifact), "--keys", str(keys),
                                   "--product", "pump-fw", "--version", "1.1.0", "--hardware", "pump-x",
                                   "--group", "canary"])
    assert released.exit_code == 0, released.output
    app, _ = build(Settings(data_dir=tmp_path / "fleet", tuf_repository=repository))
    with TestClient(app) as client:
        updater = DeviceUpdater(tmp_path / "device", "http://testserver/tuf", hardware="pump-x", group="canary",
                                trusted_root=(repository / "metadata" / "1.root.json").read_bytes(), client=client)
        assert updater.update("pump-fw").version == "1.1.0" and installed(updater) == FIRMWARE_2
