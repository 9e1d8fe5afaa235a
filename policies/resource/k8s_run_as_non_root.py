"""Containers run as a non-root user."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import WORKLOAD_KINDS, container_policy_check, security_context, has_pod

META = Meta(
    id="k8s-run-as-non-root",
    description="Pods and containers set runAsNonRoot=true and no UID 0.",
    severity=Severity.HIGH,
    rationale="A process running as root turns a container escape into node compromise.",
    remediation="Set securityContext.runAsNonRoot=true and a runAsUser >= 1000.",
    resource_types=tuple(WORKLOAD_KINDS),
    applies=has_pod,
)


def compliant(container, pod) -> bool:
    return security_context(container, pod, "runAsNonRoot") is True and \
        security_context(container, pod, "runAsUser") != 0


POLICY = MedplatResourcePolicy(META, container_policy_check(compliant, "may run as root"))
