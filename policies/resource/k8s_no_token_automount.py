"""Pods and service accounts do not mount API tokens."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import WORKLOAD_KINDS, pod_spec

META = Meta(
    id="k8s-no-token-automount",
    description="ServiceAccounts and pods set automountServiceAccountToken=false.",
    severity=Severity.MEDIUM,
    rationale="medplat workloads never call the Kubernetes API; a mounted token only helps an attacker.",
    remediation="Set automountServiceAccountToken: false on the ServiceAccount and the pod.",
    resource_types=(*WORKLOAD_KINDS, "kubernetes:core/v1:ServiceAccount"),
)


def check(args, report):
    if args.resource_type == "kubernetes:core/v1:ServiceAccount":
        if args.props.get("automountServiceAccountToken") is not False:
            report(f"ServiceAccount '{args.name}' automounts its token")
        return
    pod = pod_spec(args.resource_type, args.props)
    if pod is not None and pod.get("automountServiceAccountToken") is not False:
        report(f"'{args.name}' automounts a service-account token")


POLICY = MedplatResourcePolicy(META, check)
