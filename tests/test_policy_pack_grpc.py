"""The pack entry point speaks the analyzer protocol that `pulumi preview --policy-pack` uses.

The Pulumi CLI starts `policies/pack` as a plugin, reads the port it prints, and calls
GetAnalyzerInfo / Analyze / AnalyzeStack over gRPC. This test does the same.
"""
from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

import policy_cases as cases
from conftest import REPO, STACKS
from medplat.synth import synthesize


@pytest.fixture(scope="module")
def analyzer():
    process = subprocess.Popen([sys.executable, "-u", str(REPO / "policies" / "pack" / "__main__.py")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline().strip())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        process.kill()
        process.wait(timeout=10)


def _struct(props) -> struct_pb2.Struct:
    return json_format.ParseDict(props, struct_pb2.Struct())


def test_analyzer_info_lists_every_policy(analyzer):
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "medplat"
    names = {p.name for p in info.policies}
    assert len(names) == 34 and {"dataflow-residency", "s3-sse-kms", "k8s-psa-restricted"} <= names
    assert all(p.description for p in info.policies)


def test_analyze_reports_violations_like_the_offline_runner(analyzer):
    inventory = synthesize("analytics", STACKS, extra=cases.kms_without_rotation).inventory.to_json()
    (key,) = [r for r in inventory["resources"] if r["name"] == "tamper-key"]
    response = analyzer.Analyze(analyzer_pb2.AnalyzeRequest(
        type=key["type"], properties=_struct(key["inputs"]), urn=key["urn"], name=key["name"]))
    # The SDK prefixes each message with the policy's description.
    violations = {(d.policyName, d.message.splitlines()[-1]) for d in response.diagnostics}
    assert ("kms-key-rotation", "KMS key 'tamper-key' does not rotate") in violations

    (compliant,) = [r for r in inventory["resources"] if r["name"] == "analytics-kms"]
    response = analyzer.Analyze(analyzer_pb2.AnalyzeRequest(
        type=compliant["type"], properties=_struct(compliant["inputs"]), urn=compliant["urn"],
        name=compliant["name"]))
    assert [d.policyName for d in response.diagnostics] == []


def test_analyze_stack_runs_the_graph_policies(analyzer):
    eu = synthesize("eu-phi", STACKS).outputs
    inventory = synthesize("edge-dresden", STACKS, {"saxony-hospital-group/medplat/eu-phi": eu},
                           extra=cases.phi_to_the_internet).inventory.to_json()
    resources = [analyzer_pb2.AnalyzerResource(
        type=r["type"], properties=_struct(r["inputs"]), urn=r["urn"], name=r["name"],
        parent=r["parent"] or "", dependencies=r["dependencies"]) for r in inventory["resources"]]
    response = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=resources))
    messages = [d.message for d in response.diagnostics if d.policyName == "dataflow-residency"]
    assert any("phi flows out of the EU zone without anonymization" in m for m in messages), messages
    assert not [d for d in response.diagnostics if d.policyName == "k8s-default-deny-per-namespace"]


def start_pack(env):
    process = subprocess.Popen([sys.executable, "-u", str(REPO / "policies" / "pack" / "__main__.py")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    port = int(process.stdout.readline().strip())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    return process, channel


def test_stack_waivers_are_honoured_under_the_cli(tmp_path):
    """The CLI passes the stack's config to the pack as PULUMI_CONFIG (JSON, structured values as
    JSON strings); a waiver there accepts the violation, which stays visible as advisory."""
    import datetime
    import json
    import os

    in_half_a_year = (datetime.date.today() + datetime.timedelta(days=180)).isoformat()  # within the yearly limit
    waivers = [{"policy": "kms-key-rotation", "resource": "tamper-*", "reason": "Key retired with the 2027 data set.",
                "approver": "ciso@saxony-hospitals.example", "expires": in_half_a_year},
               {"policy": "dataflow-residency", "resource": "*tamper-exporter*", "reason": "Expired acceptance.",
                "approver": "ciso@saxony-hospitals.example", "expires": "2020-01-31"}]
    env = {**os.environ, "PULUMI_CONFIG": json.dumps({"medplat:zone": "analytics",
                                                      "medplat:waivers": json.dumps(waivers)}),
           "PULUMI_PROJECT": "medplat", "PULUMI_STACK": "analytics"}
    process, channel = start_pack(env)
    try:
        stub = analyzer_pb2_grpc.AnalyzerStub(channel)
        inventory = synthesize("analytics", STACKS, extra=cases.kms_without_rotation).inventory.to_json()
        (key,) = [r for r in inventory["resources"] if r["name"] == "tamper-key"]
        response = stub.Analyze(analyzer_pb2.AnalyzeRequest(
            type=key["type"], properties=_struct(key["inputs"]), urn=key["urn"], name=key["name"]))
        by_policy = {d.policyName: d for d in response.diagnostics}
        assert "kms-key-rotation" not in by_policy, "a waived violation must not block"
        waived = by_policy["medplat-waived"]
        assert waived.enforcementLevel == analyzer_pb2.ADVISORY
        assert "KMS key 'tamper-key' does not rotate" in waived.message
        assert f"ciso@saxony-hospitals.example until {in_half_a_year}" in waived.message
        # The expired waiver accepts nothing: the residency violation stays mandatory.
        eu = synthesize("eu-phi", STACKS).outputs
        edge = synthesize("edge-dresden", STACKS, {"saxony-hospital-group/medplat/eu-phi": eu},
                          extra=cases.phi_to_the_internet).inventory.to_json()
        resources = [analyzer_pb2.AnalyzerResource(
            type=r["type"], properties=_struct(r["inputs"]), urn=r["urn"], name=r["name"],
            parent=r["parent"] or "", dependencies=r["dependencies"]) for r in edge["resources"]]
        stack = stub.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=resources))
        residency = [d for d in stack.diagnostics if d.policyName == "dataflow-residency"]
        assert residency and all(d.enforcementLevel == analyzer_pb2.MANDATORY for d in residency)
    finally:
        channel.close()
        process.kill()
        process.wait(timeout=10)


@pytest.mark.slow
def test_built_pack_is_self_contained(tmp_path):
    """Every module the pack imports, transitively through medplat, is in the pack's wheel, the
    standard library, or a distribution the wheel requires (or pulumi-policy)."""
    import ast
    import re
    import zipfile
    from importlib import metadata

    from typer.testing import CliRunner

    from medplat.cli import app

    out = tmp_path / "pack"
    result = CliRunner().invoke(app, ["policy", "pack", str(out)])
    assert result.exit_code == 0, result.output
    (wheel,) = out.glob("medplat-*.whl")
    assert f"./{wheel.name}" in (out / "requirements.txt").read_text().splitlines()
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    required = {re.split(r"[ ;<>=!~\[]", line.split(":", 1)[1].strip())[0].lower().replace("_", "-")
                for line in archive.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")
                and "extra ==" not in line} | {"pulumi-policy"}
    provided = metadata.packages_distributions()

    def module_file(module: str) -> str | None:
        path = module.replace(".", "/")
        return next((n for n in (f"{path}.py", f"{path}/__init__.py") if n in names), None)

    # The registry imports every policy module by walking its packages: start from all of them.
    policy_files = {n for n in names if n.startswith("medplat/policies/") and n.endswith(".py")}
    seen, third_party = set(policy_files), set()
    queue = [(out / "__main__.py").read_text()] + [archive.read(n).decode() for n in sorted(policy_files)]
    while queue:
        tree = ast.parse(queue.pop())
        for node in ast.walk(tree):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] + [f"{node.module}.{a.name}" for a in node.names] \
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for module in modules:
                top = module.split(".")[0]
                if top == "medplat":
                    found = module_file(module)
                    if found and found not in seen:
                        seen.add(found)
                        queue.append(archive.read(found).decode())
                elif top not in sys.stdlib_module_names:
                    third_party.add(top)
    assert "medplat/policies/resource/k8s_image_published.py" in seen
    missing = {top for top in third_party
               if not {d.lower().replace("_", "-") for d in provided.get(top, [])} & required}
    assert missing == set(), f"imported by the pack but not required by the wheel: {missing}"
