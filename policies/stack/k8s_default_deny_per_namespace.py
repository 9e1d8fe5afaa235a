"""Every namespace starts from deny-all."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatStackPolicy

META = Meta(
    id="k8s-default-deny-per-namespace",
    description="Every namespace has a NetworkPolicy that selects all pods and denies all ingress and egress.",
    severity=Severity.HIGH,
    rationale="Without a default deny, every pod can reach every other pod and the internet; allows must be "
              "explicit.",
    remediation="Create namespaces with restricted_namespace(), which adds default-deny-all.",
    scope=lambda resources: [r.urn for r in resources if r.resource_type == "kubernetes:core/v1:Namespace"],
)


def _namespace_name(resource) -> str | None:
    return (resource.props.get("metadata") or {}).get("name")


def check(args, report):
    denied = set()
    for policy in (r for r in args.resources if r.resource_type == "kubernetes:networking.k8s.io/v1:NetworkPolicy"):
        spec = policy.props.get("spec") or {}
        if spec.get("podSelector") == {} and set(spec.get("policyTypes") or []) == {"Ingress", "Egress"} \
                and not spec.get("ingress") and not spec.get("egress"):
            denied.add((policy.props.get("metadata") or {}).get("namespace"))
    for namespace in (r for r in args.resources if r.resource_type == "kubernetes:core/v1:Namespace"):
        if _namespace_name(namespace) not in denied:
            report(f"namespace '{_namespace_name(namespace)}' has no default-deny NetworkPolicy", namespace.urn)


POLICY = MedplatStackPolicy(META, check)
