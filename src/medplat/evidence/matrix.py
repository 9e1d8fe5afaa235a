"""The control matrix: control -> resources -> checks -> pass / fail / waived / manual."""
from __future__ import annotations

import csv
import io
from typing import Any

from medplat.compliance.controls import catalog, resource_controls
from medplat.reports import GateResult

STATUS_ORDER = {"fail": 0, "not-covered": 1, "manual": 2, "waived": 3, "pass": 4}


def _check_status(findings) -> str:
    if any(f.blocking for f in findings):
        return "fail"
    if any(f.status == "waived" for f in findings):
        return "waived"
    return "pass"


def control_matrix(inventories: list[dict[str, Any]], result: GateResult) -> list[dict[str, Any]]:
    mapping = resource_controls()
    by_rule: dict[str, list] = {}
    for finding in result.findings:
        by_rule.setdefault(finding.policy, []).append(finding)
    rows = []
    for control in sorted(catalog().values(), key=lambda c: (c.framework, c.id)):
        resources = sorted(
            ({"stack": inv["stack"], "urn": r["urn"], "type": r["type"], "status": inv["status"]}
             for inv in inventories for r in inv["resources"] if control.id in mapping.get(r["type"], [])),
            key=lambda r: (r["stack"], r["urn"]))
        checks = sorted(
            ({"id": rule["id"], "source": rule.get("source", "crossguard"),
              "status": _check_status(by_rule.get(rule["id"], [])),
              "findings": len(by_rule.get(rule["id"], []))}
             for rule in result.policies if control.id in rule.get("controls", [])),
            key=lambda c: (c["source"], c["id"]))
        if control.kind == "organizational":
            status = "manual"
        elif not checks:
            status = "not-covered"
        else:
            statuses = {c["status"] for c in checks}
            status = "fail" if "fail" in statuses else "waived" if "waived" in statuses else "pass"
        rows.append({"control": control.id, "framework": control.framework, "title": control.title,
                     "kind": control.kind, "evidence": control.evidence, "status": status,
                     "resources": resources, "checks": checks})
    return rows


def matrix_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["control", "framework", "kind", "status", "title", "resources", "checks", "failing_checks",
                     "manual_evidence"])
    for row in rows:
        writer.writerow([row["control"], row["framework"], row["kind"], row["status"], row["title"],
                         len(row["resources"]), len(row["checks"]),
                         " ".join(c["id"] for c in row["checks"] if c["status"] == "fail"), row["evidence"] or ""])
    return buffer.getvalue()


REQUIRED_COVERAGE = [f"NIS2-21.2.{letter}" for letter in "abcdefhij"] + [
    "GDPR-32.1.a", "GDPR-32.1.b", "GDPR-44", "MDR-GSPR-17.2", "MDR-GSPR-17.4"]


def coverage(rows: list[dict[str, Any]], controls: list[str] = REQUIRED_COVERAGE) -> list[dict[str, Any]]:
    """Automated checks and zones per control, for the README's coverage table."""
    table = []
    by_id = {row["control"]: row for row in rows}
    for control_id in controls:
        row = by_id[control_id]
        table.append({
            "control": control_id, "title": row["title"],
            "policies": sorted(c["id"] for c in row["checks"] if c["source"] != "checkov"),
            "zones": sorted({r["stack"] for r in row["resources"]}),
            "status": row["status"],
        })
    return table


def coverage_markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| control | automated policies (CrossGuard) | stacks with mapped resources | status |",
             "| --- | --- | --- | --- |"]
    for row in table:
        lines.append(f"| {row['control']} | {', '.join(row['policies']) or '-'} | "
                     f"{', '.join(row['zones']) or '-'} | {row['status']} |")
    return "\n".join(lines) + "\n"
