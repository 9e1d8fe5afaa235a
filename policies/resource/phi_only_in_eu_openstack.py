"""PHI and key material live only in the EU zone (OpenStack) or at the hospital edge."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import SENSITIVE, data_class, is_aws, labels

META = Meta(
    id="phi-only-in-eu-openstack",
    description="Resources holding PHI or key material must be in the EU PHI zone (OpenStack) or an edge site.",
    severity=Severity.CRITICAL,
    rationale="Identifiable health data and the keys protecting it must stay with EU-jurisdiction providers; "
              "a US-owned cloud falls under third-country access laws (GDPR Art. 44).",
    remediation="Move the resource into the EuPhiZone stack, or de-identify the data before it reaches AWS "
                "and label the resource 'deidentified'.",
    # Every resource that declares a data class: each one is checked for where that class may live.
    applies=lambda resource_type, props: data_class(resource_type, props) is not None,
)


def check(args, report):
    data = data_class(args.resource_type, args.props)
    if data not in SENSITIVE:
        return
    zone = labels(args.resource_type, args.props).get("medplat:zone")
    if is_aws(args.resource_type):
        report(f"{args.resource_type} '{args.name}' holds {data} data on AWS; {data} may live only in the "
               "EU PHI zone on OpenStack or at an edge site")
    elif zone == "analytics":
        report(f"'{args.name}' holds {data} data in the analytics zone")


POLICY = MedplatResourcePolicy(META, check)
