"""Vulnerability scan results, imported and matched against the workload SBOMs.

medplat does not scan (the scanners' databases are not reachable from every build machine);
it imports what CI's scanners wrote and judges it like any other check, `vulnerability-scan`:
each SBOM component a scan covered is an evaluated resource, each reported vulnerability of a
component in an SBOM a finding naming the CVE. Without a scan the check evaluates nothing and
the controls that require it (CRA-I.2.a, NIS2-21.2.e) are not-evaluated.

Formats (the tools' documented JSON):
- pip-audit `-f json`: {"dependencies": [{"name", "version", "vulns": [{"id", "aliases", "fix_versions"}]}]}
  (https://github.com/pypa/pip-audit#json-output-format)
- OSV-Scanner `--format json`: {"results": [{"source", "packages": [{"package": {"name", "version",
  "ecosystem"}, "vulnerabilities": [{"id", "aliases"}]}]}]} (https://google.github.io/osv-scanner/output/)
- Grype `-o json`: {"matches": [{"vulnerability": {"id", "severity", "fix"}, "relatedVulnerabilities",
  "artifact": {"name", "version", "purl"}}], "source": {"target"}, "descriptor": {"name", "version",
  "timestamp", "db": {...}}} (https://github.com/anchore/grype#output-formats)
- Trivy `-f json`: {"SchemaVersion": 2, "CreatedAt", "ArtifactName", "Results": [{"Target",
  "Vulnerabilities": [{"VulnerabilityID", "PkgName", "InstalledVersion", "FixedVersion", "Severity"}]}]}
  (https://trivy.dev/latest/docs/configuration/reporting/#json)
- CycloneDX VEX (1.4+): {"bomFormat": "CycloneDX", "vulnerabilities": [{"id", "affects": [{"ref"}],
  "analysis": {"state", "justification", "response", "detail"}}]} (https://cyclonedx.org/capabilities/vex/)
  A VEX statement never suppresses a finding by itself: accepting one is a waiver (policy
  `vulnerability-scan`) with approver and expiry; the statement is quoted in the finding.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from medplat.policycheck import WAIVER_POLICY
from medplat.reports import GateResult

CHECK = "vulnerability-scan"
SEVERITIES = {"critical": "critical", "high": "high", "medium": "medium", "moderate": "medium", "low": "low",
              "negligible": "low", "unknown": "high"}


class ScanError(ValueError):
    pass


@dataclass
class Vulnerability:
    package: str
    version: str
    id: str
    aliases: list[str] = field(default_factory=list)
    severity: str = "unknown"
    fixed: list[str] = field(default_factory=list)
    vex: str | None = None  # a VEX analysis quoted in the finding

    @property
    def cves(self) -> list[str]:
        return sorted({name for name in [self.id, *self.aliases] if name.startswith("CVE-")})


@dataclass
class Scan:
    tool: str
    version: str | None
    scanned_at: str | None
    database: str | None
    target: str
    raw: str  # the imported file, kept verbatim in the bundle
    vulnerabilities: list[Vulnerability]
    packages: set[tuple[str, str]] | None  # every (name, version) scanned, when the format lists them


def normalize(name: str) -> str:
    """PEP 503 name normalization (pip-audit and SBOMs spell names differently)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load(path: Path) -> Scan:
    try:
        raw = path.read_text(encoding="utf-8")
        document = json.loads(raw)
    except OSError as exc:
        raise ScanError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise ScanError(f"{path}: not JSON ({exc})") from None
    if isinstance(document, dict) and "dependencies" in document and isinstance(document["dependencies"], list):
        return _pip_audit(document, raw, path)
    if isinstance(document, dict) and "matches" in document and "descriptor" in document:
        return _grype(document, raw, path)
    if isinstance(document, dict) and "SchemaVersion" in document and "Results" in document:
        return _trivy(document, raw, path)
    if isinstance(document, dict) and document.get("bomFormat") == "CycloneDX":
        return _vex(document, raw, path)
    if isinstance(document, dict) and "results" in document and isinstance(document["results"], list):
        return _osv(document, raw, path)
    raise ScanError(f"{path}: not a pip-audit, OSV-Scanner, Grype, Trivy or CycloneDX VEX JSON document")


def _pip_audit(document, raw, path) -> Scan:
    vulns, packages = [], set()
    for dependency in document["dependencies"]:
        if "version" not in dependency:
            continue  # skipped (not on PyPI): not scanned, so not claimed
        packages.add((normalize(dependency["name"]), dependency["version"]))
        for vuln in dependency.get("vulns") or []:
            vulns.append(Vulnerability(dependency["name"], dependency["version"], vuln["id"],
                                       list(vuln.get("aliases") or []), fixed=list(vuln.get("fix_versions") or [])))
    return Scan("pip-audit", None, None, "PyPI advisory data via pip-audit (the JSON records no database version)",
                str(path.name), raw, vulns, packages)


def _osv(document, raw, path) -> Scan:
    vulns, packages, targets = [], set(), []
    for result in document["results"]:
        targets.append(str((result.get("source") or {}).get("path", "")))
        for entry in result.get("packages") or []:
            package = entry.get("package") or {}
            packages.add((normalize(package.get("name", "")), package.get("version", "")))
            for vuln in entry.get("vulnerabilities") or []:
                vulns.append(Vulnerability(package.get("name", ""), package.get("version", ""), vuln["id"],
                                           list(vuln.get("aliases") or []),
                                           (vuln.get("database_specific") or {}).get("severity", "unknown")))
    return Scan("osv-scanner", None, None, "OSV.dev (the JSON records no database snapshot)",
                " ".join(targets) or path.name, raw, vulns, None)


def _grype(document, raw, path) -> Scan:
    descriptor = document.get("descriptor") or {}
    db = descriptor.get("db") or {}
    status = db.get("status") or db  # grype >= 0.80 nests the db facts under "status"
    database = f"grype db schema {status.get('schemaVersion', '?')} built {status.get('built', '?')}"
    vulns = []
    for match in document["matches"]:
        artifact, vuln = match.get("artifact") or {}, match.get("vulnerability") or {}
        related = [v.get("id", "") for v in match.get("relatedVulnerabilities") or []]
        vulns.append(Vulnerability(artifact.get("name", ""), artifact.get("version", ""), vuln.get("id", ""),
                                   related, (vuln.get("severity") or "unknown"),
                                   list((vuln.get("fix") or {}).get("versions") or [])))
    return Scan("grype", descriptor.get("version"), descriptor.get("timestamp"), database,
                str((document.get("source") or {}).get("target", path.name)), raw, vulns, None)


def _trivy(document, raw, path) -> Scan:
    vulns, targets = [], [str(document.get("ArtifactName", ""))]
    for result in document.get("Results") or []:
        targets.append(str(result.get("Target", "")))
        for vuln in result.get("Vulnerabilities") or []:
            fixed = [v.strip() for v in str(vuln.get("FixedVersion") or "").split(",") if v.strip()]
            vulns.append(Vulnerability(vuln.get("PkgName", ""), vuln.get("InstalledVersion", ""),
                                       vuln.get("VulnerabilityID", ""), [], vuln.get("Severity", "unknown"), fixed))
    trivy = document.get("Trivy") or {}
    return Scan("trivy", trivy.get("Version"), document.get("CreatedAt"),
                "trivy-db (the JSON records no database version)", " ".join(t for t in targets if t), raw, vulns, None)


def _purl_package(ref: str) -> tuple[str, str] | None:
    match = re.match(r"pkg:[^/]+/(?:.+/)?([^/@]+)@([^?#]+)", unquote(ref))
    return (match.group(1), match.group(2)) if match else None


def _vex(document, raw, path) -> Scan:
    refs = {c.get("bom-ref"): c.get("purl") for c in document.get("components") or [] if c.get("bom-ref")}
    vulns = []
    for vuln in document.get("vulnerabilities") or []:
        analysis = vuln.get("analysis") or {}
        statement = None
        if analysis:
            statement = f"VEX {analysis.get('state', 'no state')}" + \
                (f" ({analysis['justification']})" if analysis.get("justification") else "") + \
                (f", response {', '.join(analysis.get('response') or [])}" if analysis.get("response") else "") + \
                (f": {analysis['detail']}" if analysis.get("detail") else "")
        for affected in vuln.get("affects") or []:
            package = _purl_package(refs.get(affected.get("ref"), affected.get("ref")) or "")
            if package:
                ratings = [r.get("severity") for r in vuln.get("ratings") or [] if r.get("severity")]
                vulns.append(Vulnerability(package[0], package[1], vuln.get("id", ""),
                                           [r.get("id", "") for r in vuln.get("references") or []],
                                           ratings[0] if ratings else "unknown", vex=statement))
    tools = (document.get("metadata") or {}).get("tools")
    tool_names = [t.get("name") for t in (tools.get("components") if isinstance(tools, dict) else tools) or []]
    return Scan("cyclonedx-vex", None, (document.get("metadata") or {}).get("timestamp"),
                f"VEX by {', '.join(filter(None, tool_names)) or 'unknown tool'}",
                str(((document.get("metadata") or {}).get("component") or {}).get("name", path.name)), raw, vulns,
                None)


# --- matching ----------------------------------------------------------------------------

def components(sbom: dict[str, Any]) -> set[tuple[str, str]]:
    """(normalized name, version) of an SBOM's PyPI components."""
    found = set()
    for component in sbom.get("components") or []:
        purl = component.get("purl") or ""
        if purl.startswith("pkg:pypi/") and component.get("version"):
            found.add((normalize(component["name"]), component["version"]))
    return found


def _covers(scan: Scan, workload: str, sbom: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The SBOM components this scan evaluated: those it lists, or the whole SBOM it targeted."""
    if scan.packages is not None:
        return sbom & scan.packages
    # Scanners that list only matches cover what they targeted: the workload's SBOM file or image.
    if re.search(rf"(?<![\w.-]){re.escape(workload)}(\.cdx\.json)?(?![\w.-])", scan.target):
        return set(sbom)
    return set()


def _subject(workload: str, name: str, version: str) -> str:
    return f"sbom:{workload}:pkg:pypi/{name}@{version}"


def assess(result: GateResult, scans: list[Scan], sboms: dict[str, dict[str, Any]],
           workload_stacks: dict[str, list[str]]) -> tuple[GateResult, list[dict[str, Any]]]:
    """The gate result with `vulnerability-scan` evaluations and findings added; per-scan summaries."""
    from medplat.policycheck import Finding

    evaluations, findings, summaries = [], [], []
    waivers = [w for w in result.waivers if w["policy"] == CHECK]
    used_waivers: set[tuple[str, str]] = set()
    for scan in scans:
        matched, named = 0, set()
        for workload, sbom in sorted(sboms.items()):
            inventory = components(sbom)
            covered = _covers(scan, workload, inventory)
            matched += len(covered)
            stacks = workload_stacks.get(workload) or ["workloads"]
            hits = [v for v in scan.vulnerabilities if (normalize(v.package), v.version) in covered]
            for stack in stacks:
                failing = {}
                for vuln in hits:
                    subject = _subject(workload, normalize(vuln.package), vuln.version)
                    name = f"{workload}:{normalize(vuln.package)}:{vuln.id}"
                    message = (f"{vuln.package} {vuln.version} in the {workload} image: {vuln.id}"
                               + (f" ({', '.join(c for c in vuln.cves if c != vuln.id)})"
                                  if [c for c in vuln.cves if c != vuln.id] else "")
                               + (f", fixed in {', '.join(vuln.fixed)}" if vuln.fixed else ", no fix listed")
                               + (f"; {vuln.vex}" if vuln.vex else "") + f" [{scan.tool}]")
                    finding = Finding(policy=CHECK, source="scanner", severity=SEVERITIES.get(
                        str(vuln.severity).lower(), "high"), enforcement="mandatory", stack=stack, urn=subject,
                        resource_type="sbom-component", name=name, message=message,
                        controls=_controls(result))
                    waiver = _waiver(waivers, stack, subject, name)
                    if waiver:
                        finding.status, finding.waiver = "waived", waiver
                        used_waivers.add((stack, waiver["resource"]))
                    findings.append(finding)
                    failing.setdefault(subject, []).append(finding)
                    named.update(vuln.cves or [vuln.id])
                for package, version in sorted(covered):
                    subject = _subject(workload, package, version)
                    found = failing.get(subject, [])
                    status = "fail" if any(f.status == "fail" for f in found) else "waived" if found else "pass"
                    evaluations.append({"policy": CHECK, "source": "scanner", "stack": stack, "subject": subject,
                                        "resource_type": "sbom-component", "status": status,
                                        "findings": [f.message for f in found]})
        summaries.append({"tool": scan.tool, "toolVersion": scan.version, "scannedAt": scan.scanned_at,
                          "database": scan.database, "target": scan.target, "matched": matched,
                          "vulnerabilities": sorted(named)})
    kept = [f for f in result.findings if not (
        f.policy == WAIVER_POLICY and f.waiver and f.waiver.get("policy") == CHECK
        and (f.stack, f.waiver.get("resource")) in used_waivers and "matches no finding" in f.message)]
    evaluations_kept = [e for e in result.evaluations if not (
        e["policy"] == WAIVER_POLICY and (e["stack"], e["subject"]) in used_waivers)]
    evaluations_kept += [{"policy": WAIVER_POLICY, "source": "medplat", "stack": stack, "subject": resource,
                          "resource_type": "waiver", "status": "pass", "findings": []}
                         for stack, resource in sorted(used_waivers)]
    updated = dataclasses.replace(result, findings=kept + findings, evaluations=evaluations_kept + evaluations)
    return updated, summaries


def _controls(result: GateResult) -> list[str]:
    return next((list(rule["controls"]) for rule in result.policies if rule["id"] == CHECK), [])


def _waiver(waivers, stack: str, subject: str, name: str) -> dict[str, Any] | None:
    for waiver in waivers:
        if waiver["stack"] == stack and not waiver["expired"] and (
                fnmatch.fnmatchcase(subject, waiver["resource"]) or fnmatch.fnmatchcase(name, waiver["resource"])):
            return waiver
    return None
