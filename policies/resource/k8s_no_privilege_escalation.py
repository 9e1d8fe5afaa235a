"""No privileged containers, no privilege escalation, no host namespaces."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import WORKLOAD_KINDS, containers, pod_spec, has_pod

META = Meta(
    id="k8s-no-privilege-escalation",
    description="Containers are not privileged and set allowPrivilegeEscalation=false; pods use no host "
                "network, PID or IPC namespace.",
    severity=Severity.CRITICAL,
    rationale="Privileged pods and host namespaces bypass container isolation entirely.",
    remediation="Set privileged=false and allowPrivilegeEscalation=false; remove hostNetwork/hostPID/hostIPC.",
    resource_types=tuple(WORKLOAD_KINDS),
    applies=has_pod,
)


def check(args, report):
    pod = pod_spec(args.resource_type, args.props)
    if pod is None:
        return
    for namespace in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(namespace):
            report(f"'{args.name}' uses {namespace}")
    for container in containers(pod):
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            report(f"'{args.name}', container '{container.get('name')}' is privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            report(f"'{args.name}', container '{container.get('name')}' allows privilege escalation")


POLICY = MedplatResourcePolicy(META, check)
