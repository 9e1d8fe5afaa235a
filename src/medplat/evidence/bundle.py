"""Evidence bundles: export (folder or zip), verify, diff.

A bundle holds scope, inventories, the control matrix, the policy/checkov results,
waivers, SBOMs, OSCAL assessment results and an HTML report; `manifest.json` records the
SHA-256 of every file, tool versions, git commit and stacks, and `manifest.intoto.json` is a
DSSE envelope over an in-toto Statement v1 whose subjects are all of those files.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from medplat import __version__
from medplat.evidence import html_report, matrix, oscal, sbom, signing
from medplat.evidence.clock import bundle_time, iso
from medplat.reports import GateResult, report_files

ENVELOPE = "manifest.intoto.json"
MANIFEST = "manifest.json"
TOOLS = ("pulumi", "pulumi-policy", "pulumi-aws", "pulumi-openstack", "pulumi-kubernetes", "pulumi-tls",
         "cyclonedx-python-lib", "cyclonedx-bom", "compliance-trestle", "securesystemslib")


class BundleError(Exception):
    pass


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _git_commit(root: Path) -> str:
    completed = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return completed.stdout.strip() if completed.returncode == 0 else "unknown"


def _versions(checkov_version: str | None) -> dict[str, str]:
    versions = {"medplat": __version__}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["checkov"] = checkov_version or "not run"
    return dict(sorted(versions.items()))


def label_of(inventories: list[dict[str, Any]]) -> str:
    statuses = {inv["status"] for inv in inventories}
    return statuses.pop() if len(statuses) == 1 else "mixed"


def scope(inventories: list[dict[str, Any]]) -> dict[str, Any]:
    flows = []
    for inv in inventories:
        for resource in inv["resources"]:
            notes = (resource["inputs"].get("metadata") or {}).get("annotations") or {} \
                if resource["type"] == "kubernetes:apps/v1:Deployment" else {}
            if "medplat.io/workload" not in notes:
                continue
            for peer in filter(None, notes.get("medplat.io/egress", "").split(",")):
                flows.append({"stack": inv["stack"], "from": notes["medplat.io/workload"], "to": peer,
                              "dataClasses": sorted(filter(None, notes.get("medplat.io/writes", "").split(",")))})
    custom = [r for inv in inventories for r in inv["resources"] if r["custom"]]
    return {
        "sitePolicies": _site_policies(inventories),
        "egressAddresses": _egress_addresses(inventories),
        "evidenceLabel": label_of(inventories),
        "stacks": [{"stack": inv["stack"], "zone": inv.get("zone"), "status": inv["status"], "source": inv["source"],
                    "resources": len(inv["resources"]),
                    "regions": sorted({r["region"] for r in inv["resources"] if r.get("region")})}
                   for inv in inventories],
        "sites": sorted({r["labels"].get("medplat:site") for r in custom if r["labels"].get("medplat:site")}),
        "zones": sorted({r["labels"].get("medplat:zone") for r in custom if r["labels"].get("medplat:zone")}),
        "regions": sorted({r["region"] for r in custom if r.get("region")}),
        "dataClasses": sorted({r["labels"].get("medplat:data-class") for r in custom
                               if r["labels"].get("medplat:data-class")}),
        "dataFlows": sorted(flows, key=lambda f: (f["stack"], f["from"], f["to"])),
    }


def _site_policies(inventories) -> list[dict[str, Any]]:
    """Each edge site's egress policy, as the site-policy ConfigMap the EU zone pushes carries it."""
    found = []
    for inv in inventories:
        for resource in inv["resources"]:
            data = resource["inputs"].get("data") if resource["type"] == "kubernetes:core/v1:ConfigMap" else None
            if not isinstance(data, dict) or "site-policy.json" not in data:
                continue
            try:
                policy = json.loads(data["site-policy.json"])
            except (TypeError, ValueError):
                continue
            found.append({"stack": inv["stack"], "site": policy.get("site"),
                          "egressDataClasses": sorted(policy.get("egressDataClasses") or []),
                          "refusedDataClasses": sorted(policy.get("refusedDataClasses") or []),
                          "cloudEndpoint": data.get("cloud-endpoint")})
    return sorted(found, key=lambda p: (p["stack"], str(p["site"])))


def _egress_addresses(inventories) -> list[dict[str, Any]]:
    """Addresses outside the cluster each workload's NetworkPolicy lets it reach."""
    found = []
    for inv in inventories:
        for resource in inv["resources"]:
            if resource["type"] != "kubernetes:networking.k8s.io/v1:NetworkPolicy":
                continue
            spec = resource["inputs"].get("spec") or {}
            cidrs = sorted({(peer.get("ipBlock") or {}).get("cidr") for rule in spec.get("egress") or []
                            for peer in rule.get("to") or [] if (peer.get("ipBlock") or {}).get("cidr")})
            if cidrs:
                name = ((resource["inputs"].get("metadata") or {}).get("name") or resource["name"])
                found.append({"stack": inv["stack"], "workload": name.removesuffix("-allow"), "cidrs": cidrs})
    return sorted(found, key=lambda e: (e["stack"], e["workload"]))


def evidence_digest(files: dict[str, str]) -> str:
    """SHA-256 over every evidence file's name and SHA-256 (the report itself excluded)."""
    lines = "".join(f"{hashlib.sha256(files[name].encode()).hexdigest()}  {name}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def build_files(inventories: list[dict[str, Any]], result: GateResult, project_root: Path,
                signer_keyid: str | None = None, previous: Path | None = None,
                scans: list | None = None) -> dict[str, bytes]:
    """Every bundle file except the manifest and its signature."""
    from medplat.evidence import vulns
    from medplat.workloads import catalog, image_lock, placeholder_digests

    moment = bundle_time()
    label = label_of(inventories)
    bundle_scope = scope(inventories)
    files: dict[str, str] = {"scope.json": _dump(bundle_scope)}
    for inv in inventories:
        files[f"inventory/{inv['stack']}.json"] = _dump(inv)
    # Every image some resource runs (Deployments, CronJobs, Jobs, ECS tasks) has its SBOM here.
    running = {name: _stacks_running(spec, inventories) for name, spec in catalog().items()}
    specs = [spec for name, spec in catalog().items() if running[name]]
    images = {spec.name: spec.pinned_image(image_lock()) for spec in specs}
    files["sbom/platform.cdx.json"] = sbom.platform_sbom(specs, images, moment)
    for spec in specs:
        lock = project_root / "workloads" / spec.name / "requirements.lock"
        files[f"sbom/workloads/{spec.name}.cdx.json"] = sbom.workload_sbom(
            spec, images[spec.name], lock, spec.name in placeholder_digests(), moment)
    # Vulnerability scans are matched against the SBOMs just written, then judged like any check.
    workload_stacks = {spec.name: running[spec.name] for spec in specs}
    sboms = {spec.name: json.loads(files[f"sbom/workloads/{spec.name}.cdx.json"]) for spec in specs}
    result, scan_summaries = vulns.assess(result, scans or [], sboms, workload_stacks)
    for number, scan in enumerate(scans or []):
        files[f"vulnerabilities/{number:02d}-{scan.tool}.json"] = scan.raw
    files["vulnerabilities/summary.json"] = _dump({"scans": scan_summaries})
    rows = matrix.control_matrix(inventories, result)
    files.update({
        "control-matrix.json": _dump({"evidenceLabel": label, "controls": rows}),
        "control-matrix.csv": matrix.matrix_csv(rows),
        **{f"policy/{name}": text for name, text in report_files(result).items()},
        "waivers.json": _dump({"waivers": result.waivers}),
        "oscal/assessment-results.json": oscal.assessment_results(rows, result.stacks, moment, label),
    })
    template = (resources.files("medplat.compliance") / "templates" / "manual-evidence.md").read_text("utf-8")
    sites = ", ".join(bundle_scope["sites"])
    for row in rows:
        if row["status"] == "manual":
            files[f"manual-evidence/{row['control']}.md"] = template.format(
                control=row["control"], title=row["title"], framework=row["framework"],
                evidence=row["evidence"], sites=sites)
    provenance = {"gitCommit": _git_commit(project_root), "signerKeyId": signer_keyid,
                  "tools": _versions((result.checkov or {}).get("version")), "evidenceDigest": evidence_digest(files)}
    changes = diff_files(read(previous), files) if previous is not None else None
    files["report.html"] = html_report.render(rows, bundle_scope, result.summary(), iso(moment), provenance,
                                              result.waivers, scan_summaries, changes)
    return {name: text.encode("utf-8") for name, text in files.items()}


def _stacks_running(spec, inventories) -> list[str]:
    """Stacks with a resource that runs the spec's image (pinned by digest), in inventory order."""
    from medplat.checkov import image_users

    found = {stack for stack, _urn, _type in image_users([(inv, None, []) for inv in inventories],
                                                          spec.image.split("@", 1)[0])}
    return [inv["stack"] for inv in inventories if inv["stack"] in found]


def seal(files: dict[str, bytes], inventories, result: GateResult, key, project_root: Path) -> dict[str, bytes]:
    """Add manifest.json and the signed in-toto statement."""
    moment = bundle_time()
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    manifest = {
        "schema": "medplat.evidence-manifest/v1",
        "createdAt": iso(moment),
        "evidenceLabel": label_of(inventories),
        "stacks": [s["stack"] for s in result.stacks],
        "gate": result.summary(),
        "gitCommit": _git_commit(project_root),
        "tools": _versions((result.checkov or {}).get("version")),
        "signerKeyId": signing.key_id(key),
        "evidenceDigest": evidence_digest({n: d.decode("utf-8") for n, d in files.items() if n != "report.html"}),
        "files": digests,
    }
    sealed = dict(files)
    sealed[MANIFEST] = _dump(manifest).encode()
    subjects = {name: hashlib.sha256(data).hexdigest() for name, data in sealed.items()}
    predicate = {"manifest": MANIFEST, "evidenceLabel": manifest["evidenceLabel"], "stacks": manifest["stacks"],
                 "createdAt": manifest["createdAt"], "gitCommit": manifest["gitCommit"]}
    sealed[ENVELOPE] = signing.sign(signing.statement(subjects, predicate), key).encode()
    return sealed


def write(files: dict[str, bytes], target: Path) -> None:
    """A folder, or a reproducible zip when the name ends in .zip; never half-written."""
    moment = bundle_time()
    if target.exists() and target.is_dir() and any(target.iterdir()):
        raise BundleError(f"{target}: exists and is not empty")
    partial = target.with_name(target.name + ".partial")
    if target.suffix == ".zip":
        stamp = max(moment.timetuple()[:6], (1980, 1, 1, 0, 0, 0))
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(files):
                info = zipfile.ZipInfo(name, date_time=stamp)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, files[name])
        partial.replace(target)
        return
    import shutil
    if partial.exists():
        shutil.rmtree(partial)
    for name, data in files.items():
        path = partial / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if target.exists():
        target.rmdir()
    partial.replace(target)


def read(bundle: Path) -> dict[str, bytes]:
    if not bundle.exists():
        raise BundleError(f"{bundle}: no such bundle")
    if bundle.is_file():
        try:
            with zipfile.ZipFile(bundle) as archive:
                return {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}
        except zipfile.BadZipFile:
            raise BundleError(f"{bundle}: not a zip file or bundle folder") from None
    return {str(p.relative_to(bundle)): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()}


@dataclass
class Verification:
    ok: bool
    problems: list[str]
    files: int


def verify(bundle: Path, public_key_path: Path) -> Verification:
    files = read(bundle)
    key = signing.load_public(public_key_path)
    if ENVELOPE not in files:
        return Verification(False, [f"removed: {ENVELOPE} (the signature)"], len(files))
    try:
        statement = signing.verify(files[ENVELOPE].decode(), key)
    except signing.SigningError as exc:
        return Verification(False, [f"signature: {exc}"], len(files))
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    problems = []
    for name in sorted(set(files) - {ENVELOPE}):
        if name not in subjects:
            problems.append(f"added: {name}")
        elif hashlib.sha256(files[name]).hexdigest() != subjects[name]:
            problems.append(f"modified: {name}")
    for name in sorted(set(subjects) - set(files)):
        problems.append(f"removed: {name}")
    return Verification(not problems, problems, len(files))


def diff(old: Path, new: Path) -> list[str]:
    """Controls and resources whose status changed between two bundles."""
    return diff_files(read(old), read(new))


def diff_files(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    lines = []

    def controls(files):
        document = json.loads(files.get("control-matrix.json", b'{"controls": []}'))
        return {row["control"]: row["status"] for row in document["controls"]}

    old_controls, new_controls = controls(before), controls(after)
    for control in sorted(set(old_controls) | set(new_controls)):
        a, b = old_controls.get(control, "absent"), new_controls.get(control, "absent")
        if a != b:
            lines.append(f"control {control}: {a} -> {b}")

    def resources(files):
        found = {}
        for name, data in files.items():
            if name.startswith("inventory/") and name.endswith(".json"):
                for resource in json.loads(data)["resources"]:
                    body = json.dumps({k: resource[k] for k in ("type", "inputs", "labels")}, sort_keys=True)
                    found[resource["urn"]] = hashlib.sha256(body.encode()).hexdigest()
        return found

    old_resources, new_resources = resources(before), resources(after)
    for urn in sorted(set(old_resources) | set(new_resources)):
        if urn not in new_resources:
            lines.append(f"resource removed: {urn}")
        elif urn not in old_resources:
            lines.append(f"resource added: {urn}")
        elif old_resources[urn] != new_resources[urn]:
            lines.append(f"resource changed: {urn}")

    def findings(files):
        report = json.loads(files.get("policy/report.json", b'{"findings": []}'))
        return {(f["policy"], f["urn"] or f["name"]): f["status"] for f in report["findings"]}

    old_findings, new_findings = findings(before), findings(after)
    for key in sorted(set(old_findings) | set(new_findings)):
        a, b = old_findings.get(key, "pass"), new_findings.get(key, "pass")
        if a != b:
            lines.append(f"check {key[0]} on {key[1]}: {a} -> {b}")
    return lines


