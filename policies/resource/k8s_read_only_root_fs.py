"""Containers have a read-only root filesystem."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import WORKLOAD_KINDS, container_policy_check, has_pod

META = Meta(
    id="k8s-read-only-root-fs",
    description="Containers set readOnlyRootFilesystem=true.",
    severity=Severity.MEDIUM,
    rationale="An immutable image cannot be altered at run time to persist an attacker's tools.",
    remediation="Set securityContext.readOnlyRootFilesystem=true; mount an emptyDir for scratch space.",
    resource_types=tuple(WORKLOAD_KINDS),
    applies=has_pod,
)

POLICY = MedplatResourcePolicy(META, container_policy_check(
    lambda c, pod: (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is True,
    "root filesystem is writable"))
