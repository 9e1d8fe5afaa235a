"""`medplat policy check`: exit codes, the four output formats, waivers."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import jsonschema
import pytest
from typer.testing import CliRunner

import policy_cases as cases
from conftest import STACKS, edit_stack
from medplat.cli import app
from medplat.stackset import StackSet
from medplat.synth import synthesize

runner = CliRunner()
TODAY = "2026-11-23"


def check(*args):
    return runner.invoke(app, ["policy", "check", "--no-checkov", "--today", TODAY, *args])


@pytest.fixture(scope="module")
def broken_inventory(tmp_path_factory):
    """An analytics stack with a PHI store and an S3 bucket without KMS, and an edge site
    with a privileged pod: both built with the real components and resource classes."""
    folder = tmp_path_factory.mktemp("broken")
    eu = StackSet(STACKS).synth("eu-phi").outputs
    analytics = synthesize("analytics", STACKS, extra=lambda: (cases.phi_bucket_on_aws(), cases.bucket_without_kms()))
    edge = synthesize("edge-dresden", STACKS, {"saxony-hospital-group/medplat/eu-phi": eu}, extra=cases.privileged_pod)
    paths = []
    for result in (analytics, edge):
        path = folder / f"{result.inventory.stack}.inventory.json"
        path.write_text(result.inventory.dumps())
        paths.append(path)
    return paths


def test_shipped_stacks_pass_the_gate(tmp_path):
    result = check("--all", "--stacks-dir", str(STACKS), "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["result"] == "pass" and report["summary"]["mandatoryFailures"] == 0
    assert {s["stack"] for s in report["stacks"]} == {"analytics", "edge-dresden", "edge-leipzig", "eu-phi"}


def test_broken_stack_fails_and_every_format_names_resource_and_policy(broken_inventory, tmp_path, sarif_schema):
    args = [item for path in broken_inventory for item in ("--inventory", str(path))]
    result = check(*args, "-o", str(tmp_path))
    assert result.exit_code == 1, result.output
    expected = {
        ("phi-only-in-eu-openstack", "tamper-phi-store-bucket"),
        ("s3-sse-kms", "tamper-plain"),
        ("k8s-no-privilege-escalation", "tamper-privileged"),
    }
    stdout = result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    sarif = json.loads((tmp_path / "report.sarif").read_text())
    junit = ET.parse(tmp_path / "report.junit.xml").getroot()
    junit_failures = {(case.get("name"), failure.text) for case in junit.iter("testcase")
                      for failure in case.findall("failure")}
    for policy, resource in expected:
        assert policy in stdout and resource in stdout
        assert any(f["policy"] == policy and f["name"] == resource and f["status"] == "fail"
                   for f in report["findings"]), (policy, resource)
        assert any(r["ruleId"] == policy and r["level"] == "error" and resource in r["message"]["text"]
                   for r in sarif["runs"][0]["results"]), (policy, resource)
        assert any(name == policy and resource in text for name, text in junit_failures), (policy, resource)
    jsonschema.validate(sarif, sarif_schema)
    assert int(junit.get("failures")) >= 3


def test_sarif_of_a_passing_run_validates_too(tmp_path, sarif_schema):
    result = check("edge-leipzig", "--stacks-dir", str(STACKS), "-o", str(tmp_path))
    assert result.exit_code == 0
    sarif = json.loads((tmp_path / "report.sarif").read_text())
    jsonschema.validate(sarif, sarif_schema)
    assert len(sarif["runs"][0]["tool"]["driver"]["rules"]) >= 30


def _drop_forwarder(config):
    config["medplat:edge"]["workloads"] = ["mqtt-broker", "audit-log", "sdc-bridge"]


def _waive(expires, reason="Forwarder is being replaced by the 2027 uplink project (CHG-4711)"):
    def edit(config):
        _drop_forwarder(config)
        config["medplat:waivers"] = [{"policy": "site-required-workloads", "resource": "edge-dresden-namespace",
                                      "reason": reason, "approver": "ciso@saxony-hospitals.example",
                                      "expires": expires}] + config.get("medplat:waivers", [])
    return edit


def test_violation_without_waiver_fails(stacks_copy, tmp_path):
    edit_stack(stacks_copy, "edge-dresden", _drop_forwarder)
    result = check("edge-dresden", "--stacks-dir", str(stacks_copy), "-o", str(tmp_path))
    assert result.exit_code == 1
    assert "site-required-workloads" in result.stdout


def test_valid_waiver_accepts_the_violation_and_is_reported(stacks_copy, tmp_path, sarif_schema):
    edit_stack(stacks_copy, "edge-dresden", _waive("2027-03-31"))
    result = check("edge-dresden", "--stacks-dir", str(stacks_copy), "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    (waived,) = [f for f in report["findings"] if f["policy"] == "site-required-workloads"]
    assert waived["status"] == "waived" and waived["waiver"]["approver"] == "ciso@saxony-hospitals.example"
    (record,) = [w for w in report["waivers"] if w["policy"] == "site-required-workloads"]
    assert record["expires"] == "2027-03-31" and record["expired"] is False
    sarif = json.loads((tmp_path / "report.sarif").read_text())
    (result_entry,) = [r for r in sarif["runs"][0]["results"] if r["ruleId"] == "site-required-workloads"]
    assert result_entry["suppressions"][0]["status"] == "accepted"
    jsonschema.validate(sarif, sarif_schema)


def test_expired_waiver_fails(stacks_copy, tmp_path):
    edit_stack(stacks_copy, "edge-dresden", _waive("2026-11-01"))
    result = check("edge-dresden", "--stacks-dir", str(stacks_copy), "-o", str(tmp_path))
    assert result.exit_code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    failing = {f["policy"] for f in report["findings"] if f["status"] == "fail"}
    assert failing == {"site-required-workloads", "waiver-valid"}
    assert any("expired on 2026-11-01" in f["message"] for f in report["findings"])


def test_an_open_ended_waiver_waives_nothing_and_fails(stacks_copy, tmp_path):
    """Found by a fresh-eyes auditor: any expiry was accepted (9999-12-31 would do), although a
    waiver is "never open-ended". An accepted risk is approved again at least yearly."""
    edit_stack(stacks_copy, "edge-dresden", _waive("2099-01-31"))
    result = check("edge-dresden", "--stacks-dir", str(stacks_copy), "-o", str(tmp_path))
    assert result.exit_code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    failing = {f["policy"] for f in report["findings"] if f["status"] == "fail"}
    assert failing == {"site-required-workloads", "waiver-valid"}
    assert any("runs until 2099-01-31, more than 366 days ahead" in f["message"] for f in report["findings"])


def test_the_pack_under_the_cli_does_not_honour_an_open_ended_waiver():
    import datetime

    from medplat.config import Waiver
    from policies.waivers import _match

    waiver = Waiver(policy="site-required-workloads", resource="*", reason="accepted for the pilot site",
                    approver="ciso@saxony-hospitals.example", expires=datetime.date(2099, 1, 31))
    today = datetime.date(2026, 11, 30)
    assert _match([waiver], "site-required-workloads", "urn:x", "x", today) is None
    in_a_year = waiver.model_copy(update={"expires": datetime.date(2027, 11, 30)})
    assert _match([in_a_year], "site-required-workloads", "urn:x", "x", today) is in_a_year


def test_reasonless_waiver_is_refused(stacks_copy, tmp_path):
    edit_stack(stacks_copy, "edge-dresden", _waive("2027-03-31", reason="ok"))
    result = check("edge-dresden", "--stacks-dir", str(stacks_copy), "-o", str(tmp_path))
    assert result.exit_code == 2
    assert "medplat:waivers[0].reason" in result.stderr


def test_preview_json_is_accepted(tmp_path):
    """`pulumi preview --json` output: steps with newState, as the CLI writes them."""
    inventory = synthesize("analytics", STACKS, extra=cases.kms_without_rotation).inventory.to_json()
    steps = [{"op": "create", "urn": r["urn"], "newState": {
        "urn": r["urn"], "type": r["type"], "custom": r["custom"], "inputs": r["inputs"], "parent": r["parent"],
        "provider": (r["provider"] + "::04da6b54-80e4-46f7-96ec-b56ff0331ba9") if r["provider"] else "",
        "dependencies": r["dependencies"], "propertyDependencies": r["propertyDependencies"]}}
        for r in inventory["resources"]]
    preview = tmp_path / "preview.json"
    preview.write_text(json.dumps({"config": {}, "steps": steps, "changeSummary": {"create": len(steps)}}))
    result = check("--inventory", str(preview), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["stacks"][0]["status"] == "planned" and "preview" in report["stacks"][0]["source"]
    assert any(f["policy"] == "kms-key-rotation" and f["name"] == "tamper-key" for f in report["findings"])
