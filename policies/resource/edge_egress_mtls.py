"""Workloads that talk edge <-> cloud present PlatformPki certificates (mTLS)."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import WORKLOAD_KINDS, annotations, csv, pod_spec, has_pod

META = Meta(
    id="edge-egress-mtls",
    description="A workload that sends to the cloud (@cloud) mounts the mtls-client credential; one that "
                "accepts edge sites (@edge-sites) mounts the mtls-server credential.",
    severity=Severity.HIGH,
    rationale="Edge-to-cloud traffic crosses the internet; both ends must authenticate with certificates "
              "from the platform CA.",
    remediation="Declare `secrets: [{name: mtls-client, ...}]` (or mtls-server) in the workload spec.",
    resource_types=tuple(WORKLOAD_KINDS),
    applies=has_pod,
)


def check(args, report):
    pod = pod_spec(args.resource_type, args.props) or {}
    secrets = {(v.get("secret") or {}).get("secretName") for v in pod.get("volumes") or []}
    egress = csv(annotations(args.props).get("medplat.io/egress"))
    if "@cloud" in egress and "mtls-client" not in secrets:
        report(f"'{args.name}' sends to the cloud but mounts no mtls-client certificate")
    ingress_ports = [p for c in pod.get("containers") or [] for p in c.get("ports") or []]
    if "@edge-sites" in csv(annotations(args.props).get("medplat.io/ingress")) and ingress_ports \
            and "mtls-server" not in secrets:
        report(f"'{args.name}' accepts edge sites but mounts no mtls-server certificate")


POLICY = MedplatResourcePolicy(META, check)
