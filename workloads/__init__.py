"""Workload specs shipped with medplat: one folder per workload, its spec in `workload.yaml`."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml

from medplat.components.workload_spec import WorkloadSpec, spec_from_text

LOCK_FILE = "images.lock.yaml"


@lru_cache(maxsize=1)
def catalog() -> dict[str, WorkloadSpec]:
    """Every shipped workload spec by name (folder name == spec name)."""
    root = resources.files(__name__)
    specs: dict[str, WorkloadSpec] = {}
    for folder in sorted(root.iterdir(), key=lambda p: p.name):
        spec_file = folder / "workload.yaml"
        if not spec_file.is_file():
            continue
        spec = spec_from_text(spec_file.read_text(encoding="utf-8"), folder)
        if spec.name != folder.name:
            raise ValueError(f"workloads/{folder.name}/workload.yaml names itself {spec.name!r}")
        specs[spec.name] = spec
    return specs


@lru_cache(maxsize=1)
def image_entries() -> dict[str, dict]:
    """Workload name -> its lock entry (digest, placeholder flag, recorded signature verification)."""
    data = yaml.safe_load((resources.files(__name__) / LOCK_FILE).read_text(encoding="utf-8")) or {}
    return {name: dict(entry) for name, entry in (data.get("images") or {}).items()}


def image_lock() -> dict[str, str]:
    """Workload name -> image digest, written by the release pipeline."""
    return {name: entry["digest"] for name, entry in image_entries().items()}


@lru_cache(maxsize=1)
def placeholder_digests() -> frozenset[str]:
    """Workloads whose lock entry is a placeholder (image not yet published)."""
    data = yaml.safe_load((resources.files(__name__) / LOCK_FILE).read_text(encoding="utf-8")) or {}
    return frozenset(name for name, entry in (data.get("images") or {}).items() if entry.get("placeholder"))


def images() -> list[str]:
    """Workloads medplat builds an image for (`workloads/<name>/Dockerfile`): services and jobs."""
    root = resources.files(__name__)
    return sorted(name for name in catalog() if (root / name / "Dockerfile").is_file())


def runnable() -> list[str]:
    """Workloads that ship a service (`workloads/<name>/app.py`), runnable with `medplat serve`."""
    root = resources.files(__name__)
    return sorted(name for name in catalog() if (root / name / "app.py").is_file())


def app_module(name: str) -> str:
    """Import path of a workload's service module (folder names may contain '-')."""
    return f"{__name__}.{name.replace('-', '_')}.app"
