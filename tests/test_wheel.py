"""The built wheel works without the checkout: same imports, packaged example stacks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_synthesizes_from_anywhere(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = dist.glob("medplat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("medplat/cli.py", "medplat/components/eu_phi_zone.py", "medplat/stacks/Pulumi.eu-phi.yaml",
                     "medplat/workloads/edge-forwarder/workload.yaml", "medplat/workloads/images.lock.yaml",
                     "medplat/compliance/residency.yaml", "medplat/evidence/bundle.py",
                     "medplat/compliance/catalogs/nis2.yaml", "medplat/compliance/mappings/resources.yaml",
                     "medplat/compliance/templates/manual-evidence.md", "medplat/policies/pack/__main__.py",
                     "medplat/policies/pack/PulumiPolicy.yaml", "medplat/policies/stack/dataflow_residency.py",
                     # Alembic revisions beside the code that runs them (hyphenated folders too)
                     "medplat/workloads/ingest/migrations/0001_baseline.py",
                     "medplat/workloads/edge_forwarder/migrations/0001_baseline.py"):
        assert expected in names, expected
    assert not any(name.startswith(("tests/", "components/")) for name in names)

    # Install only the wheel into its own folder; dependencies come from this environment,
    # and PYTHONPATH puts the wheel's `medplat` ahead of any editable checkout.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    where = subprocess.run([sys.executable, "-c", "import medplat.components as c; print(c.__file__)"],
                           cwd=workdir, env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(target)), where
    result = subprocess.run([sys.executable, "-m", "medplat", "synth", "--all", "-o", "inv"], cwd=workdir, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    inventories = sorted(p.name for p in (workdir / "inv").iterdir())
    assert inventories == ["analytics.inventory.json", "edge-dresden.inventory.json",
                           "edge-leipzig.inventory.json", "eu-phi.inventory.json"]
    document = json.loads((workdir / "inv" / "edge-dresden.inventory.json").read_text())
    assert document["status"] == "planned" and document["summary"]["resources"] > 30
    gate = subprocess.run([sys.executable, "-m", "medplat", "policy", "check", "--all", "--no-checkov", "-o", "pol"],
                          cwd=workdir, env=env, capture_output=True, text=True)
    assert gate.returncode == 0, gate.stdout + gate.stderr
    coverage = subprocess.run([sys.executable, "-m", "medplat", "evidence", "coverage"], cwd=workdir, env=env,
                              capture_output=True, text=True)
    assert coverage.returncode == 0 and "NIS2-21.2.a" in coverage.stdout, coverage.stderr
