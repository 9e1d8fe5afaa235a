"""The control matrix: control -> checks -> evaluated resources -> verdict.

A verdict claims only what was checked: a control passes only when at least one automated
check evaluated at least one in-scope resource and every evaluation passed. Otherwise it is
`not-evaluated` (checks exist but saw nothing, or a check the control requires — such as a
vulnerability scan — did not run), distinct from `not-covered` (no automated check maps to
it) and `manual` (organizational; evidenced by documents).
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from typing import Any

from medplat.checkov import framework_controls
from medplat.compliance.controls import catalog
from medplat.reports import GateResult

STATUSES = ("fail", "not-evaluated", "not-covered", "manual", "waived", "pass")
STATUS_ORDER = {status: rank for rank, status in enumerate(STATUSES)}


def _worst(statuses) -> str:
    found = set(statuses)
    return "fail" if "fail" in found else "waived" if "waived" in found else "pass"


def _resources(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per evaluated subject: its result and which checks passed, failed or were waived."""
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for item in evaluations:
        row = grouped.setdefault((item["stack"], item["subject"]), {
            "stack": item["stack"], "urn": item["subject"], "type": item["resource_type"],
            "pass": [], "fail": [], "waived": []})
        row[item["status"]].append(item["policy"])
    rows = []
    for row in grouped.values():
        row["status"] = "fail" if row["fail"] else "waived" if row["waived"] else "pass"
        for key in ("pass", "fail", "waived"):
            row[key] = sorted(set(row[key]))
        rows.append(row)
    return sorted(rows, key=lambda r: (STATUS_ORDER[r["status"]], r["stack"], r["urn"]))


def verdict(kind: str, checks: list[dict[str, Any]], requires: tuple[str, ...],
            evaluations: list[dict[str, Any]]) -> tuple[str, str]:
    """(status, reason) of one control."""
    if kind == "organizational":
        return "manual", "organizational control: evidenced by documents (manual-evidence/)"
    if not checks and not requires:
        return "not-covered", "no automated check maps to this control"
    if any(e["status"] == "fail" for e in evaluations):
        failing = sorted({e["policy"] for e in evaluations if e["status"] == "fail"})
        return "fail", f"failing: {', '.join(failing)}"
    ran = {e["policy"] for e in evaluations}
    missing = [check for check in requires if check not in ran]
    if missing:
        return "not-evaluated", f"required evidence missing: {', '.join(missing)} evaluated nothing"
    if not evaluations:
        return "not-evaluated", f"{len(checks)} mapped check(s) evaluated no in-scope resource"
    status = _worst(e["status"] for e in evaluations)
    subjects = len({(e["stack"], e["subject"]) for e in evaluations})
    return status, f"{len(ran)} check(s) evaluated {subjects} resource(s); {status}"


CHECKOV_NOT_RUN = "checkov (not run)"


def control_matrix(inventories: list[dict[str, Any]], result: GateResult) -> list[dict[str, Any]]:
    checkov_ran = any(rule.get("source") == "checkov" for rule in result.policies)
    checkov_mapped = {control for controls in framework_controls().values() for control in controls}
    by_check: dict[str, list[dict[str, Any]]] = {}
    for item in result.evaluations:
        by_check.setdefault(item["policy"], []).append(item)
    rows = []
    for control in sorted(catalog().values(), key=lambda c: (c.framework, c.id)):
        rules = [rule for rule in result.policies if control.id in rule.get("controls", [])]
        checks, evaluations = [], []
        for rule in sorted(rules, key=lambda r: (r.get("source", "crossguard"), r["id"])):
            mine = by_check.get(rule["id"], [])
            evaluations += mine
            counts = Counter(e["status"] for e in mine)
            checks.append({"id": rule["id"], "source": rule.get("source", "crossguard"),
                           "status": _worst(counts) if mine else "not-evaluated", "evaluated": len(mine),
                           "failed": counts["fail"], "waived": counts["waived"],
                           "findings": counts["fail"] + counts["waived"]})
        status, reason = verdict(control.kind, checks, control.requires, evaluations)
        if not checkov_ran and control.id in checkov_mapped:
            # checkov's checks for this control did not run: say so, rather than let them vanish
            checks.append({"id": CHECKOV_NOT_RUN, "source": "checkov", "status": "not-evaluated", "evaluated": 0,
                           "failed": 0, "waived": 0, "findings": 0})
            reason += "; checkov did not run: its mapped checks are not part of this verdict"
        rows.append({"control": control.id, "framework": control.framework, "title": control.title,
                     "kind": control.kind, "evidence": control.evidence, "status": status, "reason": reason,
                     "requires": list(control.requires), "checks": checks,
                     "resources": _resources(evaluations) if control.kind != "organizational" else []})
    return rows


def matrix_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["control", "framework", "kind", "status", "title", "resources", "failing_resources",
                     "checks", "checks_evaluated", "failing_checks", "reason", "manual_evidence"])
    for row in rows:
        writer.writerow([row["control"], row["framework"], row["kind"], row["status"], row["title"],
                         len(row["resources"]), len([r for r in row["resources"] if r["status"] == "fail"]),
                         len(row["checks"]), len([c for c in row["checks"] if c["evaluated"]]),
                         " ".join(c["id"] for c in row["checks"] if c["status"] == "fail"), row["reason"],
                         row["evidence"] or ""])
    return buffer.getvalue()


REQUIRED_COVERAGE = [f"NIS2-21.2.{letter}" for letter in "abcdefhij"] + [
    "GDPR-32.1.a", "GDPR-32.1.b", "GDPR-44", "MDR-GSPR-17.2", "MDR-GSPR-17.4", "CRA-I.2.a"]


def coverage(rows: list[dict[str, Any]], controls: list[str] = REQUIRED_COVERAGE) -> list[dict[str, Any]]:
    """Automated checks, evaluated resources and verdict per control, for the README's table."""
    table = []
    by_id = {row["control"]: row for row in rows}
    for control_id in controls:
        row = by_id[control_id]
        per_stack = Counter(r["stack"] for r in row["resources"])
        checkov = [c for c in row["checks"] if c["source"] == "checkov" and c["id"] != CHECKOV_NOT_RUN]
        table.append({
            "control": control_id, "title": row["title"],
            "policies": sorted(c["id"] for c in row["checks"] if c["source"] != "checkov"),
            "checkov": len(checkov),
            "zones": sorted(per_stack),
            "evaluated": dict(sorted(per_stack.items())),
            "status": row["status"],
        })
    return table


def coverage_markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| control | automated checks | resources evaluated (per stack) | status |",
             "| --- | --- | --- | --- |"]
    for row in table:
        checks = ", ".join(row["policies"]) or "-"
        if row["checkov"]:
            checks += f" + {row['checkov']} checkov checks"
        evaluated = ", ".join(f"{stack} {count}" for stack, count in row["evaluated"].items()) or "none"
        lines.append(f"| {row['control']} | {checks} | {evaluated} | {row['status']} |")
    return "\n".join(lines) + "\n"
