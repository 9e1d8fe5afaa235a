"""A self-contained HTML report: no scripts, no external assets, failing and manual first."""
from __future__ import annotations

from collections import Counter
from html import escape
from typing import Any

from medplat.evidence.matrix import STATUS_ORDER

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1b1f24;max-width:72rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}
.label{display:inline-block;padding:.15rem .5rem;border-radius:.3rem;font-weight:600}
.planned{background:#fff3cd}.deployed{background:#d1e7dd}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left}
.fail{color:#b42318;font-weight:700}.not-covered{color:#b54708;font-weight:700}.manual{color:#175cd3}
.waived{color:#6941c6}.pass{color:#067647}
details{border:1px solid #d0d7de;border-radius:.3rem;margin:.4rem 0;padding:.3rem .6rem}
summary{cursor:pointer}code{font-size:12px}
"""


def _status(status: str) -> str:
    return f'<span class="{escape(status)}">{escape(status.upper())}</span>'


def render(rows: list[dict[str, Any]], scope: dict[str, Any], gate: dict[str, Any], generated: str) -> str:
    label = scope["evidenceLabel"]
    frameworks = sorted({row["framework"] for row in rows})
    summary_rows = []
    for framework in frameworks:
        counts = Counter(row["status"] for row in rows if row["framework"] == framework)
        summary_rows.append(
            f"<tr><td>{escape(framework)}</td>" + "".join(
                f"<td>{counts.get(s, 0)}</td>" for s in ("fail", "not-covered", "manual", "waived", "pass")) + "</tr>")
    ordered = sorted(rows, key=lambda r: (STATUS_ORDER[r["status"]], r["framework"], r["control"]))
    details = []
    for row in ordered:
        checks = "".join(
            f"<li>{_status(c['status'])} <code>{escape(c['id'])}</code> ({escape(c['source'])}, "
            f"{c['findings']} finding(s))</li>" for c in row["checks"] if c["source"] != "checkov")
        checkov = [c for c in row["checks"] if c["source"] == "checkov"]
        checkov_line = (f"<li>checkov: {len(checkov)} check(s), "
                        f"{len([c for c in checkov if c['status'] == 'fail'])} failing, "
                        f"{len([c for c in checkov if c['status'] == 'waived'])} waived</li>") if checkov else ""
        resources = "".join(f"<li><code>{escape(r['urn'])}</code></li>" for r in row["resources"][:50])
        more = f"<li>… and {len(row['resources']) - 50} more (see control-matrix.json)</li>" \
            if len(row["resources"]) > 50 else ""
        evidence = f"<p>Manual evidence: {escape(row['evidence'])}</p>" if row["evidence"] else ""
        details.append(
            f'<details id="{escape(row["control"])}" data-status="{escape(row["status"])}">'
            f"<summary>{_status(row['status'])} <strong>{escape(row['control'])}</strong> — {escape(row['title'])}"
            f"</summary>{evidence}<h4>Checks</h4><ul>{checks}{checkov_line or ''}</ul>"
            f"<h4>Resources ({len(row['resources'])})</h4><ul>{resources}{more}</ul></details>")
    stacks = "".join(
        f"<tr><td>{escape(s['stack'])}</td><td>{escape(str(s.get('zone')))}</td>"
        f"<td><span class='label {escape(s['status'])}'>{escape(s['status'].upper())}</span></td>"
        f"<td>{s['resources']}</td></tr>" for s in scope["stacks"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medplat compliance evidence</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style></head>
<body>
<h1>medplat compliance evidence <span class="label {escape(label)}">{escape(label.upper())}</span></h1>
<p>Generated {escape(generated)}. Gate result: {_status(gate['result'])} —
{gate['mandatoryFailures']} mandatory violation(s), {gate['waived']} waived finding(s).
{'This evidence describes <strong>planned</strong> infrastructure (synthesized offline); nothing in it proves a deployment.' if label == 'planned' else 'This evidence was read from deployed state (pulumi stack export).'}</p>
<h2>Scope</h2>
<table><tr><th>stack</th><th>zone</th><th>evidence</th><th>resources</th></tr>{stacks}</table>
<h2>Summary per regulation</h2>
<table><tr><th>framework</th><th>fail</th><th>not covered</th><th>manual</th><th>waived</th><th>pass</th></tr>
{''.join(summary_rows)}</table>
<h2>Controls (failing and manual first)</h2>
{''.join(details)}
</body></html>
"""
