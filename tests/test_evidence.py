"""Evidence bundles: contents, signature, tamper detection, reproducibility, validation."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from trestle.oscal.assessment_results import AssessmentResults
from typer.testing import CliRunner

import policy_cases as cases
from conftest import REPO, STACKS
from medplat.cli import app
from medplat.evidence import matrix
from medplat.evidence.vulns import normalize
from medplat.stackset import StackSet
from medplat.synth import synthesize

runner = CliRunner()
EPOCH = "1790000000"  # 2026-09-21T14:13:20Z


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    assert runner.invoke(app, ["evidence", "keygen", str(folder / "evidence.key")]).exit_code == 0
    other = folder / "other.key"
    assert runner.invoke(app, ["evidence", "keygen", str(other)]).exit_code == 0
    return folder / "evidence.key", folder / "evidence.pub", folder / "other.pub"


def export(target, key, *args, epoch=EPOCH, monkeypatch=None):
    import os
    old = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = epoch
    try:
        return runner.invoke(app, ["evidence", "export", *args, "-o", str(target), "--key", str(key),
                                   "--no-checkov", "--today", "2026-11-23"])
    finally:
        if old is None:
            os.environ.pop("SOURCE_DATE_EPOCH")
        else:
            os.environ["SOURCE_DATE_EPOCH"] = old


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, keys):
    target = tmp_path_factory.mktemp("bundle") / "evidence"
    result = export(target, keys[0], "--all", "--stacks-dir", str(STACKS))
    assert result.exit_code == 0, result.output
    assert "PLANNED evidence bundle" in result.stdout and "report.html" in result.stdout
    return target


def verify(path, public):
    return runner.invoke(app, ["evidence", "verify", str(path), "--public-key", str(public)])


def test_bundle_contents(bundle):
    names = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    for expected in ("scope.json", "control-matrix.json", "control-matrix.csv", "policy/report.json",
                     "policy/report.sarif", "waivers.json", "sbom/platform.cdx.json", "oscal/assessment-results.json",
                     "report.html", "manifest.json", "manifest.intoto.json", "inventory/edge-dresden.json",
                     "sbom/workloads/edge-forwarder.cdx.json", "manual-evidence/GDPR-35.md"):
        assert expected in names, expected
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["evidenceLabel"] == "planned" and manifest["createdAt"] == "2026-09-21T14:13:20Z"
    assert set(manifest["files"]) == names - {"manifest.json", "manifest.intoto.json"}
    assert re.fullmatch(r"[0-9a-f]{40}", manifest["gitCommit"]), manifest["gitCommit"]
    assert manifest["tools"]["pulumi"] and manifest["tools"]["compliance-trestle"]
    scope = json.loads((bundle / "scope.json").read_text())
    assert scope["sites"] == ["analytics", "dresden", "eu-phi", "leipzig"]
    assert {"phi", "deidentified", "key-material"} <= set(scope["dataClasses"])
    assert any(f["from"] == "edge-forwarder" and f["to"] == "@cloud" for f in scope["dataFlows"])


def test_signed_bundle_verifies(bundle, keys):
    result = verify(bundle, keys[1])
    assert result.exit_code == 0, result.output
    assert "verified" in result.stdout


def test_flipping_one_byte_in_any_file_is_detected(bundle, keys, tmp_path):
    files = sorted(p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file())
    for relative in files:
        copy = tmp_path / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(bundle, copy)
        target = copy / relative
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        result = verify(copy, keys[1])
        assert result.exit_code == 1, relative
        if str(relative) == "manifest.intoto.json":
            assert "signature" in result.stderr
        else:
            assert f"modified: {relative}" in result.stderr, (relative, result.stderr)


def test_deleted_added_and_other_key_are_detected(bundle, keys, tmp_path):
    copy = tmp_path / "deleted"
    shutil.copytree(bundle, copy)
    (copy / "waivers.json").unlink()
    result = verify(copy, keys[1])
    assert result.exit_code == 1 and "removed: waivers.json" in result.stderr

    copy = tmp_path / "added"
    shutil.copytree(bundle, copy)
    (copy / "extra.txt").write_text("not evidence")
    result = verify(copy, keys[1])
    assert result.exit_code == 1 and "added: extra.txt" in result.stderr

    result = verify(bundle, keys[2])
    assert result.exit_code == 1 and "signature does not verify with this public key" in result.stderr


def test_zip_bundles_are_reproducible(keys, tmp_path):
    first = export(tmp_path / "a.zip", keys[0], "edge-leipzig", "--stacks-dir", str(STACKS))
    second = export(tmp_path / "b.zip", keys[0], "edge-leipzig", "--stacks-dir", str(STACKS))
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    assert verify(tmp_path / "a.zip", keys[1]).exit_code == 0


def test_oscal_and_cyclonedx_documents_validate(bundle):
    document = json.loads((bundle / "oscal" / "assessment-results.json").read_text())
    parsed = AssessmentResults.parse_obj(document["assessment-results"])
    assert parsed.results[0].findings
    validator = JsonStrictValidator(SchemaVersion.V1_6)
    sboms = sorted((bundle / "sbom").rglob("*.cdx.json"))
    assert len(sboms) >= 10
    for path in sboms:
        assert validator.validate_str(path.read_text()) is None, path
    platform = json.loads((bundle / "sbom" / "platform.cdx.json").read_text())
    services = {s["name"]: s for s in platform["services"]}
    assert services["edge-forwarder"]["x-trust-boundary"] is True
    assert {"flow": "inbound", "classification": "phi"} in services["dicom-anonymizer"]["data"]
    assert any(c["name"] == "pulumi" for c in platform["components"])
    # A workload with a requirements.lock gets its dependencies listed; one without says so.
    ingest = json.loads((bundle / "sbom" / "workloads" / "ingest.cdx.json").read_text())
    # Names as the lock spells them (uv writes PEP 503 normalized names: fhir-resources).
    assert {"fastapi", "uvicorn", "fhir-resources"} <= {normalize(c["name"]) for c in ingest["components"]}
    assert not any(normalize(c["name"]).startswith("pulumi") for c in ingest["components"])  # its own set only
    forwarder = json.loads((bundle / "sbom" / "workloads" / "edge-forwarder.cdx.json").read_text())
    assert {"paho-mqtt", "orjson"} <= {c["name"].lower() for c in forwarder["components"]}
    broker = json.loads((bundle / "sbom" / "workloads" / "mqtt-broker.cdx.json").read_text())
    assert broker["components"] == []  # a third-party image: medplat has no lock for it
    assert any("no workloads/mqtt-broker/requirements.lock" in p["value"] for p in broker["metadata"]["properties"])


def test_required_controls_have_automated_checks_and_the_report_shows_the_same_verdicts(bundle):
    rows = json.loads((bundle / "control-matrix.json").read_text())["controls"]
    table = matrix.coverage(rows)
    html = (bundle / "report.html").read_text()
    for row in table:
        assert row["policies"], f"{row['control']} has no automated check"
        assert f'<details id="{row["control"]}" data-status="{row["status"]}">' in html, row["control"]
    # The README's table is generated by the same code (tests/test_checkov_gate.py compares it).
    by_id = {r["control"]: r for r in rows}
    assert by_id["CRA-I.2.a"]["status"] == "not-evaluated"  # no vulnerability scan imported
    assert not [r for r in rows if r["status"] == "pass" and not r["resources"]]


def test_report_carries_provenance_waivers_dataflows_and_scans(tmp_path, keys, bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    html = (bundle / "report.html").read_text()
    assert manifest["gitCommit"] in html and manifest["signerKeyId"] in html
    assert manifest["evidenceDigest"] in html
    assert "ciso@saxony-hospitals.example" in html and "k8s-image-published" in html
    assert "may leave the site" in html and "198.51.100.65/32" in html
    assert "No scan result was imported" in html
    scanned = tmp_path / "scanned"
    result = export(scanned, keys[0], "edge-leipzig", "--stacks-dir", str(STACKS), "--previous", str(bundle),
                    "--scan", str(REPO / "tests" / "data" / "scans" / "grype.json"))
    assert result.exit_code == 0, result.output
    html = (scanned / "report.html").read_text()
    assert "grype db schema 5 built 2024-03-01T01:30:53Z" in html
    assert "resource removed: " in html  # the diff against the previous (all-stacks) bundle
    summary = json.loads((scanned / "vulnerabilities" / "summary.json").read_text())
    assert summary["scans"][0]["tool"] == "grype" and summary["scans"][0]["matched"] == 0  # targets ingest only


def test_export_without_key_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDPLAT_EVIDENCE_KEY", raising=False)
    result = runner.invoke(app, ["evidence", "export", "--all", "-o", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("medplat: error: no signing key")


@pytest.fixture(scope="module")
def broken_bundle(tmp_path_factory, keys):
    folder = tmp_path_factory.mktemp("broken-evidence")
    analytics = synthesize("analytics", STACKS, extra=cases.bucket_without_kms)
    path = folder / "analytics.inventory.json"
    path.write_text(analytics.inventory.dumps())
    target = folder / "bundle"
    result = export(target, keys[0], "--inventory", str(path))
    assert result.exit_code == 0, result.output
    return target


def test_diff_names_changed_controls_and_resources(tmp_path, keys, broken_bundle):
    good_inventory = tmp_path / "analytics.inventory.json"
    good_inventory.write_text(StackSet(STACKS).synth("analytics").inventory.dumps())
    good = tmp_path / "good"
    assert export(good, keys[0], "--inventory", str(good_inventory)).exit_code == 0
    result = runner.invoke(app, ["evidence", "diff", str(good), str(broken_bundle)])
    assert result.exit_code == 0
    assert "control GDPR-32.1.a: pass -> fail" in result.stdout
    assert "resource added: " in result.stdout and "tamper-plain" in result.stdout


def test_deployed_evidence_is_labelled_deployed(tmp_path, keys):
    target = tmp_path / "deployed"
    result = export(target, keys[0], "--inventory", str(REPO / "tests" / "data" / "stack-export-small.json"))
    assert result.exit_code == 0, result.output
    assert json.loads((target / "manifest.json").read_text())["evidenceLabel"] == "deployed"
    assert "DEPLOYED" in (target / "report.html").read_text()


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian chromium is required for this test (.ci/run installs it)"
    return path


def test_html_report_renders_without_console_errors_failing_first(broken_bundle, tmp_path):
    report = broken_bundle / "report.html"
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
               "--dump-dom", report.as_uri()]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    dom = completed.stdout
    assert "<h1>medplat compliance evidence" in dom
    console_errors = [line for line in completed.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert console_errors == []
    statuses = re.findall(r'<details id="[^"]+" data-status="([a-z-]+)"', dom)
    assert statuses[0] == "fail", statuses[:5]
    order = {"fail": 0, "not-evaluated": 1, "not-covered": 2, "manual": 3, "waived": 4, "pass": 5}  # failing and unproven first
    assert [order[s] for s in statuses] == sorted(order[s] for s in statuses)


def _png_rows(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and the decompressed scanlines of a PNG (PNG spec: IHDR, IDAT chunks)."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, width, height = 8, b"", 0, 0
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    return width, height, zlib.decompress(idat)


def test_html_report_screenshot_shows_provenance_waivers_and_dataflows(bundle, tmp_path_factory):
    """Headless Chromium renders the officer's sections; the screenshots stay as test artifacts."""
    artifacts = tmp_path_factory.mktemp("report-screenshots")
    report = bundle / "report.html"
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={artifacts / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    for section in ("provenance", "dataflows", "waivers", "vulnerabilities", "diff"):
        assert f'<section id="{section}">' in dom, section
    assert dom.index('id="provenance"') < dom.index('id="dataflows"') < dom.index('id="waivers"') \
        < dom.index("<details"), "the officer's sections come before the controls"
    shot = artifacts / "report-top.png"
    completed = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1400,2600", report.as_uri()],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and shot.is_file(), completed.stderr[-2000:]
    width, height, pixels = _png_rows(shot.read_bytes())
    assert (width, height) == (1400, 2600)
    assert len(set(pixels[:: max(1, len(pixels) // 20000)])) > 8, "the screenshot is blank"
    print(f"report screenshot: {shot}")
