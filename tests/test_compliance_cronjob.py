"""`medplat compliance run` scheduled in the EU zone: one hardened CronJob per configured stack,
reading its stack's deployed state from the Pulumi Cloud API with a token the operator stores."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes_validate
import pytest
from typer.testing import CliRunner

from conftest import REPO, of_type
from medplat import checkov
from medplat.cli import app
from medplat.config import load_stack

runner = CliRunner()
EXPORT = REPO / "tests" / "data" / "stack-export-small.json"
STACKS = ["eu-phi", "analytics", "edge-dresden", "edge-leipzig"]
TOKEN = "pul-0123456789abcdef-test-token"


def cron_jobs(inventory) -> dict[str, dict]:
    return {r["inputs"]["metadata"]["name"]: r for r in of_type(inventory, "kubernetes:batch/v1:CronJob")}


def test_one_cronjob_per_configured_stack_with_the_stack_in_its_args(inventories):
    jobs = cron_jobs(inventories["eu-phi"])
    runs = {name: job for name, job in jobs.items() if name.startswith("compliance-run-")}
    assert set(runs) == {f"compliance-run-{stack}" for stack in STACKS}
    for stack in STACKS:
        job = runs[f"compliance-run-{stack}"]["inputs"]
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        args = container["args"]
        assert args[:3] == ["medplat", "compliance", "run"]
        option = dict(zip(args[3::2], args[4::2]))
        assert option == {
            "--out": "/var/lib/medplat/compliance",
            "--audit-url": "http://audit-log:8080",
            "--audit-token-file": "/etc/medplat/audit-token/token",
            "--pulumi-stack": f"saxony-hospitals/medplat/{stack}",
            "--pulumi-api": "https://pulumi-api.medplat.internal",
            "--pulumi-token-file": "/etc/medplat/state-token/token",
        }
        assert job["spec"]["concurrencyPolicy"] == "Forbid" and job["spec"]["schedule"] == "41 4 * * *"
        assert container["image"].startswith("ghcr.io/medplat/compliance-run@sha256:")


def test_cronjob_pods_are_hardened_and_hold_only_their_tokens_and_results(inventories):
    inventory = inventories["eu-phi"]
    job = cron_jobs(inventory)["compliance-run-eu-phi"]["inputs"]
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True and hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"] == {"drop": ["ALL"]} and hardening["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["resources"]["limits"]["memory"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The tokens come from Secrets the operator creates: referenced by name, never in state.
    assert volumes["state-token"]["secret"]["secretName"] == "medplat-compliance-pulumi-token"
    assert volumes["audit-token"]["secret"]["secretName"] == "medplat-compliance-audit-token"
    assert {v["secret"]["defaultMode"] for v in volumes.values() if "secret" in v} == {0o440}
    assert volumes["results"]["persistentVolumeClaim"]["claimName"] == "compliance-run-eu-phi-results"
    assert set(volumes) == {"tmp", "state-token", "audit-token", "results"}
    assert not of_type(inventory, "kubernetes:core/v1:Secret"), "no Secret (token) created through Pulumi state"
    (claim,) = [r for r in of_type(inventory, "kubernetes:core/v1:PersistentVolumeClaim")
                if r["inputs"]["metadata"]["name"] == "compliance-run-eu-phi-results"]
    assert claim["inputs"]["spec"]["storageClassName"] == "medplat-encrypted"
    # No Deployment or Service: a job only.
    names = {r["inputs"]["metadata"]["name"] for r in of_type(inventory, "kubernetes:apps/v1:Deployment")}
    assert not any(name.startswith("compliance-run") for name in names)


def test_cronjob_egress_is_the_audit_log_and_the_state_backend_only(inventories):
    policies = {r["inputs"]["metadata"]["name"]: r["inputs"]["spec"]
                for r in of_type(inventories["eu-phi"], "kubernetes:networking.k8s.io/v1:NetworkPolicy")}
    spec = policies["compliance-run-analytics-allow"]
    assert spec["ingress"] == []
    targets = [(peer, tuple(p["port"] for p in rule["ports"])) for rule in spec["egress"] for peer in rule["to"]]
    assert targets == [
        ({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "audit-log",
                                          "app.kubernetes.io/part-of": "medplat"}}}, (8080,)),
        ({"ipBlock": {"cidr": "10.20.3.240/28"}}, (443,)),
    ]
    # Other workloads do not gain the state backend.
    assert "10.20.3.240/28" not in json.dumps(policies["ingest-allow"])


def test_cronjob_manifests_validate_offline(inventories):
    documents = [body for body, urn in checkov.manifests(inventories["eu-phi"]) if "compliance-run" in urn]
    assert {body["kind"] for body in documents} == {"CronJob", "NetworkPolicy", "PersistentVolumeClaim",
                                                    "ServiceAccount"}
    for body in documents:
        kubernetes_validate.validate(body, "1.31", strict=True)


@pytest.mark.slow
def test_cronjob_manifests_pass_checkov(checkov_tool, inventories, tmp_path):
    inventory = {**inventories["eu-phi"], "resources": [r for r in inventories["eu-phi"]["resources"]
                                                         if "compliance-run-eu-phi" in r["urn"]]}
    findings, summary = checkov.run_for([(inventory, None, [])], tmp_path, project_root=tmp_path)
    assert summary["zones"]["eu-phi"]["checks"] >= 20, summary["zones"]
    assert [f.policy for f in findings] == [], [(f.policy, f.message) for f in findings]


@pytest.mark.slow
def test_a_state_backend_outside_the_zone_network_is_a_residency_finding(stacks_copy, tmp_path):
    """Pulumi's SaaS API is outside the EU zone: the CronJob (in the PHI namespace) reaching it is a
    path out that the residency policy reports, until the operator self-hosts or waives it."""
    from conftest import edit_stack

    def saas(config):
        run = config["medplat:euPhi"]["complianceRun"]
        run.update(pulumiApi="https://api.pulumi.com", stateBackendCidrs=["198.51.100.0/28"])
    edit_stack(stacks_copy, "eu-phi", saas)
    result = runner.invoke(app, ["policy", "check", "eu-phi", "--stacks-dir", str(stacks_copy), "--no-checkov",
                                 "-o", str(tmp_path), "--today", "2026-11-23"])
    assert result.exit_code == 1, result.output
    assert "dataflow-residency" in result.stdout and "compliance-run" in result.stdout


def test_compliance_run_in_the_stack_workload_list_is_refused(stacks_copy):
    from conftest import edit_stack
    from medplat.config import ConfigError

    edit_stack(stacks_copy, "eu-phi", lambda c: c["medplat:euPhi"]["workloads"].append("compliance-run"))
    with pytest.raises(ConfigError, match="configure it under complianceRun"):
        load_stack(stacks_copy / "Pulumi.eu-phi.yaml")


class _StateBackend(BaseHTTPRequestHandler):
    """Pulumi Cloud's `GET /api/stacks/{org}/{project}/{stack}/export` (docs: Pulumi Cloud REST API)."""

    served: list[tuple[str, str, str]] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.served.append((self.path, self.headers.get("Authorization", ""), self.headers.get("Accept", "")))
        if self.headers.get("Authorization") != f"token {TOKEN}":
            self.send_error(401)
            return
        if self.path != "/api/stacks/saxony-hospitals/medplat/analytics/export":
            self.send_error(404)
            return
        body = EXPORT.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def state_backend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StateBackend)
    _StateBackend.served = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _StateBackend.served
    server.shutdown()
    thread.join(timeout=10)


def job_args(api, token_file, out, stack="analytics"):
    return ["compliance", "run", "--out", str(out), "--audit-url", "http://127.0.0.1:9", "--no-checkov",
            "--today", "2026-11-23", "--pulumi-stack", f"saxony-hospitals/medplat/{stack}",
            "--pulumi-api", api, "--pulumi-token-file", str(token_file)]


def test_run_reads_the_stack_from_the_state_backend_with_its_token(state_backend, tmp_path):
    api, served = state_backend
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    out = tmp_path / "compliance"
    result = runner.invoke(app, job_args(api, token, out))
    # The small export's SSM parameter has no medplat labels: the same verdict as reading the file.
    assert result.exit_code == 1 and "gate FAIL, 1 mandatory violation(s)" in result.stdout, result.output
    assert served == [("/api/stacks/saxony-hospitals/medplat/analytics/export", f"token {TOKEN}",
                       "application/vnd.pulumi+8")]
    (kept,) = (out / "exports").glob("analytics-*.json")
    assert kept.read_bytes() == EXPORT.read_bytes()
    record = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert record["stacks"][0]["stack"] == "analytics"
    assert TOKEN not in result.output


def test_a_refused_token_or_unknown_stack_is_one_line_and_no_run(state_backend, tmp_path):
    api, _served = state_backend
    token = tmp_path / "token"
    token.write_text("wrong")
    out = tmp_path / "compliance"
    refused = runner.invoke(app, job_args(api, token, out))
    assert refused.exit_code == 2 and "answered HTTP 401" in refused.output, refused.output
    token.write_text(TOKEN)
    missing = runner.invoke(app, job_args(api, token, out, stack="nope"))
    assert missing.exit_code == 2 and "answered HTTP 404" in missing.output
    assert not (out / "runs").exists()
    clear = runner.invoke(app, job_args("http://state.example", token, out))
    assert clear.exit_code == 2 and "is not https" in clear.output


def test_job_only_images_get_their_sbom_in_the_evidence_bundle(tmp_path, monkeypatch):
    """The bundle lists the SBOM of every image a resource runs, CronJob-only images included
    (analytics-feed, compliance-run), not only those of Deployments."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    key = tmp_path / "evidence.key"
    assert runner.invoke(app, ["evidence", "keygen", str(key)]).exit_code == 0
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["evidence", "export", "eu-phi", "--stacks-dir", str(REPO / "stacks"), "-o", str(out),
                                 "--key", str(key), "--no-checkov", "--today", "2026-11-23"])
    assert result.exit_code == 0, result.output
    sboms = {p.name for p in (out / "sbom" / "workloads").glob("*.cdx.json")}
    assert {"compliance-run.cdx.json", "analytics-feed.cdx.json", "ingest.cdx.json"} <= sboms, sboms
    assert "edge-forwarder.cdx.json" not in sboms  # an edge image: not run by this stack
    platform = json.loads((out / "sbom" / "platform.cdx.json").read_text())
    assert "compliance-run" in {s["name"] for s in platform["services"]}
