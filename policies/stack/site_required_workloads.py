"""Every site runs an audit log, and every edge site a store-and-forward service."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatStackPolicy
from medplat.policies.lib import WORKLOAD_KINDS, annotations, csv, labels

REQUIRED = {"edge": {"audit", "store-and-forward"}, "eu-phi": {"audit"}}

META = Meta(
    id="site-required-workloads",
    description="Each edge site runs workloads with the 'audit' and 'store-and-forward' roles; the EU PHI "
                "zone runs an 'audit' workload.",
    severity=Severity.HIGH,
    rationale="Without a local audit log, access to PHI at a site goes unrecorded; without store-and-forward, "
              "an uplink outage loses clinical data.",
    remediation="Add audit-log (and edge-forwarder at edge sites) to the stack's workloads.",
    scope=lambda resources: [r.urn for r in resources if r.resource_type == "kubernetes:core/v1:Namespace"
                             and labels(r.resource_type, r.props).get("medplat:zone") in REQUIRED],
)


def check(args, report):
    sites: dict[tuple[str, str], set[str]] = {}
    anchors = {}
    for resource in args.resources:
        if resource.resource_type != "kubernetes:core/v1:Namespace":
            continue
        found = labels(resource.resource_type, resource.props)
        if found.get("medplat:zone") in REQUIRED:
            name = (resource.props.get("metadata") or {}).get("name")
            sites[(found["medplat:zone"], name)] = set()
            anchors[(found["medplat:zone"], name)] = resource
    for resource in args.resources:
        if resource.resource_type not in WORKLOAD_KINDS:
            continue
        namespace = (resource.props.get("metadata") or {}).get("namespace")
        for (_zone, name), roles in sites.items():
            if name == namespace:
                roles |= csv(annotations(resource.props).get("medplat.io/roles"))
    for (zone, name), roles in sorted(sites.items()):
        missing = sorted(REQUIRED[zone] - roles)
        if missing:
            report(f"{zone} namespace '{name}' runs no workload with role {', '.join(missing)}",
                   anchors[(zone, name)].urn)


POLICY = MedplatStackPolicy(META, check)
