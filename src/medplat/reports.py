"""Policy-gate reports: readable table, JSON, SARIF 2.1.0 and JUnit XML from one result."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from medplat import __version__
from medplat.policycheck import Finding

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/medplat/medplat"


@dataclass
class GateResult:
    stacks: list[dict[str, Any]]  # {"stack", "status", "source", "resources", "configFile"}
    policies: list[dict[str, Any]]  # rule metadata: id, description, severity, enforcement, controls, ...
    findings: list[Finding]
    waivers: list[dict[str, Any]] = field(default_factory=list)
    checkov: dict[str, Any] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # {policy, stack, subject, status, ...}

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.blocking]

    @property
    def exit_code(self) -> int:
        return 1 if self.blocking else 0

    def summary(self) -> dict[str, Any]:
        return {
            "stacks": len(self.stacks),
            "policies": len(self.policies),
            "findings": len(self.findings),
            "mandatoryFailures": len(self.blocking),
            "advisory": len([f for f in self.findings if f.status == "fail" and f.enforcement != "mandatory"]),
            "waived": len([f for f in self.findings if f.status == "waived"]),
            "result": "fail" if self.blocking else "pass",
        }


def report_files(result: GateResult) -> dict[str, str]:
    """The gate's three report files by name: JSON, SARIF 2.1.0, JUnit XML."""
    return {"report.json": to_json(result), "report.sarif": to_sarif(result), "report.junit.xml": to_junit(result)}


def to_json(result: GateResult) -> str:
    document = {
        "schema": "medplat.policy-report/v1",
        "tool": {"name": "medplat policy check", "version": __version__},
        "summary": result.summary(),
        "stacks": result.stacks,
        "findings": [f.to_json() for f in result.findings],
        "waivers": result.waivers,
        "checkov": result.checkov,
        "policies": result.policies,
        "evaluations": result.evaluations,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _level(finding: Finding) -> str:
    if finding.status == "waived":
        return "note"
    return "error" if finding.enforcement == "mandatory" else "warning"


def _config_uri(result: GateResult, stack: str) -> str:
    for entry in result.stacks:
        if entry["stack"] == stack and entry.get("configFile"):
            return entry["configFile"]
    return f"stacks/Pulumi.{stack}.yaml"


def to_sarif(result: GateResult) -> str:
    rules = []
    index: dict[str, int] = {}
    for policy in result.policies:
        index[policy["id"]] = len(rules)
        rules.append({
            "id": policy["id"],
            "name": "".join(part.title() for part in policy["id"].replace("_", "-").split("-")),
            "shortDescription": {"text": policy["description"]},
            "fullDescription": {"text": policy.get("rationale") or policy["description"]},
            "help": {"text": policy.get("remediation") or policy["description"]},
            "defaultConfiguration": {"level": "error" if policy["enforcement"] == "mandatory" else "warning"},
            "properties": {"tags": list(policy.get("controls", [])), "severity": policy["severity"],
                           "source": policy.get("source", "crossguard")},
        })
    results = []
    for finding in result.findings:
        entry: dict[str, Any] = {
            "ruleId": finding.policy,
            "level": _level(finding),
            "message": {"text": f"{finding.message} [{finding.urn or finding.name}]"},
            "locations": [{
                "physicalLocation": {"artifactLocation": {"uri": _config_uri(result, finding.stack)}},
                "logicalLocations": [{"fullyQualifiedName": finding.urn or finding.name, "name": finding.name,
                                      "kind": "resource"}],
            }],
            "properties": {"stack": finding.stack, "resourceType": finding.resource_type,
                           "controls": finding.controls, "severity": finding.severity, "source": finding.source},
        }
        if finding.policy in index:
            entry["ruleIndex"] = index[finding.policy]
        if finding.status == "waived" and finding.waiver:
            entry["suppressions"] = [{"kind": "external", "status": "accepted",
                                      "justification": f"{finding.waiver['reason']} (approved by "
                                                       f"{finding.waiver['approver']}, expires "
                                                       f"{finding.waiver['expires']})"}]
        results.append(entry)
    document = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "medplat", "version": __version__, "informationUri": INFORMATION_URI,
                                "rules": rules}},
            "results": results,
            "properties": {"summary": result.summary(), "checkov": result.checkov},
        }],
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def to_junit(result: GateResult) -> str:
    """One testsuite per stack, one testcase per policy; failures list each violation."""
    suites = ET.Element("testsuites", name="medplat policy check")
    total_tests = total_failures = 0
    for entry in result.stacks:
        stack = entry["stack"]
        suite = ET.SubElement(suites, "testsuite", name=f"medplat.{stack}")
        tests = failures = skipped = 0
        for policy in result.policies:
            mine = [f for f in result.findings if f.stack == stack and f.policy == policy["id"]]
            case = ET.SubElement(suite, "testcase", classname=f"medplat.{stack}", name=policy["id"])
            tests += 1
            failing = [f for f in mine if f.blocking]
            if failing:
                failures += 1
                failure = ET.SubElement(case, "failure", type=policy["severity"],
                                        message=f"{len(failing)} violation(s) of {policy['id']}")
                failure.text = "\n".join(f"{f.urn or f.name}: {f.message}" for f in failing)
            others = [f for f in mine if not f.blocking]
            if others:
                output = ET.SubElement(case, "system-out")
                output.text = "\n".join(f"[{f.status}/{f.enforcement}] {f.urn or f.name}: {f.message}" for f in others)
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        suite.set("skipped", str(skipped))
        total_tests, total_failures = total_tests + tests, total_failures + failures
    suites.set("tests", str(total_tests))
    suites.set("failures", str(total_failures))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
