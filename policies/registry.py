"""Every medplat policy, collected from the one-policy-per-file modules."""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from pulumi_policy import Policy

from medplat.policies import resource, stack

PACK_NAME = "medplat"


@lru_cache(maxsize=1)
def all_policies() -> tuple[Policy, ...]:
    found: list[Policy] = []
    for package in (resource, stack):
        for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if module.name.startswith("_"):
                continue
            policy = getattr(importlib.import_module(f"{package.__name__}.{module.name}"), "POLICY", None)
            if policy is None:
                raise LookupError(f"{package.__name__}.{module.name} defines no POLICY")
            found.append(policy)
    names = [p.name for p in found]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise LookupError(f"duplicate policy ids: {', '.join(sorted(duplicates))}")
    return tuple(found)


def by_id() -> dict[str, Policy]:
    return {policy.name: policy for policy in all_policies()}
