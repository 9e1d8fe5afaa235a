"""checkov as an isolated tool: Kubernetes manifests, Dockerfiles and the AWS zone as a plan.

checkov pins old versions of libraries the Pulumi SDKs need, so it lives in its own
virtual environment (`medplat tools install checkov`) and runs as a subprocess. Its
findings fold into the gate's report and exit code, under the same waivers.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import venv
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from medplat.policycheck import Finding
from medplat.synth import SynthError
from medplat.tfplan import render

CHECKOV_VERSION = "3.3.30"
TOOLS = Path(os.environ.get("MEDPLAT_TOOLS_DIR", Path.home() / ".cache" / "medplat" / "tools"))
REPO_WORKLOADS = "workloads"


class CheckovMissing(SynthError):
    """checkov is not installed where medplat looks for it."""


def executable() -> Path:
    override = os.environ.get("MEDPLAT_CHECKOV")
    path = Path(override) if override else TOOLS / "checkov" / "bin" / "checkov"
    if not path.exists():
        raise CheckovMissing(f"checkov is not installed at {path}: run `medplat tools install checkov` "
                             "(or pass --no-checkov)")
    return path


def install(target: Path | None = None) -> Path:
    """Create checkov's own virtual environment and install the pinned version into it."""
    home = target or TOOLS / "checkov"
    if not (home / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=True, clear=False).create(home)
    subprocess.run([str(home / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    f"checkov=={CHECKOV_VERSION}"], check=True)
    return home / "bin" / "checkov"


def framework_controls() -> dict[str, list[str]]:
    text = (resources.files("medplat.compliance") / "mappings" / "checkov.yaml").read_text(encoding="utf-8")
    return dict(yaml.safe_load(text)["frameworks"])


# --- inputs -------------------------------------------------------------------------------

def manifests(inventory: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """Kubernetes objects of an inventory as manifests, with the URN each came from."""
    documents = []
    for resource in inventory["resources"]:
        if not resource["custom"] or not resource["type"].startswith("kubernetes:"):
            continue
        body = {k: v for k, v in resource["inputs"].items() if v != "[secret]"}
        if "apiVersion" not in body or "kind" not in body:
            continue
        documents.append((body, resource["urn"]))
    return documents


def write_manifests(inventory: dict[str, Any], folder: Path) -> dict[str, str]:
    """One file per object (checkov reports per file); returns file -> URN."""
    folder.mkdir(parents=True, exist_ok=True)
    index = {}
    for number, (body, urn) in enumerate(manifests(inventory)):
        name = f"{number:03d}-{body['kind'].lower()}-{(body.get('metadata') or {}).get('name', 'object')}.yaml"
        (folder / name).write_text(yaml.safe_dump(body, sort_keys=True), encoding="utf-8")
        index[name] = urn
    return index


def dockerfiles(root: Path) -> list[Path]:
    folder = root / REPO_WORKLOADS
    return sorted(folder.glob("*/Dockerfile")) if folder.is_dir() else []


def image_of(dockerfile: Path) -> str | None:
    """The image repository a workload's Dockerfile builds: its folder's workload.yaml `image`."""
    from medplat.components.workload_spec import load_spec

    spec_file = dockerfile.parent / "workload.yaml"
    if not spec_file.is_file():
        return None
    try:
        return load_spec(spec_file).image.split("@", 1)[0]
    except (ValueError, OSError):
        return None


def image_users(entries, image: str) -> list[tuple[str, str, str]]:
    """(stack, URN, type) of every resource that runs `image` (pinned by digest): Deployments,
    CronJobs, Jobs, ECS task definitions — wherever its inputs name `<repository>@`."""
    needle = re.compile(r'(?<![\w./-])' + re.escape(image) + r'@sha256:')
    found = []
    for inventory, _config, _waivers in entries:
        for resource in inventory["resources"]:
            if resource.get("custom") and needle.search(json.dumps(resource.get("inputs") or {})):
                found.append((inventory["stack"], resource["urn"], resource["type"]))
    return found


def _dockerfile_key(check: dict[str, Any]) -> str:
    """The workload folder a checkov Dockerfile result is about (`workloads/<folder>/Dockerfile`)."""
    path = Path(check.get("file_abs_path") or check.get("file_path") or "")
    return path.parent.name


# --- running -------------------------------------------------------------------------------

def _run(args: list[str], out: Path) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
           "LOG_LEVEL": "ERROR"}
    command = [str(executable()), *args, "--skip-download", "--compact", "-o", "json", "-o", "sarif",
               "--output-file-path", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode not in (0, 1):
        raise SynthError(f"checkov failed ({completed.returncode}): {completed.stderr.strip().splitlines()[-1:]}")
    report = out / "results_json.json"
    if not report.exists():
        return []
    document = json.loads(report.read_text())
    return document if isinstance(document, list) else [document]


def run_for(entries, out: Path, project_root: Path | None = None):
    """Run checkov on every stack's Kubernetes objects / AWS plan and on workload Dockerfiles."""
    findings: list[Finding] = []
    zones: dict[str, dict[str, Any]] = {}
    rules: dict[str, dict[str, Any]] = {}
    evaluations: list[dict[str, str]] = []
    controls = framework_controls()
    for inventory, _config, _waivers in entries:
        stack, zone = inventory["stack"], inventory.get("zone") or "?"
        target = out / stack
        if zone == "analytics":
            plan, addresses = render(inventory)
            target.mkdir(parents=True, exist_ok=True)
            (target / "plan.json").write_text(json.dumps(plan, indent=1, sort_keys=True))
            reports = _run(["-f", str(target / "plan.json"), "--framework", "terraform_plan"], target / "results")
            locate = _lookup(addresses, lambda check: check.get("resource", ""))
        else:
            index = write_manifests(inventory, target / "manifests")
            if not index:
                continue
            reports = _run(["-d", str(target / "manifests"), "--framework", "kubernetes"], target / "results")
            locate = _lookup(index, lambda check: Path(check.get("file_path", "")).name)
        _fold(reports, stack, zone, locate, controls, findings, zones, rules, evaluations)
    from medplat.paths import project_root as find_project_root

    files = dockerfiles(project_root or find_project_root() or Path.cwd())
    if files:
        reports = _run([arg for f in files for arg in ("-f", str(f))] + ["--framework", "dockerfile"],
                       out / "dockerfiles" / "results")
        _fold_dockerfiles(reports, files, entries, controls, findings, zones, rules, evaluations)
    zones.setdefault("images", {"checks": 0, "passed": 0, "failed": 0, "waived": 0, "dockerfiles": len(files)})
    return findings, {"version": CHECKOV_VERSION, "zones": zones, "rules": sorted(rules.values(), key=lambda r: r["id"]),
                      "evaluations": evaluations}


def _fold_dockerfiles(reports, files, entries, controls, findings, zones, rules, evaluations) -> None:
    """Dockerfile results keyed by path -> workload -> image -> the resources that run that image:
    a check on one workload's Dockerfile lands on that workload's Deployments / CronJobs / tasks in
    every stack that deploys it, and on nothing else. A Dockerfile whose image no stack deploys
    keeps its result on the Dockerfile itself (stack `workloads`), so no failure is dropped."""
    targets: dict[str, list[tuple[str, str, str]]] = {}
    for dockerfile in files:
        image = image_of(dockerfile)
        users = image_users(entries, image) if image else []
        relative = f"{REPO_WORKLOADS}/{dockerfile.parent.name}/Dockerfile"
        targets[dockerfile.parent.name] = users or [("workloads", relative, "dockerfile")]
    for report in reports:
        results = report.get("results") or {}
        by_target: dict[tuple[str, str, str], dict[str, list]] = {}
        for outcome in ("passed_checks", "failed_checks"):
            for check in results.get(outcome) or []:
                folder = _dockerfile_key(check)
                for target in targets.get(folder, [("workloads", check.get("file_path", ""), "dockerfile")]):
                    keyed = {**check, "resource": _relative_resource(check, folder)}
                    by_target.setdefault(target, {"passed_checks": [], "failed_checks": []})[outcome].append(keyed)
        for (stack, urn, resource_type), outcomes in by_target.items():
            _fold([{"check_type": report.get("check_type", "dockerfile"), "results": outcomes}], stack, "images",
                  lambda _check, urn=urn: urn, controls, findings, zones, rules, evaluations,
                  resource_type=resource_type)


def _relative_resource(check: dict[str, Any], folder: str) -> str:
    """checkov names a Dockerfile result `<path>.<instruction>`: the path made repository-relative."""
    resource, path = check.get("resource", ""), check.get("file_path", "")
    suffix = resource[len(path):] if path and resource.startswith(path) else f" {resource}"
    return f"{REPO_WORKLOADS}/{folder}/Dockerfile{suffix}"


def _lookup(mapping: dict[str, str], key_of):
    """checkov result -> URN of the resource it is about ("" when unknown)."""
    return lambda check: mapping.get(key_of(check), "")


def _fold(reports, stack, zone, locate, controls, findings, zones, rules, evaluations,
          resource_type: str | None = None) -> None:
    figures = zones.setdefault(zone, {"checks": 0, "passed": 0, "failed": 0, "waived": 0, "ids": set()})
    for report in reports:
        framework = report.get("check_type", "")
        results = report.get("results") or {}
        for outcome in ("passed_checks", "failed_checks"):
            for check in results.get(outcome) or []:
                check_id = check["check_id"]
                figures["ids"].add(check_id)
                rules.setdefault(check_id, {
                    "id": check_id, "description": check.get("check_name", check_id), "severity":
                    (check.get("severity") or "medium").lower(), "enforcement": "mandatory",
                    "controls": controls.get(framework, []), "rationale": check.get("check_name", ""),
                    "remediation": check.get("guideline") or "See the checkov documentation for this check.",
                    "source": "checkov"})
                urn = locate(check)
                evaluations.append({"policy": check_id, "source": "checkov", "stack": stack,
                                    "subject": urn or check.get("resource", ""),
                                    "resource_type": resource_type or framework})
                if outcome == "passed_checks":
                    figures["passed"] += 1
                    continue
                figures["failed"] += 1
                findings.append(Finding(
                    policy=check_id, source="checkov", severity=(check.get("severity") or "medium").lower(),
                    enforcement="mandatory", stack=stack, urn=urn, resource_type=resource_type or framework,
                    name=urn.rsplit("::", 1)[-1] if urn else check.get("resource", ""),
                    message=f"{check.get('check_name', check_id)} ({check.get('resource', '')})",
                    controls=controls.get(framework, [])))
    figures["checks"] = len(figures["ids"])
