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
