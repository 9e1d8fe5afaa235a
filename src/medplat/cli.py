"""The `medplat` command line."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from medplat import __version__
from medplat.config import MAX_WAIVER_DAYS, ConfigError
from medplat.inventory import InventoryError, from_stack_export
from medplat.paths import StackNotFound, default_stacks_dir, project_root
from medplat.errors import SynthError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="medplat: compliant hybrid edge + cloud platform for connected medical devices.")
console = Console()
errors = Console(stderr=True)
USER_ERRORS = (ConfigError, StackNotFound, SynthError, InventoryError)


def fail(message: str, code: int = 2) -> None:
    errors.print(f"medplat: error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        console.print(f"medplat {__version__}")
        raise typer.Exit(0)


def _select(stack: Optional[str], all_stacks: bool, names: list[str]) -> list[str]:
    if all_stacks == bool(stack):
        fail("name one STACK or pass --all")
    return names if all_stacks else [stack]  # type: ignore[list-item]


@app.command()
def synth(
    stack: Optional[str] = typer.Argument(None, help="Stack name, e.g. edge-dresden (stacks/Pulumi.<stack>.yaml)."),
    all_stacks: bool = typer.Option(False, "--all", help="Synthesize every stack in the stacks folder."),
    out: Path = typer.Option(Path("build/inventory"), "--out", "-o", help="Folder for <stack>.inventory.json."),
    stacks_dir: Optional[Path] = typer.Option(None, "--stacks-dir", help="Default: ./stacks of the project."),
    from_export: Optional[Path] = typer.Option(None, "--from-export",
                                               help="Read a real `pulumi stack export` file instead."),
) -> None:
    """Write the inventory of the planned platform (offline; nothing is deployed)."""
    from medplat.stackset import StackSet
    from medplat.workloads import placeholder_digests

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{out}: cannot create output folder: {exc.strerror}")
    if from_export is not None:
        if stack or all_stacks:
            fail("--from-export takes no STACK or --all: the export names its stack")
        try:
            inventory = from_stack_export(from_export)
        except USER_ERRORS as exc:
            fail(str(exc))
        _write(out, inventory.stack or from_export.stem, inventory.dumps())
        _summary([inventory.to_json()])
        return

    stackset = StackSet(stacks_dir or default_stacks_dir())
    try:
        chosen = _select(stack, all_stacks, stackset.names())
        documents = []
        with console.status("synthesizing under the Pulumi mock runtime…"):
            for name in chosen:
                result = stackset.synth(name)
                _write(out, name, result.inventory.dumps())
                documents.append(result.inventory.to_json())
    except USER_ERRORS as exc:
        fail(str(exc))
    _summary(documents)
    placeholders = sorted(placeholder_digests())
    if placeholders:
        console.print(f"[yellow]note:[/] images not yet published (placeholder digests in "
                      f"workloads/images.lock.yaml): {', '.join(placeholders)}", soft_wrap=True)
    console.print(f"inventories written to {out}/", soft_wrap=True)


def _write(out: Path, stack: str, text: str) -> None:
    _atomic_write(out / f"{stack}.inventory.json", text)


def _summary(documents: list[dict]) -> None:
    statuses = {d["status"] for d in documents}
    banner = " and ".join(sorted(s.upper() for s in statuses))
    table = Table(title=f"medplat inventory — {banner}", title_justify="left")
    for column in ("stack", "zone", "region", "resources", "by data class"):
        table.add_column(column)
    for d in documents:
        summary = d["summary"]
        classes = ", ".join(f"{k} {v}" for k, v in summary["byDataClass"].items())
        table.add_row(d["stack"], str(d["zone"]), ", ".join(summary["regions"]) or "-",
                      str(summary["resources"]), classes)
    console.print(table)
    for d in documents:
        if d["status"] == "planned":
            console.print("[bold]PLANNED[/]: synthesized offline under the Pulumi mock runtime — "
                          "nothing was deployed.", soft_wrap=True)
            break


policy_app = typer.Typer(no_args_is_help=True, help="The CI policy gate (CrossGuard pack, offline, plus checkov).")
app.add_typer(policy_app, name="policy")


@policy_app.command("check")
def policy_check(
    stack: Optional[str] = typer.Argument(None, help="Stack to synthesize and check."),
    all_stacks: bool = typer.Option(False, "--all", help="Check every stack (and flows between them)."),
    inventory: Optional[list[Path]] = typer.Option(None, "--inventory", "-i",
        help="Check a medplat inventory, `pulumi stack export` or `pulumi preview --json` file instead."),
    stacks_dir: Optional[Path] = typer.Option(None, "--stacks-dir"),
    out: Path = typer.Option(Path("build/policy"), "--out", "-o", help="Folder for report.json/.sarif/.xml."),
    checkov: bool = typer.Option(True, "--checkov/--no-checkov", help="Also run checkov (isolated tool)."),
    today: Optional[str] = typer.Option(None, "--today", help="Date for waiver expiry (YYYY-MM-DD).",
                                        hidden=True),
) -> None:
    """Run every policy; exit 1 on any mandatory violation that is not validly waived."""
    from medplat import reports

    entries, result = _run_gate(stack, all_stacks, inventory, stacks_dir, out, checkov, _day(today))
    out.mkdir(parents=True, exist_ok=True)
    for name, text in reports.report_files(result).items():
        _atomic_write(out / name, text)
    _gate_table(result)
    console.print(f"reports: {out}/report.json, report.sarif, report.junit.xml", soft_wrap=True)
    raise typer.Exit(result.exit_code)


def _day(today: Optional[str]):
    import datetime

    try:
        return datetime.date.fromisoformat(today) if today else datetime.date.today()
    except ValueError:
        fail(f"--today: {today!r} is not a YYYY-MM-DD date")


def _run_gate(stack, all_stacks, inventory, stacks_dir, out, checkov, day):
    """Synthesize (or read) the stacks, run the pack and checkov; one-line errors."""
    from medplat import gate
    from medplat.stackset import StackSet

    try:
        if inventory:
            if stack or all_stacks:
                fail("--inventory takes no STACK or --all")
            entries = [gate.from_file(path) for path in inventory]
        else:
            stackset = StackSet(stacks_dir or default_stacks_dir())
            entries = gate.synthesized(stackset, _select(stack, all_stacks, stackset.names()))
        checkov_findings, checkov_summary = [], {}
        if checkov:
            from medplat import checkov as checkov_runner
            checkov_findings, checkov_summary = checkov_runner.run_for(entries, out / "checkov")
        return entries, gate.check_inventories(entries, day, checkov_findings, checkov_summary)
    except USER_ERRORS as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or 'output'}: {exc.strerror}")


@policy_app.command("checkov-config")
def policy_checkov_config(
    stack: str = typer.Argument(..., help="Stack whose waivers checkov should honour."),
    out: Path = typer.Option(Path("build/checkov-config"), "--out", "-o",
                             help="Folder for .checkov.yaml and the inputs it names."),
    stacks_dir: Optional[Path] = typer.Option(None, "--stacks-dir"),
    today: Optional[str] = typer.Option(None, "--today", help="Date for waiver expiry (YYYY-MM-DD).", hidden=True),
) -> None:
    """Write checkov's own configuration from the stack's medplat:waivers (expired ones left out):
    run `checkov --config-file .checkov.yaml` in the folder."""
    from medplat import checkov_config
    from medplat.stackset import StackSet

    day = _day(today)
    try:
        result = StackSet(stacks_dir or default_stacks_dir()).synth(stack)
        outcome = checkov_config.write(result.inventory.to_json(), list(result.config.waivers), out, day)
    except USER_ERRORS as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or out}: {exc.strerror}")
    for waiver, target in outcome.applied:
        console.print(f"suppressed {waiver.policy} on {target} (approved by {waiver.approver}, expires "
                      f"{waiver.expires.isoformat()})", markup=False, soft_wrap=True)
    for waiver in outcome.expired:
        why = (f"runs until {waiver.expires.isoformat()}, more than {MAX_WAIVER_DAYS} days ahead"
               if waiver.expires >= day else f"expired on {waiver.expires.isoformat()}")
        errors.print(f"medplat: not generated: waiver of {waiver.policy} for {waiver.resource} {why}",
                     markup=False, highlight=False, soft_wrap=True)
    for waiver in outcome.unmatched:
        errors.print(f"medplat: waiver of {waiver.policy} for {waiver.resource} names no resource checkov scans",
                     markup=False, highlight=False, soft_wrap=True)
    if outcome.not_checkov:
        console.print(f"{len(outcome.not_checkov)} medplat policy waiver(s) are not checkov checks: honoured by "
                      "`medplat policy check` and the policy pack", soft_wrap=True)
    console.print(f"checkov config: {out / checkov_config.CONFIG}; run `checkov --config-file "
                  f"{checkov_config.CONFIG}` in {out}", soft_wrap=True)


@policy_app.command("pack")
def policy_pack(out: Path = typer.Argument(..., help="Folder for the publishable pack (must be new or empty).")) -> None:
    """Build a self-contained policy pack folder for `pulumi policy publish` (medplat inside as a wheel)."""
    from medplat import packbuild

    root = project_root()
    if root is None:
        fail("run from a medplat checkout: the pack is built from its sources")
    try:
        with console.status("building the medplat wheel into the pack…"):
            requirements = packbuild.build(root, out)
    except USER_ERRORS as exc:
        fail(str(exc))
    console.print(f"policy pack: {out} ({requirements.name} names the bundled wheel); "
                  f"publish with `pulumi policy publish {out}`", soft_wrap=True)


evidence_app = typer.Typer(no_args_is_help=True, help="Signed compliance evidence bundles.")
app.add_typer(evidence_app, name="evidence")


@evidence_app.command("keygen")
def evidence_keygen(path: Path = typer.Argument(Path("medplat-evidence.key"), help="Private key file to write.")) -> None:
    """Generate an Ed25519 signing key (PEM) and its public key (<path>.pub)."""
    from medplat.evidence import signing

    try:
        public = signing.keygen(path)
    except signing.SigningError as exc:
        fail(str(exc))
    console.print(f"private key: {path} (keep it secret)\npublic key:  {public}", soft_wrap=True)


@evidence_app.command("export")
def evidence_export(
    stack: Optional[str] = typer.Argument(None, help="Stack to export."),
    all_stacks: bool = typer.Option(False, "--all", help="Export every stack."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle folder, or a .zip file."),
    key: Optional[Path] = typer.Option(None, "--key", help="Ed25519 private key (PEM); or $MEDPLAT_EVIDENCE_KEY."),
    inventory: Optional[list[Path]] = typer.Option(None, "--inventory", "-i",
        help="Use real `pulumi stack export` (deployed) or preview/inventory files instead of synthesizing."),
    stacks_dir: Optional[Path] = typer.Option(None, "--stacks-dir"),
    checkov: bool = typer.Option(True, "--checkov/--no-checkov"),
    scan: Optional[list[Path]] = typer.Option(None, "--scan", help="A vulnerability scan result to import "
        "(pip-audit, OSV-Scanner, Grype or Trivy JSON, CycloneDX VEX); repeatable."),
    previous: Optional[Path] = typer.Option(None, "--previous", help="The previous bundle, for the report's diff."),
    archive_to: Optional[str] = typer.Option(None, "--archive", help="Also archive the bundle to swift://<container> "
        "(versioned; credentials from OS_AUTH_URL, OS_APPLICATION_CREDENTIAL_ID, OS_APPLICATION_CREDENTIAL_SECRET)."),
    today: Optional[str] = typer.Option(None, "--today", hidden=True),
) -> None:
    """Write a signed evidence bundle; reproducible with SOURCE_DATE_EPOCH."""
    import tempfile

    from medplat.evidence import bundle, signing, vulns

    try:
        private = signing.load_private(key)
        scans = [vulns.load(path) for path in scan or []]
        if previous is not None:
            bundle.read(previous)
    except (signing.SigningError, vulns.ScanError, bundle.BundleError) as exc:
        fail(str(exc))
    if output.exists() and (output.is_file() or any(output.iterdir())):
        fail(f"{output}: already exists; choose a new bundle path")
    archive = _evidence_archive(archive_to) if archive_to else None
    with tempfile.TemporaryDirectory() as scratch:
        entries, result = _run_gate(stack, all_stacks, inventory, stacks_dir, Path(scratch), checkov, _day(today))
        inventories = [inv for inv, _, _ in entries]
        root = project_root() or Path.cwd()
        try:
            with console.status("building evidence (SBOMs, OSCAL, report)…"):
                files = bundle.build_files(inventories, result, root, signing.key_id(private), previous, scans)
                sealed = bundle.seal(files, inventories, result, private, root)
                bundle.write(sealed, output)
        except (bundle.BundleError, signing.SigningError) as exc:
            fail(str(exc))
    label = bundle.label_of(inventories).upper()
    console.print(f"{label} evidence bundle: {output} ({len(sealed)} files, signed); gate "
                  f"{result.summary()['result'].upper()}", soft_wrap=True)
    report = output / "report.html" if output.suffix != ".zip" else f"{output}!/report.html"
    console.print(f"HTML report: {report}", soft_wrap=True)
    if archive is not None:
        from medplat.swift_archive import ArchiveError, archive_evidence_bundle

        try:
            versions = archive_evidence_bundle(archive, output)
        except (OSError, ArchiveError) as exc:
            fail(f"{output} was written but not archived: {exc}")
        console.print(f"archived {len(versions)} object(s) under {archive_to}/evidence/{output.name}",
                      markup=False, soft_wrap=True)


def _evidence_archive(target: str):
    """The versioned container, checked before the (slow) bundle is built."""
    from medplat.swift_archive import ArchiveError, SwiftArchive, parse_target

    try:
        archive = SwiftArchive.from_environment(parse_target(target))
        archive.ensure_versioned()
    except ArchiveError as exc:
        fail(str(exc))
    return archive


@evidence_app.command("verify")
def evidence_verify(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE"),
    public_key: Path = typer.Option(..., "--public-key", help="Ed25519 public key (PEM)."),
) -> None:
    """Exit 0 only if the signature and every file's hash match."""
    from medplat.evidence import bundle, signing

    try:
        outcome = bundle.verify(bundle_path, public_key)
    except (bundle.BundleError, signing.SigningError) as exc:
        fail(str(exc))
    if outcome.ok:
        console.print(f"verified: {outcome.files} files, signature and all SHA-256 digests match", soft_wrap=True)
        return
    for problem in outcome.problems:
        errors.print(f"medplat: verify: {problem}", markup=False, soft_wrap=True)
    raise typer.Exit(1)


@evidence_app.command("diff")
def evidence_diff(old: Path = typer.Argument(...), new: Path = typer.Argument(...)) -> None:
    """Controls, checks and resources whose status changed between two bundles."""
    from medplat.evidence import bundle

    try:
        lines = bundle.diff(old, new)
    except bundle.BundleError as exc:
        fail(str(exc))
    for line in lines:
        console.print(line, markup=False, soft_wrap=True)
    if not lines:
        console.print("no changes in controls, checks or resources")


@evidence_app.command("coverage")
def evidence_coverage(stacks_dir: Optional[Path] = typer.Option(None, "--stacks-dir"),
                      checkov: bool = typer.Option(True, "--checkov/--no-checkov"),
                      today: Optional[str] = typer.Option(None, "--today", hidden=True)) -> None:
    """Print the coverage table (markdown) for the required controls: the evidence bundle's verdicts."""
    import tempfile

    from medplat.evidence import matrix

    with tempfile.TemporaryDirectory() as scratch:
        entries, result = _run_gate(None, True, None, stacks_dir, Path(scratch), checkov, _day(today))
    rows = matrix.control_matrix([inv for inv, _, _ in entries], result)
    print(matrix.coverage_markdown(matrix.coverage(rows)), end="")


tools_app = typer.Typer(no_args_is_help=True, help="Isolated tools medplat runs as subprocesses.")
app.add_typer(tools_app, name="tools")


@tools_app.command("install")
def tools_install(tool: str = typer.Argument(..., help="Tool to install: checkov.")) -> None:
    """Install a tool into its own virtual environment (never into medplat's)."""
    from medplat import checkov as checkov_runner

    if tool != "checkov":
        fail(f"unknown tool {tool!r}; known: checkov")
    with console.status(f"installing checkov {checkov_runner.CHECKOV_VERSION} into its own venv…"):
        path = checkov_runner.install()
    console.print(f"checkov {checkov_runner.CHECKOV_VERSION}: {path}", soft_wrap=True)


audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
app.add_typer(audit_app, name="audit")


def _key_text(value: str) -> str:
    path = Path(value)
    return path.read_text(encoding="utf-8").strip() if path.is_file() else value


@audit_app.command("verify")
def audit_verify(
    export: Path = typer.Argument(..., help="JSON lines from the audit log's GET /export (whole log or a slice)."),
    key: str = typer.Option(..., "--key", help="The log's verifier key (GET /verifier), or a file holding it."),
    witness_key: str | None = typer.Option(None, "--witness-key", help="The witness's cosignature key (or file)."),
    checkpoint: list[Path] = typer.Option([], "--checkpoint", help="A trusted signed checkpoint the log must "
                                          "reproduce, e.g. the last one the witness countersigned; repeatable."),
    origin: str | None = typer.Option(None, "--origin", help="Expected checkpoint origin."),
    require_cosigned: bool = typer.Option(False, "--require-cosigned", help="Fail unless a checkpoint is cosigned."),
    allow_unverified_tail: bool = typer.Option(False, "--allow-unverified-tail",
        help="Exit 0 even if entries after the last signed checkpoint could not be verified (still reported)."),
) -> None:
    """Verify an exported audit log offline against its signed checkpoints (exit 1 on tampering)."""
    from medplat.workloads.audit_log.note import NoteError, Verifier
    from medplat.workloads.audit_log.verify import verify_lines

    try:
        log_key = Verifier.from_text(_key_text(key))
        witness = Verifier.from_text(_key_text(witness_key)) if witness_key else None
        trusted = [path.read_text(encoding="utf-8") for path in checkpoint]
        with open(export, "rb") as handle:
            report = verify_lines(handle, log_key, witness_key=witness, trusted=trusted, origin=origin,
                                  require_cosigned=require_cosigned)
    except (OSError, NoteError, ValueError) as exc:
        fail(str(exc))
    for problem in report.problems:
        errors.print(f"medplat: TAMPERED: {problem}", markup=False, highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)
    tail = report.unverified
    verified_last = tail[0] - 1 if tail else report.last
    span = f"entries {report.first}..{verified_last}" if report.entries and verified_last >= report.first \
        else "no entries"
    console.print(f"audit log OK: {span}, {report.checkpoints} signed checkpoints reproduced, "
                  f"{report.cosignatures} cosigned by the witness", soft_wrap=True)
    if tail:
        errors.print(f"medplat: UNVERIFIED: entries {tail[0]}..{tail[1]} are not covered by a signed checkpoint; "
                     "their content is not proven", markup=False, highlight=False, soft_wrap=True)
        if not allow_unverified_tail:
            raise typer.Exit(1)


@audit_app.command("archive")
def audit_archive(
    export: Path = typer.Argument(..., help="JSON lines from the audit log's GET /export (with its checkpoints)."),
    key: str = typer.Option(..., "--key", help="The log's verifier key (GET /verifier), or a file holding it."),
    to: str = typer.Option(..., "--to", help="swift://<container>: created with object versioning if missing."),
    log_name: str = typer.Option("audit-log", "--log-name", help="Objects go to audit/<log-name>/<export file name>."),
    checkpoint: list[Path] = typer.Option([], "--checkpoint", help="A signed checkpoint (e.g. witness-cosigned) to "
                                          "verify against and archive beside the export; repeatable."),
) -> None:
    """Verify an audit export against its signed checkpoints, then archive it (and the given
    checkpoints) in a versioned Swift container; a tampered export is not archived (exit 1).
    Credentials: OS_AUTH_URL, OS_APPLICATION_CREDENTIAL_ID, OS_APPLICATION_CREDENTIAL_SECRET."""
    from medplat import swift_archive
    from medplat.workloads.audit_log.note import NoteError, Verifier
    from medplat.workloads.audit_log.verify import verify_lines

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", log_name):
        fail(f"--log-name {log_name!r}: letters, digits, '.', '_' and '-' only")
    try:
        container = swift_archive.parse_target(to)
        trusted = [path.read_text(encoding="utf-8") for path in checkpoint]
        with open(export, "rb") as handle:
            report = verify_lines(handle, Verifier.from_text(_key_text(key)), trusted=trusted)
    except (OSError, NoteError, ValueError, swift_archive.ArchiveError) as exc:
        fail(str(exc))
    if not report.ok:
        for problem in report.problems:
            errors.print(f"medplat: TAMPERED: {problem}", markup=False, highlight=False, soft_wrap=True)
        errors.print(f"medplat: {export} not archived: it does not verify", markup=False, soft_wrap=True)
        raise typer.Exit(1)
    try:
        archive = swift_archive.SwiftArchive.from_environment(container)
        archive.ensure_versioned()
        versions = {f"audit/{log_name}/{export.name}": swift_archive.archive_audit_export(archive, export, log_name)}
        for path in checkpoint:
            name = f"audit/{log_name}/checkpoints/{path.name}"
            versions[name] = archive.put(name, path.read_bytes(), "text/plain; charset=utf-8")
    except (OSError, swift_archive.ArchiveError) as exc:
        fail(str(exc))
    for name, version in versions.items():
        console.print(f"archived {to}/{name} version {version}", markup=False, soft_wrap=True)
    if report.unverified:
        errors.print(f"medplat: entries {report.unverified[0]}..{report.unverified[1]} are archived but not yet "
                     "covered by a signed checkpoint", markup=False, highlight=False, soft_wrap=True)


compliance_app = typer.Typer(no_args_is_help=True, help="Continuous compliance of deployed stacks.")
app.add_typer(compliance_app, name="compliance")


@compliance_app.command("run")
def compliance_run(
    exports: Optional[list[Path]] = typer.Argument(None, help="`pulumi stack export` or `pulumi preview --json` files."),
    out: Path = typer.Option(Path("build/compliance"), "--out", "-o", help="Folder kept across runs."),
    pulumi_stack: list[str] = typer.Option([], "--pulumi-stack", help="ORG/PROJECT/STACK to read from the Pulumi "
                                           "Cloud API instead of a file (repeatable)."),
    pulumi_api: str = typer.Option("https://api.pulumi.com", "--pulumi-api", help="The state backend's API."),
    pulumi_token_file: Optional[Path] = typer.Option(None, "--pulumi-token-file",
                                                     help="A token that can read those stacks (never on the command line)."),
    stacks_dir: Optional[Path] = typer.Option(None, "--stacks-dir", help="Where Pulumi.<stack>.yaml (waivers) live."),
    planned: Optional[Path] = typer.Option(None, "--planned", help="Folder of planned <stack>.inventory.json files "
                                           "to report drift against."),
    audit_url: Optional[str] = typer.Option(None, "--audit-url", envvar="MEDPLAT_COMPLIANCE_AUDIT_URL",
                                            help="Audit log to record the run's digest in (spooled while down)."),
    audit_token_file: Optional[Path] = typer.Option(None, "--audit-token-file", envvar="MEDPLAT_COMPLIANCE_AUDIT_TOKEN_FILE",
                                                    help="Bearer token with scope audit.write for the audit log."),
    checkov: bool = typer.Option(True, "--checkov/--no-checkov"),
    today: Optional[str] = typer.Option(None, "--today", hidden=True),
) -> None:
    """Re-check deployed state: policies + checkov, an OSCAL result appended, digest audited, drift shown."""
    import datetime

    from medplat import gate
    from medplat.evidence import continuous
    from medplat.service.audit import AuditClient

    day = _day(today)
    if not exports and not pulumi_stack:
        fail("name export files or --pulumi-stack ORG/PROJECT/STACK")
    if pulumi_stack and pulumi_token_file is None:
        fail("--pulumi-stack needs --pulumi-token-file")
    try:
        fetched_at = datetime.datetime.now(datetime.timezone.utc)
        fetched = [continuous.fetch_export(pulumi_api, ref, pulumi_token_file, out, fetched_at)
                   for ref in pulumi_stack]
        loaded = [gate.from_file(path) for path in [*(exports or []), *fetched]]
        entries = [(inv, None, continuous.stack_waivers(stacks_dir or default_stacks_dir(), inv["stack"]))
                   for inv, _, _ in loaded]
        checkov_findings, checkov_summary = [], {}
        if checkov:
            from medplat import checkov as checkov_runner
            checkov_findings, checkov_summary = checkov_runner.run_for(entries, out / "checkov")
        result = gate.check_inventories(entries, day, checkov_findings, checkov_summary)
        moment = datetime.datetime.now(datetime.timezone.utc)
        inventories = [inv for inv, _, _ in entries]
        record, path, digest = continuous.run(inventories, result, out, moment)
        before = continuous.previous_run(out, path)
        changes = continuous.drift(continuous.load_side(before), record) if before else []
        if planned is not None:
            for inv in inventories:
                side = planned / f"{inv['stack']}.inventory.json"
                if side.is_file():
                    changes += [f"vs planned {inv['stack']}: {line}" for line in
                                continuous.drift(continuous.load_side(side), {
                                    "resources": continuous.resource_digests([inv]), "controls": {}})]
    except USER_ERRORS + (continuous.ComplianceError,) as exc:
        fail(str(exc))
    except ValueError as exc:
        fail(f"waivers: {str(exc).splitlines()[0]}")
    client = AuditClient(audit_url, out / "audit-spool.jsonl", flush_s=3600, token_file=audit_token_file)
    try:
        client.record(continuous.audit_event(digest, path, record))
        delivered = client.flush()
    finally:
        client.close()
    gate_line = result.summary()
    console.print(f"compliance run {path} (sha256 {digest[:16]}…): gate {gate_line['result'].upper()}, "
                  f"{gate_line['mandatoryFailures']} mandatory violation(s); OSCAL result appended to "
                  f"{out / continuous.RESULTS}", soft_wrap=True)
    for finding in result.findings:  # an operator paged by a failing run needs to know what failed
        if finding.status == "fail" and finding.blocking:
            console.print(f"FAIL {finding.severity} {finding.policy} {finding.stack} "
                          f"{finding.name or finding.urn}: {finding.message}", markup=False, soft_wrap=True)
    console.print(f"audit log: {'recorded at ' + audit_url if delivered and audit_url else 'NOT delivered: spooled in ' + str(out / 'audit-spool.jsonl')}",
                  soft_wrap=True)
    for line in changes:
        console.print(f"drift: {line}", markup=False, soft_wrap=True)
    raise typer.Exit(result.exit_code)


@compliance_app.command("drift")
def compliance_drift(
    before: Path = typer.Argument(..., help="A run record (runs/*.json), inventory or stack export."),
    after: Path = typer.Argument(..., help="The later one."),
) -> None:
    """New, removed and changed resources and flipped controls; exit 1 if anything drifted."""
    from medplat.evidence import continuous

    try:
        lines = continuous.drift(continuous.load_side(before), continuous.load_side(after))
    except USER_ERRORS + (continuous.ComplianceError,) as exc:
        fail(str(exc))
    for line in lines:
        console.print(line, markup=False, soft_wrap=True)
    if not lines:
        console.print("no drift")
    raise typer.Exit(1 if lines else 0)


fleet_app = typer.Typer(no_args_is_help=True, help="The fleet's TUF update repository.")
app.add_typer(fleet_app, name="fleet")


@fleet_app.command("init")
def fleet_init(
    repository: Path = typer.Argument(..., help="Folder the fleet service serves (MEDPLAT_FLEET_TUF_REPOSITORY)."),
    keys: Path = typer.Option(..., "--keys", help="Folder for the role keys (keep root and targets offline)."),
    root_threshold: int = typer.Option(1, "--root-threshold", min=1, help="Root keys needed to sign a new root."),
) -> None:
    """Create a TUF repository with fresh Ed25519 keys for root, targets, snapshot and timestamp."""
    from medplat.workloads.fleet import tuf_repo

    if (repository / "metadata").exists():
        fail(f"{repository} already holds a TUF repository")
    signers = {role: [tuf_repo.new_signer() for _ in range(root_threshold if role == "root" else 1)]
               for role in tuf_repo.ROLES}
    tuf_repo.save_keys(keys, signers)
    tuf_repo.UpdateRepository.create(repository, signers, thresholds={"root": root_threshold})
    console.print(f"TUF repository {repository} (root threshold {root_threshold}); keys in {keys}; "
                  f"provision devices with {repository / 'metadata' / '1.root.json'}", soft_wrap=True)


@fleet_app.command("release")
def fleet_release(
    repository: Path = typer.Argument(..., help="The TUF repository folder."),
    artifact: Path = typer.Argument(..., help="The update file."),
    keys: Path = typer.Option(..., "--keys", help="Folder with the role keys."),
    product: str = typer.Option(..., "--product"),
    version: str = typer.Option(..., "--version", help="major.minor.patch"),
    hardware: list[str] = typer.Option(..., "--hardware", help="Compatible hardware; repeatable."),
    group: list[str] = typer.Option(..., "--group", help="Rollout group; repeatable."),
    channel: str = typer.Option("stable", "--channel"),
) -> None:
    """Publish a release: signed targets, snapshot and timestamp metadata."""
    import re

    from medplat.workloads.fleet import tuf_repo

    if not re.fullmatch(r"\d+(\.\d+)*", version):
        fail(f"version {version!r} is not numeric (major.minor.patch)")
    try:
        repo = tuf_repo.UpdateRepository(repository, tuf_repo.load_keys(keys))
        target = repo.release(product, version, artifact.read_bytes(), hardware=hardware, groups=group,
                              channel=channel)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    console.print(f"released {product} {version} ({target.length} bytes, sha256 {target.hashes['sha256'][:16]}…) "
                  f"for {', '.join(hardware)} to {', '.join(group)}", soft_wrap=True)


@app.command()
def anonymize(
    source: Path = typer.Argument(..., help="A DICOM file or a folder tree."),
    out: Path = typer.Argument(..., help="Output folder: released/ (what may leave), quarantine/, the report."),
    policy: str = typer.Option(..., "--policy", "-p", help="Policy YAML, or research-export / teleradiology."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Worker processes."),
    keys: Path = typer.Option(Path(".medplat/dicom-anonymizer/keys"), "--keys",
                              help="Key store (the pseudonymizer's local key file format)."),
    in_place: bool = typer.Option(False, "--in-place", help="Overwrite the input files (quarantine still in OUT)."),
    shards: int = typer.Option(1, "--shards", min=1, help="Split the top-level folders into this many shards."),
    state: Path = typer.Option(Path(".medplat/dicom-anonymizer/cohorts"), "--state",
                               help="The project's cohort state (k-anonymity across runs; held-back files)."),
    shard_index: int | None = typer.Option(None, "--shard-index", min=0,
                                           help="Shard to run (default: $JOB_COMPLETION_INDEX of an Indexed Job)."),
) -> None:
    """De-identify DICOM per DICOM PS3.15 Annex E under a policy; writes a JSON report."""
    import os
    from pydantic import ValidationError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from medplat.workloads.dicom_anonymizer.keystore import keys_for, open_store
    from medplat.workloads.dicom_anonymizer.policy import load_policy
    from medplat.workloads.dicom_anonymizer.run import anonymize_tree

    if not source.exists():
        fail(f"{source} does not exist")
    try:
        chosen = load_policy(policy)
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"policy {policy}: {'.'.join(str(p) for p in first['loc']) or 'policy'}: {first['msg']}")
    except (OSError, ValueError) as exc:
        fail(f"policy {policy}: {str(exc).splitlines()[0]}")
    shard = None
    if shards > 1:
        from_env = os.environ.get("JOB_COMPLETION_INDEX", "")
        index = shard_index if shard_index is not None else int(from_env) if from_env.isdigit() else -1
        if not 0 <= index < shards:
            fail(f"--shards {shards} needs --shard-index 0..{shards - 1} or JOB_COMPLETION_INDEX")
        shard = (index, shards)
    store_keys = keys_for(open_store(keys), chosen.patient_id_domain)
    total = 1 if source.is_file() else sum(1 for p in source.rglob("*") if p.is_file())
    with Progress(TextColumn("anonymizing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("files", total=total)
        try:
            report = anonymize_tree(source, out, chosen, store_keys, workers=workers, in_place=in_place,
                                    progress=lambda _result: progress.advance(task), shard=shard, state=state)
        except ValueError as exc:
            fail(str(exc))
    console.print(f"{report['anonymized']} released, {report['held']} held back (k-anonymity), "
                  f"{report['quarantined']} quarantined of {report['files']} "
                  f"files in {report['seconds']} s; report {out / 'anonymization-report.json'}", soft_wrap=True)


def _atomic_write(target: Path, text: str) -> None:
    """Write through a temporary name: a reader never sees half a file."""
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(target)


def _gate_table(result) -> None:
    summary = result.summary()
    table = Table(title="medplat policy check", title_justify="left", show_lines=False)
    for column in ("result", "severity", "policy", "stack", "resource", "message"):
        table.add_column(column, overflow="fold")
    for finding in result.findings:
        mark = {"fail": "FAIL" if finding.blocking else "warn", "waived": "waived"}[finding.status]
        table.add_row(mark, finding.severity, finding.policy, finding.stack, finding.name or finding.urn,
                      finding.message)
    if result.findings and console.is_terminal:
        console.print(table)
    elif result.findings:  # CI logs: one greppable line per finding
        for finding in result.findings:
            mark = {"fail": "FAIL" if finding.blocking else "WARN", "waived": "WAIVED"}[finding.status]
            console.print(f"{mark} {finding.severity} {finding.policy} {finding.stack} "
                          f"{finding.name or finding.urn}: {finding.message}", markup=False, soft_wrap=True)
    status = "[red]FAIL[/]" if result.exit_code else "[green]PASS[/]"
    stacks = ", ".join(f"{s['stack']} ({s['status']})" for s in result.stacks)
    console.print(f"{status}: {summary['mandatoryFailures']} mandatory violation(s), {summary['advisory']} "
                  f"advisory, {summary['waived']} waived; {summary['policies']} rules over {stacks}",
                  soft_wrap=True)
    if result.checkov:
        for zone, figures in sorted(result.checkov.get("zones", {}).items()):
            console.print(f"checkov {zone}: {figures['checks']} distinct checks, {figures['passed']} passed, "
                          f"{figures['failed']} failed, {figures['waived']} waived", soft_wrap=True)


@app.command()
def demo(
    out: Path = typer.Option(Path("build"), "--out", "-o", help="Folder for inventories, reports and the bundle."),
    checkov: bool = typer.Option(True, "--checkov/--no-checkov", help="Run checkov (installed on first use)."),
) -> None:
    """The main job on embedded defaults: synth -> policy check -> signed evidence bundle -> local edge + cloud pair."""
    import datetime
    import os

    from medplat import checkov as checkov_runner
    from medplat import reports
    from medplat.evidence import bundle, signing
    from medplat.stackset import StackSet

    stackset = StackSet(default_stacks_dir())
    try:
        with console.status("1/4 synthesizing every stack (planned, offline)…"):
            for name in stackset.names():
                _write(_ensure(out / "inventory"), name, stackset.synth(name).inventory.dumps())
        if checkov:
            try:
                checkov_runner.executable()
            except checkov_runner.CheckovMissing:
                with console.status("installing checkov into its own venv (first run only)…"):
                    checkov_runner.install()
    except USER_ERRORS as exc:
        fail(str(exc))
    console.print(f"1/4 inventories: {out / 'inventory'}/ (PLANNED)", soft_wrap=True)
    entries, result = _run_gate(None, True, None, None, out / "policy", checkov, datetime.date.today())
    for name, text in reports.report_files(result).items():
        _atomic_write(_ensure(out / "policy") / name, text)
    _gate_table(result)
    console.print(f"2/4 policy gate reports: {out / 'policy'}/", soft_wrap=True)
    # A throwaway signing key for the demo; real exports use `medplat evidence keygen` once.
    key_path = out / "demo-evidence.key"
    if not key_path.exists():
        signing.keygen(key_path)
    target = out / f"evidence-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    inventories = [inv for inv, _, _ in entries]
    private = signing.load_private(key_path)
    previous = sorted(p for p in out.glob("evidence-*") if p.is_dir())
    with console.status("3/4 building the signed evidence bundle…"):
        files = bundle.build_files(inventories, result, project_root() or Path.cwd(), signing.key_id(private),
                                   previous[-1] if previous else None)
        bundle.write(bundle.seal(files, inventories, result, private, project_root() or Path.cwd()), target)
    verified = bundle.verify(target, key_path.with_suffix(".pub"))
    console.print(f"3/4 evidence bundle: {target} ({verified.files} files, signature "
                  f"{'verified' if verified.ok else 'NOT verified'}; demo key {key_path})", soft_wrap=True)
    console.print(f"HTML report: {os.path.abspath(target / 'report.html')}", soft_wrap=True)
    from medplat import localpair

    with console.status("4/4 local edge + cloud pair: queueing sample data while the cloud is down…"):
        pair = localpair.run(out / "local-pair")
    console.print(f"4/4 local edge + cloud pair (embedded defaults, mTLS on loopback): {pair.produced} messages "
                  f"produced, {pair.queued_while_offline} queued at the edge while the cloud was down, "
                  f"refused at the edge {pair.refused_at_edge or 'none'}, {pair.delivered} delivered, "
                  f"{pair.stored_in_cloud} stored in the cloud ({pair.seconds} s)", soft_wrap=True)
    raise typer.Exit(result.exit_code)


@app.command()
def serve(name: str = typer.Argument(..., help="Workload to run locally, e.g. ingest.")) -> None:
    """Run a workload service on its embedded defaults (settings: MEDPLAT_<NAME>_* variables)."""
    import importlib

    from medplat.workloads import app_module, runnable

    if name not in runnable():
        fail(f"no runnable workload {name!r}; runnable: {', '.join(runnable()) or 'none yet'}")
    module = importlib.import_module(app_module(name))
    module.main()


@app.command()
def token(name: str = typer.Argument(..., help="Workload whose local issuer signs, e.g. ingest."),
          scope: list[str] = typer.Option(..., "--scope", help="Scope to grant; repeat for more."),
          subject: str = typer.Option(..., "--subject", help="Who the token speaks for (audited as the agent)."),
          ttl: int = typer.Option(3600, "--ttl", min=60, max=86400, help="Lifetime in seconds."),
          role: list[str] = typer.Option([], "--role", help="A FHIR PractitionerRole the subject holds (claim "
                                         "medplat_practitioner_roles, checked against Task recipients); repeat.")
          ) -> None:
    """Print a bearer token from a service's local issuer (embedded defaults only, same settings
    as `medplat serve NAME`). A service configured with an external issuer accepts none of these."""
    import importlib

    from medplat.service.auth import mint_local_token
    from medplat.workloads import app_module, runnable

    if name not in runnable():
        fail(f"no runnable workload {name!r}; runnable: {', '.join(runnable())}")
    settings = importlib.import_module(app_module(name)).Settings()
    if settings.auth_issuer:
        fail(f"{name} trusts the issuer {settings.auth_issuer}: get a token there, not from medplat")
    extra = {"medplat_practitioner_roles": role} if role else None
    print(mint_local_token(settings.data_dir, settings.auth_audience or name, scope, subject, ttl_s=ttl,
                           extra_claims=extra))


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run() -> None:
    app()


if __name__ == "__main__":
    sys.exit(app())
