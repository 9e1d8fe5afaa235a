"""Shared fixtures: the example stacks synthesized once per test session."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from medplat.stackset import StackSet

REPO = Path(__file__).resolve().parents[1]
STACKS = REPO / "stacks"


@pytest.fixture(scope="session")
def examples() -> StackSet:
    stackset = StackSet(STACKS)
    for name in stackset.names():
        stackset.synth(name)
    return stackset


@pytest.fixture(scope="session")
def inventories(examples) -> dict[str, dict]:
    return {name: result.inventory.to_json() for name, result in examples.results.items()}


def of_type(inventory: dict, type_: str) -> list[dict]:
    return [r for r in inventory["resources"] if r["type"] == type_]


def named(inventory: dict, suffix: str) -> dict:
    found = [r for r in inventory["resources"] if r["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one resource named *{suffix}, found {[r['name'] for r in found]}"
    return found[0]


@pytest.fixture
def stacks_copy(tmp_path) -> Path:
    """A writable copy of the example stacks, for tests that break one."""
    target = tmp_path / "stacks"
    shutil.copytree(STACKS, target, ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
    return target


def edit_stack(stacks_dir: Path, stack: str, edit) -> Path:
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    document = yaml.safe_load(path.read_text())
    edit(document["config"])
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
