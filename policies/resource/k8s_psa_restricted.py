"""Namespaces enforce Pod Security Admission 'restricted'."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy

META = Meta(
    id="k8s-psa-restricted",
    description="Every namespace enforces the Pod Security Standard 'restricted'.",
    severity=Severity.HIGH,
    rationale="Admission control rejects unhardened pods even if a manifest slips past review.",
    remediation="Label the namespace pod-security.kubernetes.io/enforce=restricted.",
    resource_types=("kubernetes:core/v1:Namespace",),
)


def check(args, report):
    labels = (args.props.get("metadata") or {}).get("labels") or {}
    if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
        report(f"namespace '{args.name}' does not enforce Pod Security 'restricted' "
               f"(enforce={labels.get('pod-security.kubernetes.io/enforce')!r})")


POLICY = MedplatResourcePolicy(META, check)
