"""`medplat policy checkov-config`: checkov run directly (its own venv) honours medplat:waivers,
scoped to the waived resources, and never an expired waiver."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from typer.testing import CliRunner

from conftest import STACKS, edit_stack
from medplat.cli import app

runner = CliRunner()
# The analytics stack's checkov waivers (stacks/Pulumi.analytics.yaml), by plan address.
BUCKETS = ["access_logs", "athena_results", "audit", "deidentified", "evidence"]
WAIVED = ({("CKV_AWS_252", "aws_cloudtrail.analytics_trail"),
           ("CKV_AWS_145", "aws_s3_bucket.analytics_access_logs_bucket")}
          | {(check, f"aws_s3_bucket.analytics_{bucket}_bucket") for check in ("CKV_AWS_144", "CKV2_AWS_62")
             for bucket in BUCKETS})


def checkov_direct(checkov_tool, folder) -> tuple[int, dict]:
    """checkov as a CI job would run it: in the folder, with only the generated config file."""
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    done = subprocess.run([str(checkov_tool), "--config-file", ".checkov.yaml", "-o", "json"], cwd=folder,
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    report = json.loads(done.stdout)
    return done.returncode, report[0] if isinstance(report, list) else report


def outcomes(report, key):
    return {(c["check_id"], c["resource"]) for c in report["results"][key]}


@pytest.mark.slow
def test_plain_checkov_honours_the_plan_waivers_on_the_waived_resources_only(checkov_tool, tmp_path):
    out = tmp_path / "analytics"
    result = runner.invoke(app, ["policy", "checkov-config", "analytics", "--stacks-dir", str(STACKS), "-o", str(out),
                                 "--today", "2026-11-23"])
    assert result.exit_code == 0, result.output
    assert "suppressed CKV_AWS_145 on aws_s3_bucket.analytics_access_logs_bucket" in result.stdout
    code, report = checkov_direct(checkov_tool, out)
    # Every checkov failure on this stack is waived, so plain checkov passes ...
    assert code == 0 and report["results"]["failed_checks"] == []
    # ... because exactly the waived (check, resource) pairs were skipped, with the waiver's reason.
    assert outcomes(report, "skipped_checks") == WAIVED
    comments = {c["check_result"]["suppress_comment"] for c in report["results"]["skipped_checks"]}
    assert all("approved by ciso@saxony-hospitals.example" in c for c in comments), comments
    # The same checks still run (and pass) on resources nobody waived.
    passed = outcomes(report, "passed_checks")
    assert ("CKV_AWS_145", "aws_s3_bucket.analytics_deidentified_bucket") in passed


@pytest.mark.slow
def test_an_expired_waiver_is_not_generated_and_checkov_fails(checkov_tool, stacks_copy, tmp_path):
    def expire(config):
        for waiver in config["medplat:waivers"]:
            if waiver["policy"] == "CKV_AWS_145":
                waiver["expires"] = "2026-11-01"
    edit_stack(stacks_copy, "analytics", expire)
    out = tmp_path / "analytics"
    result = runner.invoke(app, ["policy", "checkov-config", "analytics", "--stacks-dir", str(stacks_copy),
                                 "-o", str(out), "--today", "2026-11-23"])
    assert result.exit_code == 0, result.output
    assert "not generated: waiver of CKV_AWS_145 for analytics-access-logs-bucket expired on 2026-11-01" in result.output
    assert "CKV_AWS_145" not in (out / "suppressions" / "waivers.tf").read_text()
    code, report = checkov_direct(checkov_tool, out)
    assert code == 1
    assert outcomes(report, "failed_checks") == {("CKV_AWS_145", "aws_s3_bucket.analytics_access_logs_bucket")}
    assert outcomes(report, "skipped_checks") == WAIVED - {("CKV_AWS_145", "aws_s3_bucket.analytics_access_logs_bucket")}


@pytest.mark.slow
def test_kubernetes_waivers_become_skip_annotations_on_the_waived_objects(checkov_tool, stacks_copy, tmp_path):
    def waive(config):
        config["medplat:waivers"] = [
            {"policy": "CKV_K8S_43", "resource": "edge-dresden-edge-forwarder-deployment",
             "reason": "Digest pinning is checked by medplat's own policy; test waiver.",
             "approver": "ciso@saxony-hospitals.example", "expires": "2027-01-31"},
            {"policy": "CKV_K8S_22", "resource": "edge-dresden-*-deployment",
             "reason": "An expired waiver must not reach checkov.", "approver": "ciso@saxony-hospitals.example",
             "expires": "2026-01-31"},
            {"policy": "k8s-image-published", "resource": "*", "reason": "A medplat policy, not a checkov check.",
             "approver": "ciso@saxony-hospitals.example", "expires": "2027-01-31"}]
    edit_stack(stacks_copy, "edge-dresden", waive)
    out = tmp_path / "edge"
    result = runner.invoke(app, ["policy", "checkov-config", "edge-dresden", "--stacks-dir", str(stacks_copy),
                                 "-o", str(out), "--today", "2026-11-23"])
    assert result.exit_code == 0, result.output
    assert "expired on 2026-01-31" in result.output and "1 medplat policy waiver(s) are not checkov checks" in result.stdout
    annotated = {}
    for path in (out / "manifests").glob("*.yaml"):
        body = yaml.safe_load(path.read_text())
        skips = {k: v for k, v in ((body.get("metadata") or {}).get("annotations") or {}).items()
                 if k.startswith("checkov.io/skip")}
        if skips:
            annotated[f"{body['kind']}/{body['metadata']['name']}"] = skips
    assert list(annotated) == ["Deployment/edge-forwarder"]
    (value,) = annotated["Deployment/edge-forwarder"].values()
    assert value.startswith("CKV_K8S_43=Digest pinning") and value.count("=") == 1
    code, report = checkov_direct(checkov_tool, out)
    skipped = outcomes(report, "skipped_checks")
    assert {check for check, _ in skipped} == {"CKV_K8S_43"}
    assert len(skipped) == 1 and "edge-forwarder" in next(iter(skipped))[1]
    # Other Deployments still run CKV_K8S_43, and the expired CKV_K8S_22 waiver skips nothing.
    passed = outcomes(report, "passed_checks")
    assert any(check == "CKV_K8S_43" and "edge-forwarder" not in resource for check, resource in passed)
    assert any(check == "CKV_K8S_22" and "edge-forwarder" in resource for check, resource in passed)
    assert code == 0
