"""Read the control catalogs and the policy -> control mapping (both YAML data)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class Control:
    id: str
    framework: str
    title: str
    kind: str  # "technical" | "organizational"
    evidence: str | None = None
    requires: tuple[str, ...] = ()  # checks that must have evaluated something before the control can pass


@lru_cache(maxsize=1)
def catalog() -> dict[str, Control]:
    folder = resources.files(__package__) / "catalogs"
    controls: dict[str, Control] = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".yaml"):
            continue
        document = yaml.safe_load(entry.read_text(encoding="utf-8"))
        for control_id, body in document["controls"].items():
            controls[control_id] = Control(id=control_id, framework=document["framework"], title=body["title"],
                                           kind=body["kind"], evidence=body.get("evidence"),
                                           requires=tuple(body.get("requires") or ()))
    return controls


@lru_cache(maxsize=1)
def policy_controls() -> dict[str, list[str]]:
    text = (resources.files(__package__) / "mappings" / "policies.yaml").read_text(encoding="utf-8")
    return {policy: list(controls) for policy, controls in (yaml.safe_load(text) or {}).items()}


@lru_cache(maxsize=1)
def resource_controls() -> dict[str, list[str]]:
    text = (resources.files(__package__) / "mappings" / "resources.yaml").read_text(encoding="utf-8")
    return {kind: list(controls) for kind, controls in (yaml.safe_load(text) or {}).items()}
