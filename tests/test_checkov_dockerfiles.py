"""checkov's Dockerfile results are keyed by path -> workload -> image -> the resources running it."""
from __future__ import annotations

import datetime

import pytest

from medplat import checkov, gate
from medplat.evidence import matrix

SPEC = """name: {name}
description: A test workload whose Dockerfile checkov scans.
image: ghcr.io/example/{name}
zones: [eu-phi]
ports: [{{name: http, port: 8080}}]
health: {{path: /healthz, port: http}}
resources: {{requests: {{cpu: 100m, memory: 64Mi}}, limits: {{cpu: 200m, memory: 128Mi}}}}
dataClasses: {{reads: [operational], writes: [operational]}}
"""
GOOD = ("FROM python:3.11-slim@sha256:" + "1" * 64 + "\nRUN useradd --uid 10001 app\nUSER 10001\n"
        'HEALTHCHECK CMD ["python", "-c", "pass"]\nCMD ["python", "-m", "http.server"]\n')
BAD = "FROM python:latest\nADD . /app\nRUN pip install x\n"  # no USER, no HEALTHCHECK, ADD, latest tag
DIGEST = "@sha256:" + "a" * 64


def resource(stack, kind, name, image):
    urn = f"urn:pulumi:{stack}::medplat::kubernetes:apps/v1:{kind}::{stack}-{name}-deployment"
    return {"urn": urn, "type": f"kubernetes:apps/v1:{kind}", "name": f"{stack}-{name}-deployment", "custom": True,
            "inputs": {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name},
                       "spec": {"template": {"spec": {"containers": [{"name": name, "image": image}]}}}}}


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    for name, dockerfile in (("leaky", BAD), ("tidy", GOOD), ("leaky-sidecar", GOOD)):
        folder = root / "workloads" / name
        folder.mkdir(parents=True)
        (folder / "Dockerfile").write_text(dockerfile)
        (folder / "workload.yaml").write_text(SPEC.format(name=name))
    return root


@pytest.mark.slow
def test_a_failing_dockerfile_lands_on_its_workloads_resources_only(checkov_tool, project, tmp_path):
    # Two stacks: one runs all three images, the other only `tidy`. `leaky-sidecar` shares a
    # name prefix with `leaky` and must not inherit its results.
    both = {"stack": "eu-phi", "zone": "eu-phi", "status": "planned", "source": "test", "resources": [
        resource("eu-phi", "Deployment", "leaky", "ghcr.io/example/leaky" + DIGEST),
        resource("eu-phi", "Deployment", "tidy", "ghcr.io/example/tidy" + DIGEST),
        resource("eu-phi", "Deployment", "leaky-sidecar", "ghcr.io/example/leaky-sidecar" + DIGEST)]}
    other = {"stack": "edge-a", "zone": "edge", "status": "planned", "source": "test", "resources": [
        resource("edge-a", "Deployment", "tidy", "ghcr.io/example/tidy" + DIGEST)]}
    entries = [(both, None, []), (other, None, [])]
    findings, summary = checkov.run_for(entries, tmp_path / "out", project_root=project)
    leaky, tidy, sidecar = (r["urn"] for r in both["resources"])
    # (checkov's Kubernetes checks also ran on these bare manifests: only Dockerfile results here.)
    docker = [f for f in findings if f.policy.startswith(("CKV_DOCKER", "CKV2_DOCKER"))]
    assert {f.policy for f in docker} >= {"CKV_DOCKER_3", "CKV_DOCKER_2"}  # no USER, no HEALTHCHECK
    assert {(f.stack, f.urn) for f in docker} == {("eu-phi", leaky)}
    assert all("workloads/leaky/Dockerfile" in f.message and f.name == "eu-phi-leaky-deployment" for f in docker)
    # Every deployed image's checks were evaluated on its own resources, in each stack running it.
    subjects = {(e["stack"], e["subject"]) for e in summary["evaluations"] if e["policy"].startswith("CKV_DOCKER")}
    assert subjects == {("eu-phi", leaky), ("eu-phi", tidy), ("eu-phi", sidecar), ("edge-a", other["resources"][0]["urn"])}

    result = gate.check_inventories(entries, datetime.date(2026, 11, 23), findings, summary)
    rows = {row["control"]: row for row in matrix.control_matrix([both, other], result)}
    docker_rows = [row for row in rows.values() if any(c["id"] == "CKV_DOCKER_3" for c in row["checks"])]
    assert docker_rows, "checkov's Dockerfile checks map to controls"
    per_resource = {r["urn"]: r for r in docker_rows[0]["resources"]}
    assert "CKV_DOCKER_3" in per_resource[leaky]["fail"]
    for urn in (tidy, sidecar, other["resources"][0]["urn"]):
        assert "CKV_DOCKER_3" in per_resource[urn]["pass"] and "CKV_DOCKER_3" not in per_resource[urn]["fail"]


@pytest.mark.slow
def test_an_undeployed_image_keeps_its_result_on_the_dockerfile(checkov_tool, project, tmp_path):
    findings, _summary = checkov.run_for([], tmp_path / "out", project_root=project)
    assert findings and {(f.stack, f.urn) for f in findings} == {("workloads", "workloads/leaky/Dockerfile")}


def test_image_users_match_the_whole_repository_name():
    inventory = {"stack": "s", "resources": [
        resource("s", "Deployment", "a", "ghcr.io/example/leaky" + DIGEST),
        resource("s", "Deployment", "b", "ghcr.io/example/leaky-sidecar" + DIGEST),
        resource("s", "Deployment", "c", "mirror.ghcr.io/example/leaky" + DIGEST),
        resource("s", "Deployment", "d", "ghcr.io/example/leaky:latest")]}
    found = checkov.image_users([(inventory, None, [])], "ghcr.io/example/leaky")
    assert [urn.rsplit("::", 1)[-1] for _s, urn, _t in found] == ["s-a-deployment"]
