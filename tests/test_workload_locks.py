"""Every service image installs the medplat distribution from one lock resolution."""
from __future__ import annotations

from pathlib import Path

from medplat.workloads import runnable
from medplat.workloads.lock import HEADER

WORKLOADS = Path(__file__).resolve().parents[1] / "workloads"


def test_every_service_has_the_same_locked_requirements():
    bodies = {}
    for name in runnable():
        text = (WORKLOADS / name / "requirements.lock").read_text()
        header = HEADER.format(name=name)
        assert text.startswith(header), f"{name}: regenerate with python -m medplat.workloads.lock"
        bodies[name] = text[len(header):]
        assert f"-r workloads/{name}/requirements.lock" in (WORKLOADS / name / "Dockerfile").read_text()
    assert len(set(bodies.values())) == 1, "locks drifted apart: python -m medplat.workloads.lock"
    assert any(line.startswith("fastapi==") for line in next(iter(bodies.values())).splitlines())
