"""Continuous compliance: re-check deployed state, keep every run, report drift.

`medplat compliance run` reads `pulumi stack export` / `pulumi preview --json` files, runs the
policy pack (and checkov), appends one OSCAL assessment-results `result` (timestamped) to the
folder's `assessment-results.json`, writes a run record (`runs/<time>.json`: resources with a
digest each, control verdicts) and records the run's digest in the audit log. `drift`
compares two run records, or a run against the planned inventories: new, removed and
changed resources, and controls whose verdict flipped.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from medplat.evidence import matrix, oscal
from medplat.reports import GateResult

RESULTS = "assessment-results.json"
EXPORT_LIMIT = 256 * 1024 * 1024  # bytes of one stack export read from the state backend
STACK_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}/[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
PLACEHOLDER_MARKS = ("[secret]", "planned", ".invalid")


class ComplianceError(Exception):
    pass


def fetch_export(api: str, stack_ref: str, token_file: Path, folder: Path, moment: datetime.datetime) -> Path:
    """The deployed state of ORG/PROJECT/STACK from the Pulumi Cloud REST API (`GET /api/stacks/
    {org}/{project}/{stack}/export`, what `pulumi stack export` prints), kept beside the run."""
    import httpx

    if not STACK_REF.match(stack_ref):
        raise ComplianceError(f"--pulumi-stack: {stack_ref!r} is not ORGANIZATION/PROJECT/STACK")
    parsed = urllib.parse.urlsplit(api)
    if parsed.scheme != "https" and parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ComplianceError(f"--pulumi-api: {api} is not https (the token would travel in clear)")
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ComplianceError(f"{token_file}: cannot read the state token: {exc.strerror}") from None
    url = f"{api.rstrip('/')}/api/stacks/{stack_ref}/export"
    headers = {"Authorization": f"token {token}", "Accept": "application/vnd.pulumi+8"}
    body = bytearray()
    try:
        with httpx.stream("GET", url, headers=headers, timeout=60.0) as response:
            if response.status_code != 200:
                raise ComplianceError(f"{url}: the state backend answered HTTP {response.status_code}")
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > EXPORT_LIMIT:
                    raise ComplianceError(f"{url}: the export exceeds {EXPORT_LIMIT} bytes")
    except httpx.HTTPError as exc:
        raise ComplianceError(f"{url}: cannot reach the state backend: {exc}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise ComplianceError(f"{url}: the state backend's answer is not JSON") from None
    if not isinstance(document, dict) or "deployment" not in document:
        raise ComplianceError(f"{url}: not a stack export (no deployment)")
    exports = folder / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    path = exports / f"{stack_ref.rsplit('/', 1)[-1]}-{moment.strftime('%Y%m%dT%H%M%S%fZ')}.json"
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(bytes(body))
    partial.replace(path)
    return path


def stack_waivers(stacks_dir: Path | None, stack: str):
    """The waivers a stack's config declares (Pulumi.<stack>.yaml), validated like the gate's."""
    from medplat.config import Waiver

    path = stacks_dir / f"Pulumi.{stack}.yaml" if stacks_dir else None
    if path is None or not path.is_file():
        return []
    config = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("config") or {}
    return [Waiver.model_validate(item) for item in config.get("medplat:waivers") or []]


def _comparable(value: Any) -> Any:
    """Inputs with the values only a cloud computes (placeholders, secrets) left out."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in sorted(value.items()) if _comparable(v) is not None}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, str) and any(mark in value for mark in PLACEHOLDER_MARKS):
        return None
    return value


def resource_digests(inventories: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    found = {}
    for inventory in inventories:
        for resource in inventory["resources"]:
            body = json.dumps({"type": resource["type"], "inputs": _comparable(resource.get("inputs") or {})},
                              sort_keys=True)
            found[resource["urn"]] = {"type": resource["type"], "digest": hashlib.sha256(body.encode()).hexdigest()}
            if resource.get("stateDigest"):
                found[resource["urn"]]["state"] = resource["stateDigest"]
    return dict(sorted(found.items()))


def run_record(inventories, result: GateResult, rows, moment: datetime.datetime) -> dict[str, Any]:
    return {
        "schema": "medplat.compliance-run/v1", "time": moment.isoformat(),
        "stacks": [{"stack": inv["stack"], "status": inv["status"], "source": inv["source"]} for inv in inventories],
        "gate": result.summary(),
        "resources": resource_digests(inventories),
        "controls": {row["control"]: row["status"] for row in rows},
    }


def append_result(folder: Path, rows, stacks, moment: datetime.datetime, label: str) -> str:
    """Append this run's OSCAL result to the folder's assessment-results document (validated)."""
    from trestle.oscal.assessment_results import AssessmentResults

    path = folder / RESULTS
    previous = []
    if path.exists():
        try:
            previous = list(AssessmentResults.parse_obj(json.loads(path.read_text())["assessment-results"]).results)
        except (ValueError, KeyError) as exc:
            raise ComplianceError(f"{path}: not an OSCAL assessment-results document ({exc})") from None
    text = oscal.serialize(oscal.build_result(rows, stacks, moment, label), stacks, moment, label, previous)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return text


def run(inventories, result: GateResult, folder: Path, moment: datetime.datetime) -> tuple[dict, Path, str]:
    """Matrix, OSCAL result appended, run record written; returns (record, record path, digest)."""
    from medplat.evidence.bundle import label_of

    folder.mkdir(parents=True, exist_ok=True)
    rows = matrix.control_matrix(inventories, result)
    append_result(folder, rows, result.stacks, moment, label_of(inventories))
    record = run_record(inventories, result, rows, moment)
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    runs = folder / "runs"
    runs.mkdir(exist_ok=True)
    path = runs / f"{moment.strftime('%Y%m%dT%H%M%S%fZ')}.json"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return record, path, hashlib.sha256(text.encode()).hexdigest()


def previous_run(folder: Path, before: Path | None = None) -> Path | None:
    runs = sorted((folder / "runs").glob("*.json")) if (folder / "runs").is_dir() else []
    runs = [p for p in runs if before is None or p.name < before.name]
    return runs[-1] if runs else None


def load_side(path: Path) -> dict[str, Any]:
    """A run record, or an inventory / stack export / preview file (resources only)."""
    from medplat.inventory import Inventory, load_any

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ComplianceError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError:
        raise ComplianceError(f"{path}: not JSON") from None
    if isinstance(document, dict) and document.get("schema") == "medplat.compliance-run/v1":
        return document
    loaded = load_any(path)
    inventory = loaded.to_json() if isinstance(loaded, Inventory) else loaded
    return {"resources": resource_digests([inventory]), "controls": {}}


def drift(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    lines = []
    old, new = before["resources"], after["resources"]
    for urn in sorted(set(old) | set(new)):
        if urn not in old:
            lines.append(f"resource new: {urn}")
        elif urn not in new:
            lines.append(f"resource removed: {urn}")
        elif old[urn]["digest"] != new[urn]["digest"]:
            lines.append(f"resource changed: {urn}")
        elif old[urn].get("state") and new[urn].get("state") and old[urn]["state"] != new[urn]["state"]:
            # inputs as the program set them, but the provider read back something else: a change
            # made outside Pulumi (console, API) or a value the cloud chose
            lines.append(f"resource changed in deployed state only (outputs): {urn}")
    for control in sorted(set(before.get("controls") or {}) & set(after.get("controls") or {})):
        a, b = before["controls"][control], after["controls"][control]
        if a != b:
            lines.append(f"control {control}: {a} -> {b}")
    return lines


def audit_event(digest: str, record_path: Path, record: dict[str, Any]) -> dict[str, Any]:
    from medplat.service.audit import balp_event

    stacks = ", ".join(s["stack"] for s in record["stacks"])
    return balp_event("create", source="medplat-compliance", agent="medplat compliance run",
                      entities=[f"DocumentReference/compliance-run-{digest[:32]}"], outcome="0",
                      description=f"compliance run {record_path.name} over {stacks}: sha256:{digest}")
