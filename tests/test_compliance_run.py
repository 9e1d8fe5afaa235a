"""Continuous compliance: re-check a deployed export, append OSCAL results, audit the run, report drift."""
from __future__ import annotations

from medplat.service.auth import mint_local_token

import copy
import json
import threading
import time

import pytest
import uvicorn
from trestle.oscal.assessment_results import AssessmentResults
from typer.testing import CliRunner

from conftest import REPO
from medplat.cli import app

runner = CliRunner()
EXPORT = REPO / "tests" / "data" / "stack-export-small.json"


def drifted_export(path):
    """The same stack a week later: rotation switched off, the alias removed, a bucket added by hand."""
    document = json.loads(EXPORT.read_text())
    resources = document["deployment"]["resources"]
    key = next(r for r in resources if r["type"] == "aws:kms/key:Key")
    key["inputs"]["enableKeyRotation"] = False
    resources[:] = [r for r in resources if r["type"] != "aws:kms/alias:Alias"]
    bucket = copy.deepcopy(key)
    bucket.update(type="aws:s3/bucket:Bucket", id="clickops-bucket",
                  urn=key["urn"].replace("aws:kms/key:Key::analytics-kms", "aws:s3/bucket:Bucket::clickops-bucket"),
                  inputs={"bucket": "clickops-bucket", "tags": key["inputs"].get("tags", {})})
    resources.append(bucket)
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def audit_log(tmp_path):
    """The real audit-log service on a free loopback port."""
    from medplat.workloads.audit_log.app import Settings, build
    from services import free_port

    service, _settings = build(Settings(data_dir=tmp_path / "audit", origin="eu-phi.medplat/audit"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(service, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", service
    server.should_exit = True
    thread.join(timeout=10)


def run(out, export, *extra):
    return runner.invoke(app, ["compliance", "run", str(export), "-o", str(out), "--no-checkov",
                               "--today", "2026-11-23", *extra])


def test_runs_append_results_audit_the_digest_and_report_drift(tmp_path, audit_log):
    url, _service = audit_log
    out = tmp_path / "compliance"
    token = tmp_path / "audit.token"  # the audit log takes appends with scope audit.write
    token.write_text(mint_local_token(tmp_path / "audit", "audit-log", ["audit.write"], "compliance-runner"))
    first = run(out, EXPORT, "--audit-url", url, "--audit-token-file", str(token))
    # The export's SSM parameter carries no medplat labels: a mandatory violation from the start.
    assert first.exit_code == 1 and "gate FAIL, 1 mandatory violation(s)" in first.stdout, first.output
    assert f"audit log: recorded at {url}" in first.stdout
    second = run(out, drifted_export(tmp_path / "later.json"), "--audit-url", url, "--audit-token-file", str(token))
    assert second.exit_code == 1 and "gate FAIL, 1 mandatory" not in second.stdout, second.output
    drift = [line.removeprefix("drift: ") for line in second.stdout.splitlines() if line.startswith("drift: ")]
    assert any(line.startswith("resource changed: ") and line.endswith("analytics-kms") for line in drift), drift
    assert any(line.startswith("resource removed: ") and line.endswith("analytics-kms-alias") for line in drift)
    assert any(line.startswith("resource new: ") and line.endswith("clickops-bucket") for line in drift)
    assert "control NIS2-21.2.h: pass -> fail" in drift, drift

    document = json.loads((out / "assessment-results.json").read_text())
    results = AssessmentResults.parse_obj(document["assessment-results"]).results
    assert len(results) == 2 and results[0].start < results[1].start
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 2
    # The audit log holds each run's digest: the records are what was audited.
    import hashlib
    import httpx

    auditor = {"authorization": "Bearer " + mint_local_token(tmp_path / "audit", "audit-log", ["audit.read"], "auditor")}
    entries = [httpx.get(f"{url}/entries/{i}", headers=auditor).json()["event"] for i in (1, 2)]
    for entry, record in zip(entries, runs):
        assert f"sha256:{hashlib.sha256(record.read_bytes()).hexdigest()}" in entry["outcomeDesc"]

    standalone = runner.invoke(app, ["compliance", "drift", str(runs[0]), str(runs[1])])
    assert standalone.exit_code == 1 and "control NIS2-21.2.h: pass -> fail" in standalone.stdout
    same = runner.invoke(app, ["compliance", "drift", str(EXPORT), str(EXPORT)])
    assert same.exit_code == 0 and "no drift" in same.stdout


def test_unreachable_audit_log_spools_the_digest(tmp_path):
    out = tmp_path / "compliance"
    result = run(out, EXPORT, "--audit-url", "http://127.0.0.1:9")
    assert "compliance run" in result.stdout, result.output
    assert "NOT delivered: spooled" in result.stdout
    # The failing run names what failed, not only how many: the unlabelled SSM parameter.
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL ")]
    assert len(failures) == 1 and "analytics-api-token" in failures[0], result.stdout
    spooled = [json.loads(line) for line in (out / "audit-spool.jsonl").read_text().splitlines()]
    assert len(spooled) == 1 and "sha256:" in spooled[0]["outcomeDesc"]


def test_planned_versus_deployed_drift(tmp_path, examples):
    planned = tmp_path / "planned"
    planned.mkdir()
    (planned / "analytics.inventory.json").write_text(examples.results["analytics"].inventory.dumps())
    result = run(tmp_path / "c", EXPORT, "--planned", str(planned))
    lines = [line for line in result.stdout.splitlines() if line.startswith("drift: vs planned analytics")]
    # The small export holds a handful of the planned resources and one the plan does not have.
    assert any("resource new: " in line and line.endswith("analytics-api-token") for line in lines), lines
    assert any("resource removed: " in line and line.endswith("analytics-vpc") for line in lines)


def test_a_change_only_the_deployed_state_shows_is_drift(tmp_path):
    """Found by a fresh-eyes auditor: drift hashed inputs only, so a key whose rotation was turned
    off in the console (the provider reads it back into the outputs; the program's inputs are
    unchanged) reported "no drift". Deployed exports now also compare a digest of the outputs."""
    from medplat.evidence.continuous import drift, load_side

    document = json.loads(EXPORT.read_text())
    changed = copy.deepcopy(document)
    (key,) = [r for r in changed["deployment"]["resources"] if r["type"] == "aws:kms/key:Key"]
    key["outputs"]["enableKeyRotation"] = False
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(json.dumps(document))
    after.write_text(json.dumps(changed))
    assert drift(load_side(before), load_side(before)) == []
    assert drift(load_side(before), load_side(after)) == [
        f"resource changed in deployed state only (outputs): {key['urn']}"]
    # A re-encrypted secret (same value, new ciphertext) is not drift.
    secret = copy.deepcopy(document)
    (key,) = [r for r in secret["deployment"]["resources"] if r["type"] == "aws:kms/key:Key"]
    key["outputs"]["policy"] = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270",
                                "ciphertext": "v1:AAAA"}
    resealed = copy.deepcopy(secret)
    [r for r in resealed["deployment"]["resources"] if r["type"] == "aws:kms/key:Key"][0]["outputs"]["policy"][
        "ciphertext"] = "v1:BBBB"
    (tmp_path / "s1.json").write_text(json.dumps(secret))
    (tmp_path / "s2.json").write_text(json.dumps(resealed))
    assert drift(load_side(tmp_path / "s1.json"), load_side(tmp_path / "s2.json")) == []
