"""Evidence claims only what it checked: verdicts need evaluated resources, scans back CRA-I.2.a."""
from __future__ import annotations

import datetime
import json

import pytest

from conftest import REPO
from medplat.evidence import matrix, vulns
from medplat.gate import check_inventories

TODAY = datetime.date(2026, 11, 23)
SCANS = REPO / "tests" / "data" / "scans"


def gate(examples, names):
    entries = [(examples.results[n].inventory.to_json(), f"stacks/Pulumi.{n}.yaml",
                list(examples.results[n].config.waivers)) for n in names]
    return [e[0] for e in entries], check_inventories(entries, TODAY)


def rows_by_id(inventories, result):
    return {row["control"]: row for row in matrix.control_matrix(inventories, result)}


def test_no_control_passes_without_an_evaluated_resource(examples):
    inventories, result = gate(examples, sorted(examples.results))
    rows = rows_by_id(inventories, result)
    for row in rows.values():
        if row["status"] in ("pass", "waived"):
            assert row["resources"], f"{row['control']} says {row['status']} with no evaluated resource"
            assert any(c["evaluated"] for c in row["checks"])
        for resource in row["resources"]:  # every listed resource carries its own result and checks
            assert resource["status"] in ("pass", "fail", "waived")
            assert resource["pass"] or resource["fail"] or resource["waived"]
    # Placeholder images are waived, not passed: the supply-chain controls say so.
    assert rows["NIS2-21.2.d"]["status"] == "waived"
    # CRA-I.2.a needs a vulnerability scan: none was imported.
    assert rows["CRA-I.2.a"]["status"] == "not-evaluated"
    assert "vulnerability-scan" in rows["CRA-I.2.a"]["reason"]
    assert rows["NIS2-21.2.e"]["status"] == "not-evaluated"


def test_a_control_with_no_in_scope_resource_is_not_evaluated(examples):
    """CRA-I.2.l's checks evaluate trails, VPCs and buckets; an edge site has none: not evaluated there."""
    inventories, result = gate(examples, ["edge-dresden"])
    row = rows_by_id(inventories, result)["CRA-I.2.l"]
    assert row["status"] == "not-evaluated" and row["resources"] == []
    assert "evaluated no in-scope resource" in row["reason"]
    inventories, result = gate(examples, ["analytics"])
    row = rows_by_id(inventories, result)["CRA-I.2.l"]
    assert row["status"] == "pass"
    by_name = {r["urn"].rsplit("::", 1)[-1]: r for r in row["resources"]}
    assert by_name["analytics-trail"]["pass"] == ["cloudtrail-log-validation"]
    assert by_name["analytics-vpc"]["pass"] == ["vpc-flow-logs"]


def test_verdict_rules():
    check = [{"id": "x", "evaluated": 0}]
    assert matrix.verdict("organizational", [], (), [])[0] == "manual"
    assert matrix.verdict("technical", [], (), [])[0] == "not-covered"
    assert matrix.verdict("technical", check, (), [])[0] == "not-evaluated"
    passed = [{"policy": "x", "stack": "s", "subject": "u", "status": "pass"}]
    assert matrix.verdict("technical", check, (), passed)[0] == "pass"
    assert matrix.verdict("technical", check, ("scan",), passed)[0] == "not-evaluated"
    failed = passed + [{"policy": "x", "stack": "s", "subject": "v", "status": "fail"}]
    assert matrix.verdict("technical", check, ("scan",), failed)[0] == "fail"


@pytest.mark.parametrize("name,tool,when,database", [
    ("pip-audit.json", "pip-audit", None, "pip-audit"),
    ("osv-scanner.json", "osv-scanner", None, "OSV"),
    ("grype.json", "grype", "2024-03-01T10:11:12.123456789Z", "grype db schema 5 built 2024-03-01T01:30:53Z"),
    ("trivy.json", "trivy", "2024-03-01T10:12:40.187432+00:00", "trivy-db"),
    ("vex.cdx.json", "cyclonedx-vex", "2024-03-02T08:00:00Z", "Dependency-Track"),
])
def test_scanner_formats_are_read_with_date_and_database(name, tool, when, database):
    scan = vulns.load(SCANS / name)
    assert scan.tool == tool and scan.scanned_at == when and database in scan.database
    jinja = [v for v in scan.vulnerabilities if vulns.normalize(v.package) == "jinja2"]
    assert jinja and all(v.version == "3.1.2" for v in jinja)
    assert {"CVE-2024-22195", "CVE-2024-34064"} & {c for v in jinja for c in v.cves}


def test_unknown_scan_format_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(vulns.ScanError, match="not a pip-audit, OSV-Scanner, Grype, Trivy or CycloneDX VEX"):
        vulns.load(path)


def planted_sbom(bundle_sbom: dict) -> dict:
    """The ingest SBOM with Jinja2 3.1.2 planted (a version with published advisories)."""
    sbom = json.loads(json.dumps(bundle_sbom))
    sbom["components"] = [c for c in sbom["components"] if c["name"].lower() != "jinja2"] + [
        {"type": "library", "name": "Jinja2", "version": "3.1.2", "purl": "pkg:pypi/jinja2@3.1.2",
         "bom-ref": "jinja2==3.1.2"}]
    return sbom


@pytest.fixture(scope="module")
def ingest_sbom(examples):
    from medplat.evidence import sbom
    from medplat.evidence.clock import bundle_time
    from medplat.workloads import catalog, image_lock

    spec = catalog()["ingest"]
    return json.loads(sbom.workload_sbom(spec, spec.pinned_image(image_lock()),
                                         REPO / "workloads" / "ingest" / "requirements.lock", True, bundle_time()))


def test_planted_vulnerable_package_fails_cra_with_the_cve(examples, ingest_sbom):
    inventories, result = gate(examples, ["eu-phi"])
    scan = vulns.load(SCANS / "pip-audit.json")
    assessed, summaries = vulns.assess(result, [scan], {"ingest": planted_sbom(ingest_sbom)}, {"ingest": ["eu-phi"]})
    row = rows_by_id(inventories, assessed)["CRA-I.2.a"]
    assert row["status"] == "fail"
    failing = [r for r in row["resources"] if r["status"] == "fail"]
    assert [r["urn"] for r in failing] == ["sbom:ingest:pkg:pypi/jinja2@3.1.2"]
    messages = [f.message for f in assessed.findings if f.policy == "vulnerability-scan"]
    assert any("CVE-2024-22195" in m and "fixed in 3.1.3" in m for m in messages), messages
    assert summaries[0]["vulnerabilities"] == ["CVE-2024-22195", "CVE-2024-34064"]
    assert assessed.exit_code == 1


def test_clean_scan_of_the_real_sbom_passes_and_other_versions_do_not_match(examples, ingest_sbom):
    """The same pip-audit file against the real lock (Jinja2 3.1.6): the 3.1.2 advisories do not apply."""
    inventories, result = gate(examples, ["eu-phi"])
    scan = vulns.load(SCANS / "pip-audit.json")
    assessed, summaries = vulns.assess(result, [scan], {"ingest": ingest_sbom}, {"ingest": ["eu-phi"]})
    row = rows_by_id(inventories, assessed)["CRA-I.2.a"]
    assert row["status"] == "pass", row["reason"]
    assert {r["urn"] for r in row["resources"]} >= {"sbom:ingest:pkg:pypi/fastapi@0.165.0"}
    assert summaries[0]["matched"] == 4  # fastapi, starlette, h11, idna: listed by the scan and in the SBOM


def test_vex_not_affected_needs_a_waiver(examples, ingest_sbom):
    inventories, result = gate(examples, ["eu-phi"])
    scan = vulns.load(SCANS / "vex.cdx.json")
    sboms = {"ingest": planted_sbom(ingest_sbom)}
    assessed, _ = vulns.assess(result, [scan], sboms, {"ingest": ["eu-phi"]})
    (finding,) = [f for f in assessed.findings if f.policy == "vulnerability-scan"]
    assert finding.status == "fail" and "VEX not_affected (code_not_reachable)" in finding.message
    result.waivers.append({"stack": "eu-phi", "policy": "vulnerability-scan", "resource": "ingest:jinja2:CVE-2024-22195",
                           "reason": "VEX: not reachable", "approver": "psirt@saxony-hospitals.example",
                           "expires": "2027-01-31", "expired": False, "daysLeft": 69})
    assessed, _ = vulns.assess(result, [scan], sboms, {"ingest": ["eu-phi"]})
    (finding,) = [f for f in assessed.findings if f.policy == "vulnerability-scan"]
    assert finding.status == "waived" and finding.waiver["approver"] == "psirt@saxony-hospitals.example"
    assert rows_by_id(inventories, assessed)["CRA-I.2.a"]["status"] == "waived"


def test_checkov_checks_that_did_not_run_are_named_not_dropped(examples):
    """Found by a fresh-eyes auditor: with `--no-checkov` the checkov checks mapped to a control
    vanished and CRA-I.2.b still read PASS with 116 fewer checks, the row silent about it."""
    inventories, result = gate(examples, ["edge-dresden"])  # no checkov summary: checkov did not run
    row = rows_by_id(inventories, result)["CRA-I.2.b"]
    assert matrix.CHECKOV_NOT_RUN in [c["id"] for c in row["checks"]]
    assert "checkov did not run" in row["reason"]
    assert all(entry["checkov"] == 0 for entry in matrix.coverage([row], ["CRA-I.2.b"]))
    # with checkov's rules in the result, no such entry
    result.policies.append({"id": "CKV_K8S_8", "source": "checkov", "controls": ["CRA-I.2.b"]})
    row = rows_by_id(inventories, result)["CRA-I.2.b"]
    assert matrix.CHECKOV_NOT_RUN not in [c["id"] for c in row["checks"]]
    assert "checkov did not run" not in row["reason"]
