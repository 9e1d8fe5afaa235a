"""`EdgeSite`: one hospital's k3s site — device adapters, anonymization, store-and-forward.

The namespace enforces Pod Security Admission `restricted`; a default-deny NetworkPolicy
covers ingress and egress, and each workload gets only the allows its spec declares.
The EU zone's endpoint, CA certificate, this site's mTLS enrollment (the name its CSR must
carry; the site's key is generated at the site and never leaves it) and the site policy come
from the EU PHI stack through a StackReference.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from medplat.components.base import LabelledComponent
from medplat.components.broker_logins import BrokerLogins, BrokerLoginsArgs, acl_users
from medplat.components.labels import Labels
from medplat.components.workload import PeerContext, Workload, WorkloadArgs
from medplat.components.workload_spec import WorkloadSpec

PSA_RESTRICTED = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")
} | {f"pod-security.kubernetes.io/{mode}-version": "latest" for mode in ("enforce", "audit", "warn")}


BROKER_PASSWORDS_SECRET = "mqtt-broker-passwords"
BROKER = "mqtt-broker"
PASSWORDS_DIGEST_ANNOTATION = "medplat.io/broker-passwords-sha256"


@dataclass
class EdgeSiteArgs:
    site: str
    hospital: str
    cloud_stack: str
    device_cidrs: list[str]
    workloads: list[WorkloadSpec]
    images: dict[str, str]  # workload name -> pinned image reference
    buffer_size: str = "50Gi"
    storage_class: str = "local-path"
    extra_workloads: list[WorkloadSpec] = field(default_factory=list)


def restricted_namespace(
    component: LabelledComponent, name: str, opts: pulumi.ResourceOptions | None = None,
) -> k8s.core.v1.Namespace:
    """A namespace that enforces PSA `restricted` and denies all traffic unless allowed."""
    namespace = component.child(
        k8s.core.v1.Namespace, "namespace", opts=opts, metadata={"name": name, "labels": dict(PSA_RESTRICTED)},
    )
    ns = namespace.metadata.name
    component.child(
        k8s.networking.v1.NetworkPolicy, "default-deny", opts=opts,
        metadata={"namespace": ns, "name": "default-deny-all"},
        spec={"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    )
    component.child(
        k8s.networking.v1.NetworkPolicy, "allow-dns", opts=opts,
        metadata={"namespace": ns, "name": "allow-dns-egress"},
        spec={
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
            }],
        },
    )
    return namespace


class EdgeSite(LabelledComponent):
    def __init__(self, name: str, args: EdgeSiteArgs, labels: Labels, opts: pulumi.ResourceOptions | None = None):
        super().__init__("medplat:components:EdgeSite", name, labels, opts)
        specs = [*args.workloads, *args.extra_workloads]
        # The StackReference is no Kubernetes object: it must not inherit the k3s provider.
        self.cloud = pulumi.StackReference(
            f"{name}-cloud", stack_name=args.cloud_stack, opts=pulumi.ResourceOptions(parent=self),
        )
        # Take this site's slice of the EU stack's outputs once: the outputs grow with the
        # number of sites, and every lookup would otherwise walk all of them again.
        cloud = self.cloud.outputs.apply(lambda outputs: _site_slice(outputs, args.site, args.cloud_stack))
        enrollment = cloud.apply(lambda c: c["enrollment"])
        site_policy = cloud.apply(lambda c: c["policy"])
        ingest_endpoint = cloud.apply(lambda c: c["ingestEndpoint"])

        self.namespace = restricted_namespace(self, f"medplat-{args.site}")
        ns = self.namespace.metadata.name
        # The site's key is generated here and never leaves it: the enrollment job makes a CSR
        # for this name, has it signed by the Barbican-held CA and installs the Secret named
        # here. Pulumi publishes only what the CSR must say and the CA to trust.
        self.child(
            k8s.core.v1.ConfigMap, "mtls-enrollment",
            metadata={"namespace": ns, "name": "mtls-enrollment"},
            data={
                "enrollment.json": enrollment.apply(lambda e: json.dumps(e, sort_keys=True, indent=2)),
                "ca.crt": cloud.apply(lambda c: c["caCertPem"]),
            },
        )
        policy_map = self.child(
            k8s.core.v1.ConfigMap, "site-policy",
            metadata={"namespace": ns, "name": "site-policy"},
            data={
                "site-policy.json": site_policy.apply(lambda p: json.dumps(p, sort_keys=True, indent=2)),
                "cloud-endpoint": ingest_endpoint,
            },
        )
        ingress_cidr = cloud.apply(lambda c: c["ingressCidr"])
        peers = PeerContext(
            cidrs={"@devices": list(args.device_cidrs), "@cloud": [ingress_cidr]},
            workload_ports={s.name: [p.port for p in s.ports] for s in specs},
            zones={"@cloud": "eu-phi", "@devices": "edge"},
        )
        # Broker logins for every ACL user deployed here: generated passwords, the broker's hashed
        # password file; no credential passes through stack config.
        broker = next((s for s in specs if s.name == BROKER), None)
        self.broker_logins = None if broker is None else BrokerLogins(
            f"{name}-broker-logins",
            BrokerLoginsArgs(namespace=ns, users=[u for u in acl_users(broker.config_files.get("acl", ""))
                                                   if u in {s.name for s in specs}],
                             passwords_secret_name=BROKER_PASSWORDS_SECRET),
            labels=self.labels, opts=pulumi.ResourceOptions(parent=self),
        )
        logins = self.broker_logins.login_secrets if self.broker_logins else {}
        passwords_secret = self.broker_logins.passwords_secret_name if self.broker_logins else BROKER_PASSWORDS_SECRET
        self.workloads: dict[str, Workload] = {}
        for spec in specs:
            volume_sizes = {v.name: args.buffer_size for v in spec.volumes} if "store-and-forward" in spec.roles else {}
            self.workloads[spec.name] = Workload(
                f"{name}-{spec.name}",
                WorkloadArgs(
                    spec=spec, image=args.images[spec.name], namespace=ns, peers=peers,
                    secret_names={"mtls-client": enrollment.apply(lambda e: e["secretName"]),
                                  BROKER_PASSWORDS_SECRET: passwords_secret},
                    broker_login_secret=logins.get(spec.name),
                    pod_annotations={PASSWORDS_DIGEST_ANNOTATION: self.broker_logins.passwords_digest}
                    if spec.name == BROKER and self.broker_logins else {},
                    config_map_names={"site-policy": policy_map.metadata.name},
                    storage_class=args.storage_class, volume_sizes=volume_sizes,
                ),
                labels=self.labels,
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.cloud_endpoint = ingest_endpoint
        self.finish({
            "namespace": ns,
            "workloads": sorted(self.workloads),
            "cloudEndpoint": ingest_endpoint,
        })


CLOUD_OUTPUTS = ("caCertPem", "ingestEndpoint", "ingressCidr", "siteEnrollments", "sitePolicies")


def _site_slice(outputs: dict, site: str, cloud_stack: str) -> dict:
    missing = [key for key in CLOUD_OUTPUTS if key not in outputs]
    if missing:
        raise ValueError(f"stack {cloud_stack!r} has no output {', '.join(missing)}: is it an EU PHI zone stack?")
    if site not in outputs["siteEnrollments"] or site not in outputs["sitePolicies"]:
        raise ValueError(f"stack {cloud_stack!r} does not admit site {site!r}: add it to medplat:euPhi.edgeSites")
    return {
        "enrollment": outputs["siteEnrollments"][site],
        "policy": outputs["sitePolicies"][site],
        **{key: outputs[key] for key in ("caCertPem", "ingestEndpoint", "ingressCidr")},
    }
