"""Containers declare CPU and memory limits."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import WORKLOAD_KINDS, container_policy_check, has_pod

META = Meta(
    id="k8s-resource-limits",
    description="Containers set CPU and memory requests and limits.",
    severity=Severity.MEDIUM,
    rationale="One runaway workload must not starve the device adapters of a small edge node.",
    remediation="Set resources.requests and resources.limits for cpu and memory.",
    resource_types=tuple(WORKLOAD_KINDS),
    applies=has_pod,
)


def compliant(container, pod) -> bool:
    resources = container.get("resources") or {}
    return all((resources.get(kind) or {}).get(res) for kind in ("limits", "requests") for res in ("cpu", "memory"))


POLICY = MedplatResourcePolicy(META, container_policy_check(compliant, "has no CPU/memory requests and limits"))
