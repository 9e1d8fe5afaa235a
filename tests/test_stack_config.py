"""Bad stack configuration: one clear line naming the file and key, exit code 2, no traceback."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import edit_stack
from medplat.cli import app

runner = CliRunner()


def synth(stacks_dir, stack, tmp_path):
    return runner.invoke(app, ["synth", stack, "--stacks-dir", str(stacks_dir), "-o", str(tmp_path / "out")])


def set_key(path_keys, value):
    def edit(config):
        node = config
        for key in path_keys[:-1]:
            node = node[key]
        node[path_keys[-1]] = value
    return edit


CASES = [
    ("analytics", set_key(["aws:region"], "us-east-1"), "aws:region: 'us-east-1' is not an EU region"),
    ("analytics", set_key(["aws:region"], "eu-west-2"), "London (GB) is not in the EU"),
    ("analytics", set_key(["medplat:analytics", "vpcCidr"], "10.40.0.0/33"), "medplat:analytics.vpcCidr:"),
    ("edge-dresden", set_key(["medplat:edge", "bufferSzie"], "1Gi"), "medplat:edge.bufferSzie: unknown key"),
    ("edge-dresden", set_key(["medplat:colour"], "blue"), "medplat:colour: unknown key"),
    ("edge-dresden", set_key(["aws:region"], "eu-central-1"), "aws:region: unknown key"),
    ("edge-dresden", set_key(["kubernetes:kubeconfig"], "apiVersion: v1"), "kubernetes:kubeconfig: must be a secret"),
    ("edge-dresden", set_key(["medplat:edge", "country"], "CH"), "'CH' is not an EU member state"),
    ("edge-dresden", set_key(["medplat:edge", "workloads"], ["ingest"]), "'ingest' may run only in eu-phi"),
    ("eu-phi", set_key(["medplat:euPhi", "compute", "nodes"], "three"), "medplat:euPhi.compute.nodes:"),
    ("eu-phi", set_key(["medplat:euPhi", "encryptedVolumeType"], "classic"), "is not an encrypted volume type"),
    ("eu-phi", set_key(["openstack:region"], "UK1"), "openstack:region: region 'UK1' is not an EU region"),
    ("eu-phi", set_key(["openstack:authUrl"], "http://auth.cloud.ovh.net/v3"), "must use https"),
    ("eu-phi", set_key(["medplat:zone"], "moon"), "medplat:zone:"),
    # The CA key belongs in Barbican: config takes its certificate and the secret's reference only.
    ("eu-phi", set_key(["medplat:euPhi", "platformCa", "certPem"],
                       "-----BEGIN PRIVATE KEY-----\n" + "A" * 120 + "\n-----END PRIVATE KEY-----\n"),
     "medplat:euPhi.platformCa.certPem: holds a private key"),
    ("eu-phi", set_key(["medplat:euPhi", "platformCa", "keyRef"], "file:///etc/medplat/ca.key"),
     "medplat:euPhi.platformCa.keyRef:"),
]


@pytest.mark.parametrize("stack,edit,expected", CASES, ids=[c[2][:40] for c in CASES])
def test_bad_config_fails_with_one_line(stacks_copy, tmp_path, stack, edit, expected):
    path = edit_stack(stacks_copy, stack, edit)
    result = synth(stacks_copy, stack, tmp_path)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"medplat: error: {path}: ")
    assert expected in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / f"{stack}.inventory.json").exists(), "no partial output on error"


def test_missing_kubeconfig_secret(stacks_copy, tmp_path):
    edit_stack(stacks_copy, "edge-leipzig", lambda config: config.pop("kubernetes:kubeconfig"))
    result = synth(stacks_copy, "edge-leipzig", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("kubernetes:kubeconfig: required key is missing for zone 'edge'")


def test_unknown_stack_and_missing_argument(stacks_copy, tmp_path):
    result = synth(stacks_copy, "nowhere", tmp_path)
    assert result.exit_code == 2 and "no such stack" in result.stderr
    result = runner.invoke(app, ["synth", "--stacks-dir", str(stacks_copy)])
    assert result.exit_code == 2 and "name one STACK or pass --all" in result.stderr


def test_yaml_syntax_error_names_the_line(stacks_copy, tmp_path):
    path = stacks_copy / "Pulumi.analytics.yaml"
    path.write_text(path.read_text() + "  broken: [unclosed\n")
    result = synth(stacks_copy, "analytics", tmp_path)
    assert result.exit_code == 2 and "not valid YAML" in result.stderr and "line" in result.stderr


def test_edge_site_not_admitted_by_the_eu_zone(stacks_copy, tmp_path):
    edit_stack(stacks_copy, "eu-phi", lambda c: c["medplat:euPhi"].update(
        edgeSites=[{"site": "leipzig", "egressCidr": "203.0.113.32/29"}]))
    result = synth(stacks_copy, "edge-dresden", tmp_path)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == ("medplat: error: edge-dresden: stack 'saxony-hospital-group/medplat/eu-phi' "
                                     "does not admit site 'dresden': add it to medplat:euPhi.edgeSites")
