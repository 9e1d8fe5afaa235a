"""The inventory: one deterministic JSON shape for planned (synthesized) and deployed stacks.

Planned inventories come from `medplat synth` (the program under Pulumi's mock runtime);
deployed ones from a real `pulumi stack export` file. Both carry their status so nobody
mistakes a plan for a deployment. Secret values are always masked.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medplat.components.labels import CHILD_CLASSES_OUTPUT, LABEL_KEYS, LABELS_OUTPUT, normalize

SCHEMA = "medplat.inventory/v1"
MASK = "[secret]"
# The marker Pulumi uses for secret values in state files and RPC payloads.
SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUE_SIG = "1b47061264138c4ac30d75fd1eb44270"
PLANNED_NOTE = ("PLANNED: synthesized offline under the Pulumi SDK mock runtime. Nothing was deployed; "
                "computed values (ids, addresses, certificates) are placeholders.")
DEPLOYED_NOTE = "DEPLOYED: read from a `pulumi stack export` of a real deployment."


class InventoryError(Exception):
    """A file that cannot be turned into an inventory, as one line."""


def mask(value: Any) -> Any:
    """Replace every secret (Pulumi state or RPC encoding) by MASK, recursively."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == SECRET_VALUE_SIG:
            return MASK
        return {k: mask(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask(v) for v in value]
    return value


@dataclass
class Resource:
    urn: str
    type: str
    name: str
    custom: bool
    parent: str | None
    provider: str | None
    inputs: dict[str, Any]
    dependencies: list[str] = field(default_factory=list)
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)  # component outputs (labels live here)
    region: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # Deployed resources only: a digest of what the provider last read back (the state's outputs,
    # secrets masked), so drift sees changes made outside Pulumi that leave the inputs as they were.
    state_digest: str | None = None

    def to_json(self) -> dict[str, Any]:
        found = {
            "urn": self.urn, "type": self.type, "name": self.name, "custom": self.custom,
            "parent": self.parent, "provider": self.provider, "region": self.region,
            "labels": self.labels, "inputs": mask(self.inputs),
            "dependencies": sorted(set(self.dependencies)),
            "propertyDependencies": {k: sorted(set(v)) for k, v in sorted(self.property_dependencies.items()) if v},
        }
        if self.state_digest is not None:
            found["stateDigest"] = self.state_digest
        return found


def state_digest(outputs: dict[str, Any] | None) -> str:
    """sha256 of a deployed resource's outputs as canonical JSON, secrets masked (their ciphertext
    is not compared: a re-encryption is no change, a changed secret value is not seen)."""
    return hashlib.sha256(json.dumps(mask(outputs or {}), sort_keys=True, default=str).encode()).hexdigest()


def provider_urn(reference: str | None) -> str | None:
    """`urn::id` provider references -> the provider's URN."""
    if not reference:
        return None
    return reference.rsplit("::", 1)[0] if reference.count("::") > 3 else reference


def own_labels(resource: Resource) -> dict[str, str]:
    inputs = resource.inputs
    if resource.type.startswith("kubernetes:"):
        return normalize((inputs.get("metadata") or {}).get("labels"))
    for key in ("tags", "metadata"):
        if key in inputs and not isinstance(inputs[key], str):
            found = normalize(inputs[key])
            if found:
                return found
    return {}


def attribute(resources: list[Resource], fallback_region: str | None = None) -> None:
    """Fill each resource's labels and region: its own, else its nearest ancestor's.

    Kubernetes objects take the region of the stack's cloud resources, or
    `fallback_region` (an edge site's on-premises location) where there are none.

    Resources at the stack's root that carry no labels (explicit providers, say) take the
    zone, site and owner of the stack's root components, as operational data.
    """
    by_urn = {r.urn: r for r in resources}
    stack_labels: dict[str, str] = {}
    for root in (r for r in resources if r.parent is None and not r.custom):
        stack_labels.update(normalize(mask(root.outputs.get(LABELS_OUTPUT))))
    if stack_labels:
        stack_labels["medplat:data-class"] = "operational"

    def labels_of(resource: Resource, seen: int = 0) -> dict[str, str]:
        found = own_labels(resource) or normalize(mask(resource.outputs.get(LABELS_OUTPUT)))
        if len(found) == len(LABEL_KEYS) or seen > 64:
            return found
        parent = by_urn.get(resource.parent or "")
        if parent is None:
            return {**stack_labels, **found}
        inherited = labels_of(parent, seen + 1)
        child_class = (parent.outputs.get(CHILD_CLASSES_OUTPUT) or {}).get(resource.name)
        if isinstance(child_class, str):
            inherited["medplat:data-class"] = child_class
        return {**inherited, **found}

    def region_of(resource: Resource, seen: int = 0) -> str | None:
        region = resource.inputs.get("region")
        if isinstance(region, str) and region:
            return region
        provider = by_urn.get(resource.provider or "")
        if provider is not None and isinstance(provider.inputs.get("region"), str):
            return provider.inputs["region"]
        if resource.parent in by_urn and seen < 64:
            return region_of(by_urn[resource.parent], seen + 1)
        return None

    for resource in resources:
        resource.labels = labels_of(resource)
        resource.region = region_of(resource)
    # Objects inside a cluster (Kubernetes) live where the stack's cloud resources live.
    regions = Counter(r.region for r in resources if r.region)
    home = regions.most_common(1)[0][0] if regions else fallback_region
    if home:
        for resource in resources:
            if resource.region is None and resource.custom:
                resource.region = home


@dataclass
class Inventory:
    project: str
    stack: str
    status: str  # "planned" | "deployed"
    source: str
    resources: list[Resource]
    outputs: dict[str, Any]
    zone: str | None = None

    def to_json(self) -> dict[str, Any]:
        resources = sorted(self.resources, key=lambda r: r.urn)
        custom = [r for r in resources if r.custom]
        return {
            "schema": SCHEMA,
            "status": self.status,
            "note": PLANNED_NOTE if self.status == "planned" else DEPLOYED_NOTE,
            "source": self.source,
            "project": self.project,
            "stack": self.stack,
            "zone": self.zone,
            "summary": {
                "resources": len(resources),
                "customResources": len(custom),
                "byType": dict(sorted(Counter(r.type for r in resources).items())),
                "byDataClass": dict(sorted(Counter(r.labels.get("medplat:data-class", "?") for r in custom).items())),
                "regions": sorted({r.region for r in custom if r.region}),
            },
            "resources": [r.to_json() for r in resources],
            "outputs": mask(self.outputs),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise InventoryError(f"{path}: not JSON: {exc}") from None


def from_stack_export(path: Path) -> Inventory:
    """Read a real `pulumi stack export` (deployment version 3) into an inventory."""
    document = _load_json(path)
    deployment = document.get("deployment") if isinstance(document, dict) else None
    if not isinstance(deployment, dict) or not isinstance(deployment.get("resources"), list):
        raise InventoryError(f"{path}: not a `pulumi stack export` file (no deployment.resources)")
    if document.get("version") not in (3, 4):
        raise InventoryError(f"{path}: unsupported deployment version {document.get('version')!r}")
    return _from_state(deployment["resources"], "deployed", f"pulumi stack export: {path.name}")


def from_preview(path: Path) -> Inventory:
    """Read `pulumi preview --json` output: the planned new state of every step."""
    document = _load_json(path)
    steps = document.get("steps") if isinstance(document, dict) else None
    if not isinstance(steps, list):
        raise InventoryError(f"{path}: not `pulumi preview --json` output (no steps)")
    states = [step["newState"] for step in steps
              if isinstance(step, dict) and step.get("op") not in ("delete", "discard") and step.get("newState")]
    return _from_state(states, "planned", f"pulumi preview --json: {path.name}")


def load_any(path: Path) -> Inventory | dict[str, Any]:
    """A medplat inventory, a stack export or a preview, recognized by shape."""
    document = _load_json(path)
    if isinstance(document, dict) and document.get("schema") == SCHEMA:
        return document
    if isinstance(document, dict) and "deployment" in document:
        return from_stack_export(path)
    if isinstance(document, dict) and "steps" in document:
        return from_preview(path)
    raise InventoryError(f"{path}: neither a medplat inventory, a `pulumi stack export` nor `pulumi preview --json`")


def _from_state(raw_resources: list[dict[str, Any]], status: str, source: str) -> Inventory:
    resources: list[Resource] = []
    stack_outputs: dict[str, Any] = {}
    project = stack = ""
    for raw in raw_resources:
        urn, type_ = raw.get("urn", ""), raw.get("type", "")
        if type_ == "pulumi:pulumi:Stack":
            stack_outputs = raw.get("outputs") or {}
            parts = urn.split("::")  # urn:pulumi:<stack>::<project>::<type>::<name>
            stack, project = (parts[0].rsplit(":", 1)[-1], parts[1]) if len(parts) == 4 else ("", "")
            continue
        resources.append(Resource(
            urn=urn, type=type_, name=urn.rsplit("::", 1)[-1], custom=bool(raw.get("custom")),
            parent=raw.get("parent"),
            provider=provider_urn(raw.get("provider")),
            inputs=raw.get("inputs") or {},
            dependencies=list(raw.get("dependencies") or []),
            property_dependencies=dict(raw.get("propertyDependencies") or {}),
            outputs={} if raw.get("custom") else (raw.get("outputs") or {}),
            state_digest=state_digest(raw.get("outputs")) if raw.get("custom") and status == "deployed" else None,
        ))
    stack_urns = {r.get("urn") for r in raw_resources if r.get("type") == "pulumi:pulumi:Stack"}
    for resource in resources:
        if resource.parent in stack_urns or (resource.parent or "").split("::")[2:3] == ["pulumi:pulumi:Stack"]:
            resource.parent = None
    attribute(resources)
    zones = {r.labels.get("medplat:zone") for r in resources if r.labels.get("medplat:zone")}
    if not stack:  # a preview of a new stack may have no Stack step with outputs: read any URN
        for raw in raw_resources:
            if str(raw.get("urn", "")).startswith("urn:pulumi:"):
                parts = raw["urn"].split("::")
                stack, project = parts[0].rsplit(":", 1)[-1], parts[1]
                break
    return Inventory(project=project, stack=stack, status=status, source=source,
                     resources=resources, outputs=stack_outputs, zone=zones.pop() if len(zones) == 1 else None)
