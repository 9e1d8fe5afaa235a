"""Containers drop all Linux capabilities and use the runtime's seccomp profile."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import WORKLOAD_KINDS, container_policy_check, security_context, has_pod

META = Meta(
    id="k8s-capabilities-dropped",
    description="Containers drop ALL capabilities, add none, and run with seccomp RuntimeDefault.",
    severity=Severity.HIGH,
    rationale="Capabilities such as NET_RAW or SYS_ADMIN give a compromised process kernel-level powers.",
    remediation="Set capabilities.drop=[ALL] and seccompProfile.type=RuntimeDefault.",
    resource_types=tuple(WORKLOAD_KINDS),
    applies=has_pod,
)


def compliant(container, pod) -> bool:
    capabilities = (container.get("securityContext") or {}).get("capabilities") or {}
    seccomp = (security_context(container, pod, "seccompProfile") or {}).get("type")
    return "ALL" in (capabilities.get("drop") or []) and not capabilities.get("add") and \
        seccomp in ("RuntimeDefault", "Localhost")


POLICY = MedplatResourcePolicy(META, container_policy_check(
    compliant, "does not drop all capabilities with seccomp RuntimeDefault"))
