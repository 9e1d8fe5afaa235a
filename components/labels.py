"""The four `medplat:*` labels every resource carries, and how each provider stores them.

Labels are attached by the owning component (see `LabelledComponent.child`), never typed
by hand per resource. Where a resource type cannot carry tags, the inventory takes the
labels its parent component registered as an output.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

DATA_CLASSES = ("phi", "pseudonymized", "deidentified", "key-material", "operational")
ZONES = ("eu-phi", "analytics", "edge")
LABEL_KEYS = ("medplat:zone", "medplat:site", "medplat:data-class", "medplat:owner")
# Kubernetes label keys may not contain ':'; the inventory maps these back to LABEL_KEYS.
K8S_PREFIX = "medplat.io/"
# Output name under which every component registers its labels.
LABELS_OUTPUT = "medplatLabels"
# Output mapping each child's resource name to its data class.
CHILD_CLASSES_OUTPUT = "medplatChildDataClasses"


@dataclass(frozen=True)
class Labels:
    zone: str
    site: str
    data_class: str
    owner: str

    def __post_init__(self) -> None:
        if self.zone not in ZONES:
            raise ValueError(f"unknown zone {self.zone!r}; expected one of {', '.join(ZONES)}")
        if self.data_class not in DATA_CLASSES:
            raise ValueError(
                f"unknown data class {self.data_class!r}; expected one of {', '.join(DATA_CLASSES)}"
            )

    def with_class(self, data_class: str | None) -> "Labels":
        return self if data_class is None else replace(self, data_class=data_class)

    def as_dict(self) -> dict[str, str]:
        return {
            "medplat:zone": self.zone,
            "medplat:site": self.site,
            "medplat:data-class": self.data_class,
            "medplat:owner": self.owner,
        }

    def as_k8s(self) -> dict[str, str]:
        return {K8S_PREFIX + k.split(":", 1)[1]: v for k, v in self.as_dict().items()}

    def as_openstack_tags(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.as_dict().items()]

    def as_openstack_metadata(self) -> dict[str, str]:
        # Swift/Cinder metadata keys travel as HTTP headers: no ':' allowed.
        return {k.replace(":", "-"): v for k, v in self.as_dict().items()}


def normalize(raw: dict[str, Any] | list[Any] | None) -> dict[str, str]:
    """Read medplat labels back from any of the provider encodings above."""
    found: dict[str, str] = {}
    if isinstance(raw, Sequence) and not isinstance(raw, str):
        for item in raw:
            if isinstance(item, str) and "=" in item:
                key, value = item.split("=", 1)
                if key in LABEL_KEYS:
                    found[key] = value
        return found
    if not isinstance(raw, Mapping):
        return found
    for key, value in raw.items():
        if not isinstance(value, str):
            continue
        if key in LABEL_KEYS:
            found[key] = value
        elif key.startswith(K8S_PREFIX) and "medplat:" + key[len(K8S_PREFIX):] in LABEL_KEYS:
            found["medplat:" + key[len(K8S_PREFIX):]] = value
        elif key.startswith("medplat-") and "medplat:" + key[len("medplat-"):] in LABEL_KEYS:
            found["medplat:" + key[len("medplat-"):]] = value
    return found


@lru_cache(maxsize=None)
def _init_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls._internal_init).parameters)  # type: ignore[attr-defined]


def attach(cls: type, props: dict[str, Any], labels: Labels) -> dict[str, Any]:
    """Return `props` with `labels` merged in the way `cls`'s provider stores labels."""
    package = cls.__module__.split(".", 1)[0]
    params = _init_params(cls)
    props = dict(props)
    if package == "pulumi_kubernetes":
        if "metadata" in params:
            meta = dict(props.get("metadata") or {})
            meta["labels"] = {**labels.as_k8s(), **(meta.get("labels") or {})}
            props["metadata"] = meta
    elif package == "pulumi_aws":
        if "tags" in params:
            props["tags"] = {**labels.as_dict(), **(props.get("tags") or {})}
    elif package == "pulumi_openstack":
        if "tags" in params:
            props["tags"] = sorted(set(labels.as_openstack_tags()) | set(props.get("tags") or []))
        elif "metadata" in params:
            props["metadata"] = {**labels.as_openstack_metadata(), **(props.get("metadata") or {})}
    return props
