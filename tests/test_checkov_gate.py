"""checkov as an isolated tool: manifests, Dockerfiles and the AWS zone as a Terraform plan."""
from __future__ import annotations

import json

import kubernetes_validate
import pytest
from typer.testing import CliRunner

from conftest import STACKS, edit_stack
from medplat import checkov
from medplat.cli import app
from medplat.tfplan import render, tf_type

runner = CliRunner()


def test_checkov_is_not_in_the_project_environment():
    import importlib.util
    assert importlib.util.find_spec("checkov") is None, "checkov must live in its own venv"


def test_type_tokens_map_to_terraform_types():
    assert tf_type("aws:s3/bucket:Bucket") == "aws_s3_bucket"
    assert tf_type("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration") == \
        "aws_s3_bucket_server_side_encryption_configuration"
    assert tf_type("aws:ec2/flowLog:FlowLog") == "aws_flow_log"
    assert tf_type("aws:lb/listener:Listener") == "aws_lb_listener"
    assert tf_type("aws:cloudtrail/trail:Trail") == "aws_cloudtrail"
    assert tf_type("kubernetes:core/v1:Pod") is None


def test_plan_is_terraform_shaped(inventories):
    plan, addresses = render(inventories["analytics"])
    resources = plan["planned_values"]["root_module"]["resources"]
    sse = next(r for r in resources if r["type"] == "aws_s3_bucket_server_side_encryption_configuration")
    assert "bucket" not in sse["values"], "a reference to another resource is unknown in a plan"
    assert sse["values"]["rule"][0]["apply_server_side_encryption_by_default"][0]["sse_algorithm"]
    config = {r["address"]: r for r in plan["configuration"]["root_module"]["resources"]}
    assert config[sse["address"]]["expressions"]["bucket"]["references"][0].startswith("aws_s3_bucket.")
    assert set(addresses.values()) <= {r["urn"] for r in inventories["analytics"]["resources"]}


def test_manifests_are_valid_kubernetes(inventories, tmp_path):
    for stack in ("edge-dresden", "eu-phi"):
        documents = checkov.manifests(inventories[stack])
        assert len(documents) > 20
        for body, _urn in documents:
            kubernetes_validate.validate(body, "1.31", strict=True)


@pytest.mark.slow
def test_checkov_runs_on_all_zones_and_folds_into_the_gate(checkov_tool, tmp_path):
    result = runner.invoke(app, ["policy", "check", "--all", "--stacks-dir", str(STACKS), "-o", str(tmp_path),
                                 "--today", "2026-11-23"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    zones = report["checkov"]["zones"]
    assert zones["analytics"]["checks"] >= 50, zones["analytics"]
    assert zones["edge"]["checks"] >= 50 and zones["edge"]["failed"] == 0
    assert zones["eu-phi"]["failed"] == 0
    waived = [f for f in report["findings"] if f["source"] == "checkov" and f["status"] == "waived"]
    assert waived and all(f["waiver"]["approver"] for f in waived)
    assert (tmp_path / "checkov" / "analytics" / "results" / "results_sarif.sarif").exists()


@pytest.mark.slow
def test_checkov_failure_fails_the_gate_unless_waived(checkov_tool, stacks_copy, tmp_path):
    edit_stack(stacks_copy, "analytics", lambda c: c.pop("medplat:waivers"))
    result = runner.invoke(app, ["policy", "check", "analytics", "--stacks-dir", str(stacks_copy),
                                 "-o", str(tmp_path), "--today", "2026-11-23"])
    assert result.exit_code == 1
    assert "FAIL medium CKV_AWS_145 analytics analytics-access-logs-bucket" in result.stdout


@pytest.mark.slow
def test_dockerfiles_are_scanned(checkov_tool, tmp_path):
    project = tmp_path / "project"
    (project / "workloads" / "bad").mkdir(parents=True)
    (project / "workloads" / "bad" / "Dockerfile").write_text("FROM python:latest\nADD . /app\nRUN pip install x\n")
    findings, summary = checkov.run_for([], tmp_path / "out", project_root=project)
    assert summary["zones"]["images"]["checks"] > 3
    assert any(f.policy == "CKV_DOCKER_3" for f in findings)  # no non-root USER
    assert all(f.source == "checkov" and f.stack == "workloads" for f in findings)


@pytest.mark.slow
def test_readme_coverage_table_is_what_the_evidence_says(checkov_tool):
    """The README's table is `medplat evidence coverage`: the bundle's verdicts (checkov + waivers)."""
    from conftest import REPO

    result = runner.invoke(app, ["evidence", "coverage", "--stacks-dir", str(STACKS), "--today", "2026-11-23"])
    assert result.exit_code == 0, result.output
    assert result.stdout in (REPO / "README.md").read_text(), \
        "README coverage table is stale: paste `medplat evidence coverage`"
