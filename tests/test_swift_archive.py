"""Audit exports and evidence bundles archived in real Swift with object versioning, and the
de-identified feed through Swift's s3api with boto3 (tests/openstack_services.py); read back with
the official `swift` CLI (python-swiftclient)."""
from __future__ import annotations

import json
import secrets
import subprocess

import pytest

from medplat.s3_feed import DeidentifiedFeed, FeedError, s3_client
from medplat.swift_archive import (ArchiveError, SwiftArchive, archive_audit_export, archive_evidence_bundle)

pytestmark = pytest.mark.slow


def swift_cli(openstack, *args: str) -> str:
    result = subprocess.run(["swift", *args], capture_output=True, text=True, timeout=120,
                            env=openstack.deployer.cli_env(application_credential=True))
    assert result.returncode == 0, result.stderr
    return result.stdout


def archive(openstack, prefix: str) -> SwiftArchive:
    deployer = openstack.deployer
    store = SwiftArchive.from_application_credential(deployer.auth_url, deployer.app_cred_id,
                                                     deployer.app_cred_secret, f"{prefix}-{secrets.token_hex(4)}")
    store.ensure_versioned()
    return store


def test_audit_export_versions_are_kept_and_listed(openstack, tmp_path):
    store = archive(openstack, "audit-archive")
    export = tmp_path / "audit-2026-11-30.jsonl"
    export.write_text(json.dumps({"seq": 1, "entry": "first"}) + "\n")
    first = archive_audit_export(store, export)
    export.write_text(export.read_text() + json.dumps({"seq": 2, "entry": "second"}) + "\n")
    second = archive_audit_export(store, export)
    assert first != second
    name = "audit/audit-log/audit-2026-11-30.jsonl"
    versions = store.versions(name)
    assert {v.version_id for v in versions} == {first, second}
    assert [v.version_id for v in versions if v.is_latest] == [second]
    # The official client lists both versions and returns the old one by its id.
    listed = swift_cli(openstack, "list", store.container, "--versions").split()
    assert listed.count(name) == 2
    old = swift_cli(openstack, "download", store.container, name, "--version-id", first, "-o", "-")
    assert old == json.dumps({"seq": 1, "entry": "first"}) + "\n"


def test_evidence_bundle_archived_file_by_file(openstack, tmp_path):
    store = archive(openstack, "evidence-archive")
    bundle = tmp_path / "bundle-2026-11-30"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"files": ["report.html"]}))
    (bundle / "report.html").write_text("<html>report</html>")
    archived = archive_evidence_bundle(store, bundle)
    assert set(archived) == {"manifest.json", "report.html"}
    assert swift_cli(openstack, "list", store.container).split() == [
        "evidence/bundle-2026-11-30/manifest.json", "evidence/bundle-2026-11-30/report.html"]
    with pytest.raises(ArchiveError, match="not an evidence bundle"):
        archive_evidence_bundle(store, tmp_path)


def test_unversioned_swift_is_refused(openstack):
    """A container whose server does not keep versions is not an archive: simulated by asking for
    an object's version id from a plain (never versioned) container."""
    deployer = openstack.deployer
    plain = SwiftArchive.from_application_credential(deployer.auth_url, deployer.app_cred_id,
                                                     deployer.app_cred_secret, f"plain-{secrets.token_hex(4)}")
    plain.session.put(plain.url)
    with pytest.raises(ArchiveError, match="no version id"):
        plain.put("x", b"x")


def test_deidentified_feed_through_s3api_with_boto3(openstack):
    deployer = openstack.deployer
    client = s3_client(openstack.swift_url, "RegionOne", deployer.ec2_access, deployer.ec2_secret)
    bucket = f"deidentified-feed-{secrets.token_hex(4)}"
    client.create_bucket(Bucket=bucket)
    feed = DeidentifiedFeed(client, bucket)
    body = b'{"resourceType": "Observation", "subject": {"identifier": {"value": "7Q2M-X"}}}'
    feed.publish("2026/11/30/obs-1.json", body, "deidentified")
    assert feed.read("2026/11/30/obs-1.json") == body
    with pytest.raises(FeedError, match="de-identified data only"):
        feed.publish("2026/11/30/phi.json", b"{}", "phi")
    # The official swift client reads the same object, with the data class as its metadata.
    assert swift_cli(openstack, "download", bucket, "2026/11/30/obs-1.json", "-o", "-").encode() == body
    stat = swift_cli(openstack, "stat", bucket, "2026/11/30/obs-1.json")
    assert "Medplat-Data-Class: deidentified" in stat


# --- the operator's commands: `medplat audit archive`, `medplat evidence export --archive` ---------

def audit_log(tmp_path):
    """An audit log of 20 entries in 2 signed batches, and its verifier key file."""
    from medplat.service.db import make_engine
    from medplat.workloads.audit_log.log import AuditLog
    from medplat.workloads.audit_log.note import Signer
    from medplat.workloads.audit_log.tree import metadata
    from test_audit_log import events

    engine = make_engine(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    metadata.create_all(engine)
    signer = Signer.generate("dresden.medplat-audit")
    log = AuditLog(engine, "dresden.medplat/audit", signer)
    for batch in range(2):
        log.append(events(10, start=batch * 10))
    key = tmp_path / "log.pub"
    key.write_text(signer.verifier().text())
    return log, key


def cli(openstack, *args: str):
    from typer.testing import CliRunner

    from medplat.cli import app
    return CliRunner().invoke(app, list(args), env=openstack.deployer.cli_env(application_credential=True))


def test_audit_archive_command_verifies_then_keeps_every_version(openstack, tmp_path):
    log, key = audit_log(tmp_path)
    container, export = f"audit-{secrets.token_hex(4)}", tmp_path / "audit-2026-11-30.jsonl"
    export.write_bytes(b"".join(log.export(1)))
    first = cli(openstack, "audit", "archive", str(export), "--key", str(key), "--to", f"swift://{container}")
    assert first.exit_code == 0, first.output
    log.append(events_after(20))                  # the next day's export, same object name
    export.write_bytes(b"".join(log.export(1)))
    second = cli(openstack, "audit", "archive", str(export), "--key", str(key), "--to", f"swift://{container}")
    assert second.exit_code == 0, second.output
    name = f"audit/audit-log/{export.name}"
    assert swift_cli(openstack, "stat", container).count("Versions-Enabled: True") == 1
    listed = [line.split() for line in swift_cli(openstack, "list", container, "--versions", "--long").splitlines()
              if line.rstrip().endswith(name)]
    assert len(listed) == 2, "both exports are kept as versions"
    assert swift_cli(openstack, "download", container, name, "-o", "-").encode() == export.read_bytes()

    # A tampered export is refused and adds no version.
    lines = export.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b"clinician-", b"clinicion-")
    tampered = tmp_path / "audit-2026-11-30.jsonl.tampered"
    tampered.write_bytes(b"".join(lines))
    refused = cli(openstack, "audit", "archive", str(tampered), "--key", str(key), "--to", f"swift://{container}")
    assert refused.exit_code == 1 and "not archived" in refused.output
    assert tampered.name not in swift_cli(openstack, "list", container, "--versions")


def events_after(start: int) -> list[dict]:
    from test_audit_log import events
    return events(5, start=start)


def test_evidence_export_archives_the_bundle(openstack, tmp_path):
    from conftest import REPO
    from medplat.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    assert runner.invoke(app, ["evidence", "keygen", str(tmp_path / "evidence.key")]).exit_code == 0
    container = f"evidence-{secrets.token_hex(4)}"
    # A small real `pulumi stack export` (as the evidence tests use): synthesizing stacks is slow.
    result = runner.invoke(app, ["evidence", "export", "--inventory", str(REPO / "tests" / "data" /
                                                                          "stack-export-small.json"), "-o",
                                 str(tmp_path / "bundle-1"), "--key", str(tmp_path / "evidence.key"), "--no-checkov",
                                 "--today", "2026-11-23", "--archive", f"swift://{container}"],
                           env=openstack.deployer.cli_env(application_credential=True))
    assert result.exit_code == 0, result.output
    bundle = tmp_path / "bundle-1"
    local = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert swift_cli(openstack, "list", container, "--prefix", "evidence/bundle-1/").split() == [
        f"evidence/bundle-1/{name}" for name in local]
    manifest = swift_cli(openstack, "download", container, "evidence/bundle-1/manifest.json", "-o", "-")
    assert manifest.encode() == (bundle / "manifest.json").read_bytes()
    assert swift_cli(openstack, "stat", container).count("Versions-Enabled: True") == 1


def test_unreachable_swift_or_refused_credential_is_one_archive_error(openstack):
    """Not a keystoneauth traceback: the CLI turns ArchiveError into one line and exit 2."""
    from services import free_port

    deployer = openstack.deployer
    live = archive(openstack, "reachable")
    down = SwiftArchive(live.session, "x", account_url=f"http://127.0.0.1:{free_port()}/v1/AUTH_{deployer.project_id}")
    with pytest.raises(ArchiveError, match="archiving a.json: ConnectFailure"):
        down.put("a.json", b"{}")
    with pytest.raises(ArchiveError, match="Unauthorized"):
        SwiftArchive.from_application_credential(deployer.auth_url, deployer.app_cred_id, "not-the-secret", "x")


def test_archive_commands_refuse_missing_credentials_before_writing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medplat.cli import app

    env = {name: "" for name in ("OS_AUTH_URL", "OS_APPLICATION_CREDENTIAL_ID", "OS_APPLICATION_CREDENTIAL_SECRET")}
    assert CliRunner().invoke(app, ["evidence", "keygen", str(tmp_path / "evidence.key")]).exit_code == 0
    result = CliRunner().invoke(app, ["evidence", "export", "edge-leipzig", "-o", str(tmp_path / "b"),
                                      "--no-checkov", "--key", str(tmp_path / "evidence.key"), "--archive", "swift://evidence"], env=env)
    assert result.exit_code == 2 and "set OS_AUTH_URL" in result.output
    assert not (tmp_path / "b").exists()
    bad = CliRunner().invoke(app, ["evidence", "export", "edge-leipzig", "-o", str(tmp_path / "b"),
                                   "--no-checkov", "--key", str(tmp_path / "evidence.key"), "--archive", "s3://evidence"], env=env)
    assert bad.exit_code == 2 and "expected swift://<container>" in bad.output


def test_audit_archive_verifies_before_it_needs_swift(tmp_path):
    """Without any OS_* credential: a tampered export stops at verification (exit 1), an intact
    one gets as far as asking for the credential (exit 2, one line)."""
    from typer.testing import CliRunner

    from medplat.cli import app

    log, key = audit_log(tmp_path)
    export = tmp_path / "audit.jsonl"
    export.write_bytes(b"".join(log.export(1)))
    env = {name: "" for name in ("OS_AUTH_URL", "OS_APPLICATION_CREDENTIAL_ID", "OS_APPLICATION_CREDENTIAL_SECRET")}
    intact = CliRunner().invoke(app, ["audit", "archive", str(export), "--key", str(key), "--to", "swift://a"], env=env)
    assert intact.exit_code == 2 and "set OS_AUTH_URL" in intact.output
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(export.read_bytes().replace(b"Observation/o3", b"Observation/o9", 1))
    refused = CliRunner().invoke(app, ["audit", "archive", str(tampered), "--key", str(key), "--to", "swift://a"],
                                 env=env)
    assert refused.exit_code == 1 and "TAMPERED" in refused.output and "OS_AUTH_URL" not in refused.output
    bad_name = CliRunner().invoke(app, ["audit", "archive", str(export), "--key", str(key), "--to", "swift://a",
                                        "--log-name", "../etc"], env=env)
    assert bad_name.exit_code == 2
