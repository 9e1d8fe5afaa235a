"""`medplat synth`: deterministic planned inventories, honest labelling, the real program."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import STACKS, edit_stack, of_type
from medplat.cli import app
from medplat.config import read_stack_file
from medplat.synth import SynthError, run_under_mocks

runner = CliRunner()


def test_inventories_are_byte_identical_across_runs(tmp_path):
    for run in ("a", "b"):
        result = runner.invoke(app, ["synth", "--all", "--stacks-dir", str(STACKS), "-o", str(tmp_path / run)])
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["analytics.inventory.json", "edge-dresden.inventory.json",
                     "edge-leipzig.inventory.json", "eu-phi.inventory.json"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_output_says_planned_not_deployed(tmp_path):
    result = runner.invoke(app, ["synth", "analytics", "--stacks-dir", str(STACKS), "-o", str(tmp_path)])
    assert "PLANNED" in result.stdout and "nothing was deployed" in result.stdout
    document = json.loads((tmp_path / "analytics.inventory.json").read_text())
    assert document["status"] == "planned" and document["note"].startswith("PLANNED")
    resource = document["resources"][0]
    assert set(resource) >= {"urn", "type", "name", "parent", "provider", "region", "labels", "inputs"}


def test_secrets_are_masked_in_inventory(inventories):
    text = json.dumps(inventories)
    assert "example-ciphertext" not in text and "not decrypted offline" not in text
    (provider,) = of_type(inventories["edge-dresden"], "pulumi:providers:kubernetes")
    assert provider["inputs"]["kubeconfig"] == "[secret]"


def test_parents_providers_and_dependencies_are_recorded(inventories):
    inv = inventories["edge-dresden"]
    urns = {r["urn"] for r in inv["resources"]}
    for resource in inv["resources"]:
        assert resource["parent"] is None or resource["parent"] in urns
        assert all(dep in urns for dep in resource["dependencies"]), resource["urn"]
    deployment = next(r for r in of_type(inv, "kubernetes:apps/v1:Deployment") if r["name"].endswith("edge-forwarder-deployment"))
    assert deployment["parent"].endswith("::edge-dresden-edge-forwarder")
    assert deployment["provider"].endswith("pulumi:providers:kubernetes::k3s-dresden")


def test_third_party_workload_is_deployed_and_hardened(stacks_copy, tmp_path):
    project = stacks_copy.parent
    (project / "vendor").mkdir()
    (project / "vendor" / "workload.yaml").write_text((STACKS.parent / "tests/data/vendor-gateway/workload.yaml").read_text())
    edit_stack(stacks_copy, "edge-dresden", lambda c: c["medplat:edge"].update(extraWorkloads=["vendor/workload.yaml"]))
    result = runner.invoke(app, ["synth", "edge-dresden", "--stacks-dir", str(stacks_copy), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    inv = json.loads((tmp_path / "edge-dresden.inventory.json").read_text())
    (deployment,) = [d for d in of_type(inv, "kubernetes:apps/v1:Deployment") if d["inputs"]["metadata"]["name"] == "pump-gateway"]
    pod = deployment["inputs"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("registry.example.eu/acme/pump-gateway@sha256:")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert deployment["labels"]["medplat:data-class"] == "phi" and deployment["labels"]["medplat:site"] == "dresden"
    (policy,) = [p for p in of_type(inv, "kubernetes:networking.k8s.io/v1:NetworkPolicy")
                 if p["inputs"]["metadata"]["name"] == "pump-gateway-allow"]
    assert policy["inputs"]["spec"]["ingress"] == []  # it declared no ingress, so it gets none


def test_third_party_spec_with_a_tag_is_refused(stacks_copy, tmp_path):
    project = stacks_copy.parent
    text = (STACKS.parent / "tests/data/vendor-gateway/workload.yaml").read_text()
    (project / "tagged.yaml").write_text(text.replace(
        "@sha256:4b1d2c3e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff001", ":latest"))
    edit_stack(stacks_copy, "edge-dresden", lambda c: c["medplat:edge"].update(extraWorkloads=["tagged.yaml"]))
    result = runner.invoke(app, ["synth", "edge-dresden", "--stacks-dir", str(stacks_copy), "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "extraWorkloads: tagged.yaml: image: tags are not allowed" in result.stderr


def test_program_entry_point_reads_engine_config_like_pulumi_up():
    """`__main__.py` -> program.main() validates the engine's config map, secrets included."""
    from medplat import program

    raw = read_stack_file(STACKS / "Pulumi.analytics.yaml")
    planned = run_under_mocks("analytics", program.main, raw, {}, "eu-central-1")
    assert len([r for r in planned.resources if r.type == "aws:s3/bucket:Bucket"]) == 5

    raw["aws:region"] = "us-west-2"
    # main() turns the config problem into a pulumi.RunError (one line, no traceback in
    # `pulumi up`); the offline runner reports RunErrors as SynthError.
    with pytest.raises(SynthError) as failure:
        run_under_mocks("analytics", program.main, raw, {}, "us-west-2")
    assert "stack 'analytics' config: aws:region: 'us-west-2' is not an EU region" in str(failure.value)
    assert "\n" not in str(failure.value)
