"""The CI policy gate: policies (and checkov) over synthesized or real stacks, one result."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from medplat.compliance.controls import policy_controls
from medplat.config import Waiver
from medplat.inventory import Inventory, load_any
from medplat.policycheck import Evaluation, Finding, WAIVER_POLICY, apply_waivers, evaluate_pack, sort_findings
from medplat.reports import GateResult
from medplat.stackset import StackSet

CROSS_STACK_POLICIES = ("dataflow-residency",)


def policy_rules() -> list[dict[str, Any]]:
    from medplat.policies.registry import all_policies

    return [{
        "id": p.name, "description": p.description, "severity": p.severity.value,
        "enforcement": p.enforcement_level.value, "controls": list(p.controls),
        "rationale": p.meta.rationale, "remediation": p.meta.remediation, "source": "crossguard",
    } for p in all_policies()]


def _stack_entry(inventory: dict[str, Any], config_file: str | None) -> dict[str, Any]:
    return {"stack": inventory["stack"], "status": inventory["status"], "source": inventory["source"],
            "zone": inventory.get("zone"), "resources": len(inventory["resources"]), "configFile": config_file}


def check_inventories(inventories: list[tuple[dict[str, Any], str | None, list[Waiver]]],
                      today: datetime.date, checkov_findings: list[Finding] | None = None,
                      checkov_summary: dict[str, Any] | None = None) -> GateResult:
    from medplat.policies.registry import all_policies, by_id

    findings: list[Finding] = []
    evaluations: list[Evaluation] = []
    for inventory, _config_file, _waivers in inventories:
        found, checked = evaluate_pack(inventory, all_policies())
        findings += found
        evaluations += checked
        findings += keys_in_state_findings(inventory)
    if len(inventories) > 1:
        # Flows cross stacks (edge -> EU zone): prove residency over the union as well.
        union = {"stack": "all", "resources": [r for inv, _, _ in inventories for r in inv["resources"]]}
        seen = {(f.policy, f.urn, f.message) for f in findings}
        found, checked = evaluate_pack(union, [by_id()[p] for p in CROSS_STACK_POLICIES])
        findings += [f for f in found if (f.policy, f.urn, f.message) not in seen]
        evaluations += checked
    findings += checkov_findings or []
    evaluations += [Evaluation(**e) for e in (checkov_summary or {}).get("evaluations", [])]
    waivers = {inv["stack"]: list(w) for inv, _, w in inventories}
    findings = sort_findings(apply_waivers(findings, waivers, today))
    rules = policy_rules()
    rules += [{"id": "waiver-valid", "description": "Waivers name a policy, resource, reason (>= 10 characters), "
               "approver and an expiry date that has not passed and is at most 366 days ahead (renewed yearly).", "severity": "high", "enforcement": "mandatory",
               "controls": ["ISO27001-A.8.32"], "rationale": "Accepted risk must stay visible and time-boxed.",
               "remediation": "Renew the waiver with a new approval, or fix the violation.", "source": "medplat"}]
    rules += [{"id": "vulnerability-scan", "description": "Imported vulnerability scan results (pip-audit, "
               "OSV-Scanner, Grype, Trivy, CycloneDX VEX) list no known vulnerability in any SBOM component.",
               "severity": "high", "enforcement": "mandatory", "controls": policy_controls()["vulnerability-scan"],
               "rationale": "Software must be made available without known exploitable vulnerabilities.",
               "remediation": "Upgrade the package to a fixed version, or accept the risk with a waiver.",
               "source": "scanner"}]
    rules += (checkov_summary or {}).get("rules", [])
    waiver_records = [{"stack": stack, "policy": w.policy, "resource": w.resource, "reason": w.reason,
                       "approver": w.approver, "expires": w.expires.isoformat(),
                       "expired": w.expires < today, "daysLeft": (w.expires - today).days}
                      for stack, ws in waivers.items() for w in ws]
    evaluations += [Evaluation(WAIVER_POLICY, "medplat", stack, w.resource, "waiver")
                    for stack, ws in waivers.items() for w in ws]
    summary = _checkov_summary(checkov_summary or {}, findings,
                               {inv["stack"]: inv.get("zone") for inv, _, _ in inventories})
    return GateResult(stacks=[_stack_entry(inv, cfg) for inv, cfg, _ in inventories], policies=rules,
                      findings=findings, waivers=waiver_records, checkov=summary,
                      evaluations=results(evaluations, findings))


def results(evaluations: list[Evaluation], findings: list[Finding]) -> list[dict[str, Any]]:
    """Each evaluated (check, subject) with its result: fail (any unwaived finding, advisory or not),
    waived, or pass. A finding on a subject no scope named still counts as evaluated."""
    by_key: dict[tuple[str, str, str], list[Finding]] = {}
    for finding in findings:
        by_key.setdefault((finding.policy, finding.stack, finding.urn or finding.name), []).append(finding)
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for item in evaluations:
        rows.setdefault((item.policy, item.stack, item.subject), item.to_json())
    for key, found in by_key.items():
        if key not in rows:
            first = found[0]
            rows[key] = Evaluation(first.policy, first.source, first.stack, key[2], first.resource_type).to_json()
    for key, row in rows.items():
        statuses = {f.status for f in by_key.get(key, [])}
        row["status"] = "fail" if "fail" in statuses else "waived" if "waived" in statuses else "pass"
        row["findings"] = [f.message for f in by_key.get(key, [])]
    return sorted(rows.values(), key=lambda r: (r["policy"], r["stack"], r["subject"]))


def synthesized(stackset: StackSet, names: list[str]) -> list[tuple[dict[str, Any], str | None, list[Waiver]]]:
    entries = []
    for name in names:
        result = stackset.synth(name)
        config_file = f"stacks/Pulumi.{name}.yaml"
        inventory = result.inventory.to_json()
        if result.private_keys_in_state:  # found before secrets were masked: where, never the key
            inventory[KEYS_IN_STATE] = list(result.private_keys_in_state)
        entries.append((inventory, config_file, list(result.config.waivers)))
    return entries


# Set by synthesis: "URN path" / "output NAME path" of PEM private key text in state, including
# inside secret values that the inventory masks (the pack sees only the masked values offline).
KEYS_IN_STATE = "privateKeysInState"


def keys_in_state_findings(inventory: dict[str, Any]) -> list[Finding]:
    """Findings of the `no-private-key-in-state` policy for key text synthesis found inside secrets."""
    findings = []
    for place in inventory.get(KEYS_IN_STATE) or []:
        urn, _, path = place.partition(" ")
        name = urn.rsplit("::", 1)[-1] if urn.startswith("urn:") else f"stack output {path.split(' ', 1)[0]}"
        findings.append(Finding(
            policy="no-private-key-in-state", source="crossguard", severity="critical", enforcement="mandatory",
            stack=inventory["stack"], urn=urn if urn.startswith("urn:") else "", resource_type="", name=name,
            message=f"PEM private key text in state, inside a secret: {place}",
            controls=policy_controls().get("no-private-key-in-state", [])))
    return findings


def from_file(path: Path) -> tuple[dict[str, Any], str | None, list[Waiver]]:
    loaded = load_any(path)
    inventory = loaded.to_json() if isinstance(loaded, Inventory) else loaded
    return inventory, None, []


def _checkov_summary(raw: dict[str, Any], findings: list[Finding], zones: dict[str, str | None]) -> dict[str, Any]:
    """Per zone: distinct checks run, results passed, failed (unwaived) and waived."""
    summary = {k: v for k, v in raw.items() if k not in ("rules", "evaluations")}
    per_zone = {zone: {k: v for k, v in figures.items() if k != "ids"}
                for zone, figures in (raw.get("zones") or {}).items()}
    for figures in per_zone.values():
        figures["failed"], figures["waived"] = 0, 0
    for finding in findings:
        if finding.source != "checkov":
            continue
        zone = zones.get(finding.stack) or "images"
        figures = per_zone.setdefault(zone, {"checks": 0, "passed": 0, "failed": 0, "waived": 0})
        figures["waived" if finding.status == "waived" else "failed"] += 1
    if raw:
        summary["zones"] = per_zone
    return summary
