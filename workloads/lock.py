"""Write each workload image's `requirements.lock`: only what that image runs, pinned with hashes.

Inputs, one folder per workload:
- `workloads/service.in`: what every service image needs (the service foundation and the `medplat`
  entry point the images start with);
- `workloads/<name>/requirements.in`: `-r ../service.in` plus the workload's own libraries.
Outputs:
- `workloads/distribution.lock`: the whole medplat distribution (pyproject dependencies), the
  constraint every image lock is resolved under, so all images agree on versions;
- `workloads/<name>/requirements.lock`: the image's set with sha256 hashes of every artifact, which
  the Dockerfile installs with `pip install --require-hashes --no-deps` and the SBOM lists;
- tool locks (`TOOL_LOCKS`): a tool an image keeps in its own venv because its pins clash with
  medplat's (checkov in compliance-run), resolved alone, also installed only with hashes.
Resolution by uv (`uv pip compile --generate-hashes`) for the images' Python (3.11, Linux).
Run from the repository root after changing dependencies:
    python -m medplat.workloads.lock
"""
from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from pathlib import Path

from medplat.workloads import images

PYTHON_VERSION = "3.11"
SHARED_INPUT = "workloads/service.in"
DISTRIBUTION_LOCK = "workloads/distribution.lock"
RUNTIME_EXTRAS = ("aws", "pixels")  # optional features some images run; `test` is not shipped
HEADER = ("# Dependencies the {name} image installs (pip install --require-hashes --no-deps).\n"
          "# Regenerate from the repository root: python -m medplat.workloads.lock\n"
          "# inputs: {digest}\n")
# Tool lock -> its input, resolved without the distribution constraint (the tool's pins clash with it).
TOOL_LOCKS = {"workloads/compliance-run/checkov.lock": "workloads/compliance-run/checkov.in"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)


def canonical(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(lock_text: str) -> dict[str, str]:
    """Project name (normalized) -> pinned version, from a requirements lock."""
    return {canonical(name): version for name, _, version in PIN.findall(lock_text)}


def input_files(root: Path, name: str) -> list[Path]:
    """What a lock is computed from: the inputs and the constraint (a change to any means regenerate)."""
    if name == "distribution":
        return [root / "pyproject.toml"]
    if name in TOOL_LOCKS:
        return [root / TOOL_LOCKS[name]]
    return [root / SHARED_INPUT, root / "workloads" / name / "requirements.in", root / DISTRIBUTION_LOCK]


def inputs_digest(root: Path, name: str) -> str:
    digest = hashlib.sha256()
    for path in input_files(root, name):
        text = path.read_text(encoding="utf-8")
        if path.name == "pyproject.toml":
            text = _dependency_tables(text)
        elif path.name.endswith(".lock"):
            text = _body(text)
        digest.update(path.name.encode() + b"\0" + text.encode() + b"\0")
    return "sha256:" + digest.hexdigest()


DISTRIBUTION_HEADER = ("# The whole medplat distribution: pyproject dependencies and the runtime extras {extras}.\n"
                       "# Every image lock is resolved under it. Regenerate: python -m medplat.workloads.lock\n"
                       "# inputs: {digest}\n")


def header(root: Path, name: str) -> str:
    """The first lines of a lock: what it is, how to regenerate it, and the digest of its inputs."""
    if name == "distribution":
        return DISTRIBUTION_HEADER.format(extras=", ".join(RUNTIME_EXTRAS), digest=inputs_digest(root, name))
    if name in TOOL_LOCKS:
        return (f"# {Path(name).stem} in its own venv (pip install --require-hashes --no-deps), from {TOOL_LOCKS[name]}.\n"
                "# Regenerate from the repository root: python -m medplat.workloads.lock\n"
                f"# inputs: {inputs_digest(root, name)}\n")
    return HEADER.format(name=name, digest=inputs_digest(root, name))


def _dependency_tables(pyproject: str) -> str:
    """Only the [project] dependencies decide the distribution lock (not tool settings)."""
    import tomllib

    project = tomllib.loads(pyproject)["project"]
    extras = project.get("optional-dependencies", {})
    return "\n".join(sorted(project.get("dependencies", [])) + [f"[{extra}] {sorted(extras.get(extra, []))}"
                                                               for extra in RUNTIME_EXTRAS])


def _body(lock_text: str) -> str:
    return "".join(line + "\n" for line in lock_text.splitlines() if not line.startswith("#"))


def compile_lock(root: Path, source: str, constraint: str | None, extras: tuple[str, ...] = ()) -> str:
    """One `uv pip compile --generate-hashes` run, paths relative to the repository root."""
    command = [sys.executable, "-m", "uv", "pip", "compile", source, "--generate-hashes", "--no-header",
               "--quiet", "--python-version", PYTHON_VERSION, "--python-platform", "x86_64-manylinux_2_28",
               "--no-strip-extras", "--annotation-style", "line"]
    if constraint:
        command += ["--constraint", constraint]
    for extra in extras:
        command += ["--extra", extra]
    completed = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"medplat: error: uv pip compile {source} failed: {completed.stderr.strip()[-500:]}")
    return completed.stdout


def write_tool_locks(root: Path) -> None:
    for lock, source in TOOL_LOCKS.items():
        (root / lock).write_text(header(root, lock) + compile_lock(root, source, None), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    root = args.root.resolve()
    full = compile_lock(root, "pyproject.toml", None, extras=RUNTIME_EXTRAS)
    (root / DISTRIBUTION_LOCK).write_text(header(root, "distribution") + full, encoding="utf-8")
    sizes = {}
    for name in images():
        body = compile_lock(root, f"workloads/{name}/requirements.in", DISTRIBUTION_LOCK)
        (root / "workloads" / name / "requirements.lock").write_text(header(root, name) + body, encoding="utf-8")
        sizes[name] = len(pinned(body))
    write_tool_locks(root)
    print(f"distribution: {len(pinned(full))} packages; "
          + ", ".join(f"{name} {count}" for name, count in sizes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
