"""Helpers the policies share: labels, pod specs, and links between resources."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Iterable

from medplat.components.labels import normalize

WORKLOAD_KINDS = {
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "kubernetes:core/v1:Pod": ("spec",),
}
SENSITIVE = ("phi", "key-material")


def labels(resource_type: str, props: dict[str, Any]) -> dict[str, str]:
    """medplat labels as the resource itself carries them (tags, OpenStack tags, k8s labels)."""
    if resource_type.startswith("kubernetes:"):
        return normalize((props.get("metadata") or {}).get("labels"))
    for key in ("tags", "metadata"):
        value = props.get(key)
        if isinstance(value, (Mapping, Sequence)) and not isinstance(value, str):
            found = normalize(value)
            if found:
                return found
    return {}


def data_class(resource_type: str, props: dict[str, Any]) -> str | None:
    return labels(resource_type, props).get("medplat:data-class")


def pod_spec(resource_type: str, props: dict[str, Any]) -> dict[str, Any] | None:
    path = WORKLOAD_KINDS.get(resource_type)
    if path is None:
        return None
    node: Any = props
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else None


def has_pod(resource_type: str, props) -> bool:
    """In scope of the container policies: a workload kind with a pod template."""
    return pod_spec(resource_type, props) is not None


def containers(pod: dict[str, Any]) -> Iterable[dict[str, Any]]:
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def annotations(props: dict[str, Any]) -> dict[str, str]:
    return dict((props.get("metadata") or {}).get("annotations") or {})


def csv(value: str | None) -> set[str]:
    return {part for part in (value or "").split(",") if part}


def referencing(resources, target_urn: str, resource_type: str, prop: str = "bucket"):
    """Resources of `resource_type` whose `prop` depends on `target_urn`."""
    for resource in resources:
        if resource.resource_type != resource_type:
            continue
        deps = (resource.property_dependencies or {}).get(prop) or []
        if any(dep.urn == target_urn for dep in deps):
            yield resource


def is_aws(resource_type: str) -> bool:
    return resource_type.startswith("aws:") or resource_type == "pulumi:providers:aws"


def container_policy_check(predicate, problem: str):
    """A check that reports every container of a workload for which `predicate` fails.

    `predicate(container, pod)` returns True when the container is compliant.
    """
    def check(args, report):
        pod = pod_spec(args.resource_type, args.props)
        if pod is None:
            return
        for container in containers(pod):
            if not predicate(container, pod):
                report(f"{args.resource_type.rsplit(':', 1)[-1]} '{args.name}', container "
                       f"'{container.get('name')}': {problem}")
    return check


def security_context(container: dict[str, Any], pod: dict[str, Any], key: str):
    """A container's effective securityContext setting (container overrides pod)."""
    own = (container.get("securityContext") or {}).get(key)
    return own if own is not None else (pod.get("securityContext") or {}).get(key)


def taggable(resource_type: str) -> bool:
    """Whether a provider type accepts tags/labels, from the installed provider SDK itself."""
    import importlib
    import inspect

    if resource_type.startswith("kubernetes:"):
        return not resource_type.endswith("List")
    package, _, rest = resource_type.partition(":")
    if package not in ("aws", "openstack") or "/" not in rest:
        return False
    module, _, class_name = rest.partition(":")
    module_name = module.split("/", 1)[0]
    try:
        sdk = importlib.import_module(f"pulumi_{package}" + ("" if module_name == "index" else f".{module_name}"))
        params = inspect.signature(getattr(sdk, class_name)._internal_init).parameters
    except (ImportError, AttributeError, ValueError):
        return False
    return "tags" in params or (package == "openstack" and "metadata" in params)
