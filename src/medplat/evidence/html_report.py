"""A self-contained HTML report an officer can sign: no scripts, no external assets.

Sections: provenance (commit, signer, tools, evidence digest), scope with the planned /
deployed label, data flows and each site's egress policy, waivers with expiry warnings,
vulnerability scans, changes against the previous bundle, a summary per regulation, and
every control (failing first) with the resources its checks evaluated and their results.
"""
from __future__ import annotations

from collections import Counter
from html import escape
from typing import Any

from medplat.evidence.matrix import STATUS_ORDER, STATUSES

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1b1f24;max-width:80rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}
.label{display:inline-block;padding:.15rem .5rem;border-radius:.3rem;font-weight:600}
.planned{background:#fff3cd}.deployed{background:#d1e7dd}.mixed{background:#f8d7da}
table{border-collapse:collapse;width:100%;margin:.4rem 0}td,th{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;
vertical-align:top}
.fail{color:#b42318;font-weight:700}.not-evaluated{color:#b54708;font-weight:700}.not-covered{color:#b54708}
.manual{color:#175cd3}.waived{color:#6941c6}.pass{color:#067647}.warn{background:#fff3cd}.expired{background:#f8d7da}
details{border:1px solid #d0d7de;border-radius:.3rem;margin:.4rem 0;padding:.3rem .6rem}
summary{cursor:pointer}code{font-size:12px;word-break:break-all}
"""
RESOURCE_ROWS = 200  # passing resources shown per control; all of them are in control-matrix.json
EXPIRY_WARNING_DAYS = 30


def _status(status: str) -> str:
    return f'<span class="{escape(status)}">{escape(status.upper())}</span>'


def _table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _provenance(provenance: dict[str, Any]) -> str:
    tools = ", ".join(f"{escape(name)} {escape(str(version))}" for name, version in sorted(provenance["tools"].items()))
    rows = [["git commit", f"<code>{escape(provenance['gitCommit'])}</code>"],
            ["signer key id", f"<code>{escape(provenance.get('signerKeyId') or 'unsigned')}</code>"],
            ["evidence digest (SHA-256 over every evidence file's name and digest, report and manifest excluded)",
             f"<code>{escape(provenance['evidenceDigest'])}</code>"],
            ["tool versions", tools]]
    return '<section id="provenance"><h2>Provenance</h2>' + _table(["", ""], rows, "") + \
        "<p>The signature (manifest.intoto.json) covers this report and every file listed in manifest.json.</p></section>"


def _waivers(waivers: list[dict[str, Any]]) -> str:
    rows = []
    for w in sorted(waivers, key=lambda w: (w["expires"], w["stack"], w["policy"])):
        days = w.get("daysLeft")
        state = "EXPIRED" if w["expired"] else f"expires in {days} days" if days is not None else ""
        css = "expired" if w["expired"] else "warn" if days is not None and days <= EXPIRY_WARNING_DAYS else ""
        rows.append([escape(w["stack"]), f"<code>{escape(w['policy'])}</code>", f"<code>{escape(w['resource'])}</code>",
                     escape(w["reason"]), escape(w["approver"]),
                     f'<span class="{css}">{escape(w["expires"])} {escape(state)}</span>'])
    return '<section id="waivers"><h2>Waivers (accepted risk)</h2>' + _table(
        ["stack", "policy / check", "resource", "reason", "approved by", "expires"], rows,
        "No waivers: every finding counts.") + "</section>"


def _dataflows(scope: dict[str, Any]) -> str:
    flows = [[escape(f["stack"]), escape(f["from"]), escape(f["to"]), escape(", ".join(f["dataClasses"]) or "-")]
             for f in scope["dataFlows"]]
    policies = [[escape(p["stack"]), escape(p["site"]), escape(", ".join(p["egressDataClasses"])),
                 escape(", ".join(p["refusedDataClasses"])), f"<code>{escape(p.get('cloudEndpoint') or '-')}</code>"]
                for p in scope.get("sitePolicies", [])]
    cidrs = [[escape(e["stack"]), escape(e["workload"]), f"<code>{escape(', '.join(e['cidrs']))}</code>"]
             for e in scope.get("egressAddresses", [])]
    return ('<section id="dataflows"><h2>Data flows and egress policy</h2>'
            "<h3>Declared flows (workload → peer, data classes written)</h3>"
            + _table(["stack", "from", "to", "data classes"], flows, "No workload flows in scope.")
            + "<h3>Egress policy per site (site-policy pushed from the EU zone)</h3>"
            + _table(["stack", "site", "may leave the site", "refused at the edge", "cloud endpoint"], policies,
                     "No edge site in scope.")
            + "<h3>Addresses outside the cluster each workload may reach (NetworkPolicy ipBlocks)</h3>"
            + _table(["stack", "workload", "CIDRs"], cidrs, "No workload egress to addresses outside the cluster.")
            + "</section>")


def _scans(scans: list[dict[str, Any]]) -> str:
    rows = []
    for scan in scans:
        rows.append([escape(scan["tool"]), escape(scan.get("toolVersion") or "-"), escape(scan.get("scannedAt") or "-"),
                     escape(scan.get("database") or "-"), str(scan["matched"]),
                     escape(", ".join(scan["vulnerabilities"][:20]) or "none")])
    return '<section id="vulnerabilities"><h2>Vulnerability scans (imported)</h2>' + _table(
        ["tool", "version", "scanned at", "database", "SBOM components matched", "vulnerabilities found"], rows,
        "No scan result was imported: controls that require a vulnerability scan are NOT EVALUATED.") + "</section>"


def _diff(diff: list[str] | None) -> str:
    if diff is None:
        return '<section id="diff"><h2>Changes since the previous bundle</h2><p>No previous bundle was given.</p></section>'
    items = "".join(f"<li><code>{escape(line)}</code></li>" for line in diff) or "<li>no changes</li>"
    return f'<section id="diff"><h2>Changes since the previous bundle</h2><ul>{items}</ul></section>'


def _control(row: dict[str, Any]) -> str:
    checks = _table(["check", "source", "result", "evaluated", "failed", "waived"], [
        [f"<code>{escape(c['id'])}</code>", escape(c["source"]), _status(c["status"]), str(c["evaluated"]),
         str(c["failed"]), str(c["waived"])] for c in row["checks"]], "No automated check maps to this control.")
    shown = [r for r in row["resources"] if r["status"] != "pass"] + \
        [r for r in row["resources"] if r["status"] == "pass"][:RESOURCE_ROWS]
    resources = _table(["resource", "stack", "result", "failed checks", "waived checks", "passed checks"], [
        [f"<code>{escape(r['urn'])}</code>", escape(r["stack"]), _status(r["status"]),
         escape(", ".join(r["fail"])), escape(", ".join(r["waived"])), str(len(r["pass"]))] for r in shown],
        "No resource was evaluated for this control.")
    more = len(row["resources"]) - len(shown)
    note = f"<p>… and {more} more passing resources (control-matrix.json lists all).</p>" if more > 0 else ""
    evidence = f"<p>Manual evidence: {escape(row['evidence'])}</p>" if row["evidence"] else ""
    return (f'<details id="{escape(row["control"])}" data-status="{escape(row["status"])}">'
            f"<summary>{_status(row['status'])} <strong>{escape(row['control'])}</strong> — {escape(row['title'])}"
            f"</summary><p>{escape(row['reason'])}</p>{evidence}<h4>Checks</h4>{checks}"
            f"<h4>Resources evaluated ({len(row['resources'])})</h4>{resources}{note}</details>")


def render(rows: list[dict[str, Any]], scope: dict[str, Any], gate: dict[str, Any], generated: str,
           provenance: dict[str, Any], waivers: list[dict[str, Any]], scans: list[dict[str, Any]],
           diff: list[str] | None = None) -> str:
    label = scope["evidenceLabel"]
    summary_rows = []
    for framework in sorted({row["framework"] for row in rows}):
        counts = Counter(row["status"] for row in rows if row["framework"] == framework)
        summary_rows.append([escape(framework)] + [str(counts.get(s, 0)) for s in STATUSES])
    ordered = sorted(rows, key=lambda r: (STATUS_ORDER[r["status"]], r["framework"], r["control"]))
    stacks = [[escape(s["stack"]), escape(str(s.get("zone"))),
               f"<span class='label {escape(s['status'])}'>{escape(s['status'].upper())}</span>", str(s["resources"])]
              for s in scope["stacks"]]
    meaning = ("This evidence describes <strong>planned</strong> infrastructure (synthesized offline); nothing in "
               "it proves a deployment." if label == "planned" else
               "This evidence was read from deployed state (pulumi stack export)." if label == "deployed" else
               "This evidence mixes planned and deployed stacks; see the label of each stack.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medplat compliance evidence</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style></head>
<body>
<h1>medplat compliance evidence <span class="label {escape(label)}">{escape(label.upper())}</span></h1>
<p>Generated {escape(generated)}. Gate result: {_status(gate['result'])} —
{gate['mandatoryFailures']} mandatory violation(s), {gate['waived']} waived finding(s). {meaning}
A control PASSES only when at least one automated check evaluated at least one in-scope resource and all
passed; NOT-EVALUATED means checks exist but evaluated nothing (or required evidence such as a vulnerability
scan is missing); NOT-COVERED means no automated check maps to it; MANUAL controls need documents.</p>
{_provenance(provenance)}
<h2>Scope</h2>
{_table(["stack", "zone", "evidence", "resources"], stacks, "")}
{_dataflows(scope)}
{_waivers(waivers)}
{_scans(scans)}
{_diff(diff)}
<h2>Summary per regulation</h2>
{_table(["framework", *STATUSES], summary_rows, "")}
<h2>Controls (failing and not evaluated first)</h2>
{''.join(_control(row) for row in ordered)}
</body></html>
"""
