"""Each workload image carries what it runs: its own hashed lock, a pinned base image, nothing more.

The locks are written by `python -m medplat.workloads.lock` (uv, from workloads/*/requirements.in
under workloads/distribution.lock); these tests fail when an input changed without regenerating,
when a Dockerfile stops installing its lock with hashes, or when a workload imports a library its
lock does not hold.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medplat.workloads import app_module, images
from medplat.workloads.lock import DISTRIBUTION_LOCK, canonical, header, pinned

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ROOT / "workloads"
BASE_IMAGE_PACKAGES = {"pip", "setuptools", "wheel"}  # in python:3.11-slim itself (workloads/base-image.yaml)


def lock_of(name: str) -> str:
    return (WORKLOADS / name / "requirements.lock").read_text()


def distribution() -> dict[str, str]:
    return pinned((ROOT / DISTRIBUTION_LOCK).read_text())


def test_distribution_lock_matches_the_pyproject_dependencies():
    text = (ROOT / DISTRIBUTION_LOCK).read_text()
    assert text.startswith(header(ROOT, "distribution")), "regenerate with python -m medplat.workloads.lock"
    assert {"fastapi", "pulumi", "pulumi-aws", "pytesseract"} <= distribution().keys()


@pytest.mark.parametrize("name", images())
def test_each_image_installs_its_own_lock_with_hashes(name):
    text = lock_of(name)
    assert text.startswith(header(ROOT, name)), f"{name}: regenerate with python -m medplat.workloads.lock"
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 3)[3])
    assert entries and all("--hash=sha256:" in entry for entry in entries if entry.strip()), \
        f"{name}: a pin without a hash"
    locked = pinned(text)
    whole = distribution()
    assert {project: whole.get(project) for project in locked} == locked, \
        f"{name}: versions differ from workloads/distribution.lock"
    dockerfile = (WORKLOADS / name / "Dockerfile").read_text()
    assert re.search(rf"pip install [^\n]*--require-hashes --no-deps -r workloads/{name}/requirements\.lock",
                     dockerfile), f"{name}: the Dockerfile does not install its lock with --require-hashes"
    assert re.search(r"pip install [^\n]*--no-deps [^\n]*\.$", dockerfile, re.MULTILINE), \
        f"{name}: medplat itself must be installed without pulling dependencies"


# The one job that synthesizes stacks and writes evidence (`medplat compliance run` in the EU zone).
RUNS_THE_PULUMI_PROGRAM = {"compliance-run"}


@pytest.mark.parametrize("name", images())
def test_each_lock_is_smaller_than_the_whole_distribution(name):
    locked, whole = set(pinned(lock_of(name))), set(distribution())
    assert locked < whole
    assert "checkov" not in locked  # checkov pins old libraries: only ever its own venv
    if name in RUNS_THE_PULUMI_PROGRAM:
        assert {"pulumi", "pulumi-policy", "compliance-trestle"} <= locked
        assert not {"sdc11073", "pydicom", "hl7apy", "spiffworkflow"} & locked  # no device or clinical code
        return
    # The IaC stack stays out of the service images.
    assert not {project for project in locked if project.startswith("pulumi")}
    assert "compliance-trestle" not in locked


def test_every_dockerfile_builds_from_the_pinned_base_image():
    base = yaml.safe_load((WORKLOADS / "base-image.yaml").read_text())
    digest = base["digest"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest) and set(digest[7:]) != {"0"}, "placeholder base digest"
    assert base["source"].startswith("https://github.com/docker-library/repo-info/blob/")
    for name in images():
        stages = re.findall(r"^FROM\s+(\S+)", (WORKLOADS / name / "Dockerfile").read_text(), re.MULTILINE)
        assert stages and all(stage == f"{base['image']}@{digest}" for stage in stages), f"{name}: {stages}"


# Runs in a fresh interpreter: every module a distribution outside the lock would provide is made
# unimportable (as in the image, where it is not installed), then the image's entry modules and every
# module of the workload folder are imported. Optional imports degrade as in the image; required
# ones raise.
IMPORT_PROBE = r"""
import importlib, importlib.machinery, json, sys
from importlib import metadata
from pathlib import Path

allowed = set(json.loads(sys.argv[1]))
modules = json.loads(sys.argv[2])
canonical = lambda name: __import__("re").sub(r"[-_.]+", "-", name).lower()
owner = {}
for dist in metadata.distributions():
    for file in dist.files or []:
        if file.suffix in (".py", ".so", ".pyd"):
            owner[str(Path(dist.locate_file(file)).resolve())] = canonical(dist.metadata["Name"])

class OutsideTheLock:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.split(".")[0] == "medplat":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        origin = spec and spec.origin and owner.get(str(Path(spec.origin).resolve()))
        if origin and origin not in allowed:
            raise ModuleNotFoundError(f"{fullname} (from {origin}) is not in the lock", name=fullname)
        return None

sys.meta_path.insert(0, OutsideTheLock)
for module in modules:
    importlib.import_module(module)
print("imported", len(modules))
"""


def entry_modules(name: str) -> list[str]:
    """What the image starts: its ENTRYPOINT (+ CMD), as importable modules, plus its whole folder."""
    dockerfile = (WORKLOADS / name / "Dockerfile").read_text()
    command = [part for key in ("ENTRYPOINT", "CMD")
               for match in re.findall(rf"^{key}\s+(\[.*\])$", dockerfile, re.MULTILINE)
               for part in json.loads(match)]
    if command[:2] == ["python", "-m"]:
        modules = [command[2]]
    elif command[0] == "medplat":
        modules = ["medplat.cli"] + ([app_module(name)] if (WORKLOADS / name / "app.py").is_file() else [])
    else:
        raise AssertionError(f"{name}: unknown entry point {command}")
    package = app_module(name).rsplit(".", 1)[0]
    modules += [f"{package}.{path.stem}" for path in sorted((WORKLOADS / name).glob("*.py"))
                if path.stem != "__init__" and not path.stem.startswith("generate_")]
    return modules


@pytest.mark.slow
@pytest.mark.parametrize("name", images())
def test_the_image_entry_imports_nothing_outside_its_lock(name):
    allowed = set(pinned(lock_of(name))) | BASE_IMAGE_PACKAGES
    completed = subprocess.run([sys.executable, "-c", IMPORT_PROBE, json.dumps(sorted(allowed)),
                                json.dumps(entry_modules(name))], capture_output=True, text=True, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr.strip().splitlines()[-1:]


def lazy_imports(folder: Path) -> set[str]:
    """Third-party modules imported inside functions (the import probe does not run those)."""
    found = set()
    for path in folder.glob("*.py"):
        if path.stem.startswith("generate_"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.col_offset > 0:
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                found |= {n.split(".")[0] for n in names
                          if n and n.split(".")[0] not in sys.stdlib_module_names and n.split(".")[0] != "medplat"}
    return found


@pytest.mark.parametrize("name", images())
def test_imports_inside_functions_are_in_the_lock(name):
    from importlib import metadata

    provided = metadata.packages_distributions()
    allowed = set(pinned(lock_of(name))) | BASE_IMAGE_PACKAGES
    folders = [WORKLOADS / name, ROOT / "src" / "medplat" / "service"]
    for module in sorted(set().union(*(lazy_imports(folder) for folder in folders))):
        owners = {canonical(dist) for dist in provided.get(module, [])}
        assert owners & allowed, f"{name}: imports {module} ({sorted(owners)}) which its lock does not hold"


PIP_INSTALL = re.compile(r"pip install ([^\n]*)")


@pytest.mark.parametrize("name", images())
def test_every_pip_install_in_a_dockerfile_is_a_hashed_lock_or_medplat_itself(name):
    """Not only the image lock: any other `pip install` (a tool's venv) must be a hashed lock too,
    or it resolves a whole dependency tree unpinned at build time, outside the SBOM."""
    dockerfile = (WORKLOADS / name / "Dockerfile").read_text()
    for line in PIP_INSTALL.findall(dockerfile.replace("\\\n", " ")):
        lock = re.fullmatch(r"--no-cache-dir (?:--prefix=/install )?--require-hashes --no-deps -r (\S+\.lock)\s*(?:&&.*)?",
                            line.strip())
        itself = re.fullmatch(r".*--no-deps --no-build-isolation \.\s*(?:&&.*)?", line.strip())
        assert lock or itself, f"{name}: unhashed pip install: {line.strip()}"
        if lock:
            assert (ROOT / lock.group(1)).is_file(), f"{name}: {lock.group(1)} missing"


def test_tool_locks_are_current_hashed_and_pin_the_version_medplat_runs():
    from medplat.checkov import CHECKOV_VERSION
    from medplat.workloads.lock import TOOL_LOCKS

    for lock in TOOL_LOCKS:
        text = (ROOT / lock).read_text()
        assert text.startswith(header(ROOT, lock)), f"{lock}: regenerate with python -m medplat.workloads.lock"
        entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 3)[3])
        assert entries and all("--hash=sha256:" in entry for entry in entries if entry.strip()), lock
    assert pinned((ROOT / "workloads/compliance-run/checkov.lock").read_text())["checkov"] == CHECKOV_VERSION
