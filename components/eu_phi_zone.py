"""`EuPhiZone`: the EU PHI zone on an EU OpenStack provider.

Private network only; the single way in is an Octavia TCP listener on 443 whose
`allowed_cidrs` and security group admit just the edge sites' egress ranges (mTLS is
terminated by the ingest workload itself). PHI rests on the provider's encrypted volume
type and in versioned Swift containers; data keys are generated inside Barbican by orders and
the mTLS CA key is a Barbican secret used outside Pulumi (sites and services enroll with CSRs,
`medplat.barbican_ca`), so no private key material passes through config, state or outputs. The PHI workloads run on a Magnum
cluster without floating IPs, in a PSA-restricted, default-deny namespace.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s
import pulumi_openstack as openstack

from medplat.components.base import LabelledComponent
from medplat.components.edge_site import restricted_namespace
from medplat.components.labels import Labels
from medplat.components.pki import PlatformPki, PlatformPkiArgs
from medplat.components.workload import PeerContext, Workload, WorkloadArgs
from medplat.components.workload_spec import WorkloadSpec

INGEST_NODE_PORT = 30443
STATE_TOKEN_FILE = "/etc/medplat/state-token/token"


@dataclass
class ComplianceRunArgs:
    """`medplat compliance run` per stack: the job's spec and image, and where each stack's state is read."""

    spec: WorkloadSpec
    image: str
    stacks: list[str]
    pulumi_organization: str
    pulumi_project: str
    pulumi_api: str
    state_backend_cidrs: list[str]
    token_secret: str                 # operator-made Secret (key `token`): reads these stacks' state
    audit_token_secret: str           # operator-made Secret (key `token`): audit-log scope audit.write
    schedule: str | None = None       # overrides the spec's cron


def compliance_spec(run: ComplianceRunArgs, stack: str) -> WorkloadSpec:
    """The compliance-run spec for one stack: its own name, volume and NetworkPolicy, and args that
    name the stack to read (`ORG/PROJECT/STACK` on the state backend)."""
    schedule = run.spec.schedule
    assert schedule is not None, "the compliance-run workload is a scheduled job"
    args = [*schedule.args, "--pulumi-stack", f"{run.pulumi_organization}/{run.pulumi_project}/{stack}",
            "--pulumi-api", run.pulumi_api, "--pulumi-token-file", STATE_TOKEN_FILE]
    return run.spec.model_copy(update={
        "name": f"{run.spec.name}-{stack}",
        "schedule": schedule.model_copy(update={"args": args, "cron": run.schedule or schedule.cron}),
    })


@dataclass
class EdgeSiteIngress:
    site: str
    egress_cidr: str


@dataclass
class EuPhiZoneArgs:
    organization: str
    country: str
    region: str
    network_cidr: str
    external_network_id: str
    encrypted_volume_type: str
    edge_sites: list[EdgeSiteIngress]
    compute_image: str
    compute_flavor: str
    master_flavor: str
    masters: int
    nodes: int
    db_flavor: str
    db_size_gb: int
    db_version: str
    backup_volume_gb: int
    workloads: list[WorkloadSpec]
    images: dict[str, str]
    egress_data_classes: list[str]
    ca_cert_pem: str                  # the platform CA certificate (public)
    ca_key_ref: str                   # Barbican reference of the CA key
    analytics_bucket_cidrs: list[str] = field(default_factory=list)  # S3 of the analytics zone
    dns_nameservers: list[str] = field(default_factory=list)
    compliance_run: ComplianceRunArgs | None = None


class EuPhiZone(LabelledComponent):
    def __init__(self, name: str, args: EuPhiZoneArgs, labels: Labels, opts: pulumi.ResourceOptions | None = None):
        super().__init__("medplat:components:EuPhiZone", name, labels.with_class("phi"), opts)
        edge_cidrs = [s.egress_cidr for s in args.edge_sites]

        # --- network: private only, egress through the router's SNAT -------------------
        network = self.child(openstack.networking.Network, "net", data_class="operational",
                             admin_state_up=True, port_security_enabled=True)
        subnet = self.child(openstack.networking.Subnet, "subnet", data_class="operational",
                            network_id=network.id, cidr=args.network_cidr, ip_version=4,
                            dns_nameservers=args.dns_nameservers or None)
        router = self.child(openstack.networking.Router, "router", data_class="operational",
                            external_network_id=args.external_network_id, enable_snat=True)
        self.child(openstack.networking.RouterInterface, "router-if", data_class="operational",
                   router_id=router.id, subnet_id=subnet.id)

        # --- security group: default deny, 443 only from the edge sites ---------------
        ingress_sg = self.child(openstack.networking.SecGroup, "edge-ingress-sg", data_class="operational",
                                description="mTLS ingress from edge sites only", delete_default_rules=True)
        for site in args.edge_sites:
            self.child(openstack.networking.SecGroupRule, f"edge-ingress-{site.site}", data_class="operational",
                       security_group_id=ingress_sg.id, direction="ingress", ethertype="IPv4",
                       protocol="tcp", port_range_min=443, port_range_max=443, remote_ip_prefix=site.egress_cidr,
                       description=f"edge site {site.site} -> ingest (mTLS)")
        self.child(openstack.networking.SecGroupRule, "edge-ingress-to-nodes", data_class="operational",
                   security_group_id=ingress_sg.id, direction="egress", ethertype="IPv4", protocol="tcp",
                   port_range_min=INGEST_NODE_PORT, port_range_max=INGEST_NODE_PORT,
                   remote_ip_prefix=args.network_cidr, description="load balancer -> ingest node port")

        # --- key management: Barbican generates the keys (orders), never config -------
        keys = {
            purpose: self.child(openstack.keymanager.OrderV1, f"key-{purpose}", data_class="key-material",
                                type="key", meta={"algorithm": "aes", "bit_length": 256, "mode": "gcm",
                                                  "name": f"medplat-{purpose}"})
            for purpose in ("phi-archive", "pseudonymization", "audit-archive")
        }

        # --- storage: encrypted volume type, versioned Swift containers -------------------
        backup = self.child(openstack.blockstorage.Volume, "phi-backup", data_class="phi",
                            size=args.backup_volume_gb, volume_type=args.encrypted_volume_type,
                            description="PHI database backups (encrypted volume type)")
        archive = self.child(openstack.objectstorage.Container, "phi-archive", data_class="phi",
                             versioning=True, force_destroy=False)
        audit_archive = self.child(openstack.objectstorage.Container, "audit-archive", data_class="operational",
                                   versioning=True, force_destroy=False)

        # --- database for the PHI workloads (Trove PostgreSQL on the encrypted type) ------
        database = self.child(
            openstack.database.Instance, "phi-db", data_class="phi",
            flavor_id=args.db_flavor, size=args.db_size_gb, volume_type=args.encrypted_volume_type,
            datastore={"type": "postgresql", "version": args.db_version},
            networks=[{"uuid": network.id}],
        )

        # --- Magnum cluster: no floating IPs, private API behind its own LB ---------------
        template = self.child(
            openstack.containerinfra.ClusterTemplate, "k8s-template", data_class="operational",
            coe="kubernetes", image=args.compute_image, flavor=args.compute_flavor,
            master_flavor=args.master_flavor, external_network_id=args.external_network_id,
            fixed_network=network.id, fixed_subnet=subnet.id, floating_ip_enabled=False,
            master_lb_enabled=True, network_driver="calico", volume_driver="cinder",
            docker_volume_size=50, tls_disabled=False, public=False, registry_enabled=False,
            labels={"boot_volume_type": args.encrypted_volume_type,
                    "docker_volume_type": args.encrypted_volume_type,
                    "master_lb_floating_ip_enabled": "false"},
        )
        cluster = self.child(
            openstack.containerinfra.Cluster, "k8s", data_class="phi",
            cluster_template_id=template.id, master_count=args.masters, node_count=args.nodes,
            floating_ip_enabled=False, master_lb_enabled=True,
            fixed_network=network.id, fixed_subnet=subnet.id,
        )

        # --- mTLS ingress: Octavia TCP passthrough on 443, edge CIDRs only ---------------
        lb = self.child(openstack.loadbalancer.LoadBalancer, "ingress-lb", data_class="operational",
                        vip_subnet_id=subnet.id, security_group_ids=[ingress_sg.id])
        listener = self.child(openstack.loadbalancer.Listener, "ingress-443", data_class="operational",
                              loadbalancer_id=lb.id, protocol="TCP", protocol_port=443,
                              allowed_cidrs=edge_cidrs)
        pool = self.child(openstack.loadbalancer.Pool, "ingress-pool", data_class="operational",
                          listener_id=listener.id, protocol="TCP", lb_method="LEAST_CONNECTIONS")
        self.child(openstack.loadbalancer.Monitor, "ingress-health", data_class="operational",
                   pool_id=pool.id, type="TCP", delay=10, timeout=5, max_retries=3)
        self.child(openstack.loadbalancer.Members, "ingress-members", data_class="operational",
                   pool_id=pool.id,
                   members=cluster.node_addresses.apply(lambda nodes: [
                       {"address": node, "protocol_port": INGEST_NODE_PORT}
                       for node in (nodes or [])
                   ]))
        public_ip = self.child(openstack.networking.FloatingIp, "ingress-fip", data_class="operational",
                               pool=args.external_network_id, port_id=lb.vip_port_id,
                               description="public address of the mTLS ingress load balancer")

        # --- PKI and the per-site policy the edge sites pull ------------------------------
        pki = PlatformPki(f"{name}-pki", PlatformPkiArgs(
            organization=args.organization, country=args.country,
            # The zone itself is a client too (its audit log and services calling each other).
            sites=[*(s.site for s in args.edge_sites), "eu-phi"],
            services={"ingest": [f"ingest.{name}.medplat.internal"]},
            ca_cert_pem=args.ca_cert_pem, ca_key_ref=args.ca_key_ref,
        ), labels=self.labels, opts=pulumi.ResourceOptions(parent=self))

        # --- PHI workloads on the cluster ---------------------------------------------------
        kube = k8s.Provider(f"{name}-k8s-provider", kubeconfig=pulumi.Output.secret(cluster.kubeconfig.apply(
            lambda kc: (kc or {})["raw_config"])), enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self))
        k8s_opts = pulumi.ResourceOptions(provider=kube)
        namespace = restricted_namespace(self, "medplat-phi", opts=k8s_opts)
        ns = namespace.metadata.name
        self.child(k8s.storage.v1.StorageClass, "encrypted-sc", data_class="phi", opts=k8s_opts,
                   metadata={"name": "medplat-encrypted"}, provisioner="cinder.csi.openstack.org",
                   parameters={"type": args.encrypted_volume_type}, reclaim_policy="Retain",
                   allow_volume_expansion=True, volume_binding_mode="WaitForFirstConsumer")
        peers = PeerContext(
            cidrs={"@edge-sites": edge_cidrs, "@database": [args.network_cidr],
                   "@analytics-bucket": list(args.analytics_bucket_cidrs)},
            workload_ports={s.name: [p.port for p in s.ports] for s in args.workloads},
            zones={"@edge-sites": "edge", "@database": "eu-phi", "@analytics-bucket": "analytics"},
        )
        self.workloads = {
            spec.name: Workload(
                f"{name}-{spec.name}",
                WorkloadArgs(spec=spec, image=args.images[spec.name], namespace=ns, peers=peers,
                             # installed by enrollment (CSR signed by the Barbican-held CA)
                             secret_names={"mtls-server": pki.service_enrollments["ingest"].secret_name,
                                           "mtls-client": pki.site_enrollments["eu-phi"].secret_name},
                             storage_class="medplat-encrypted"),
                labels=self.labels,
                opts=pulumi.ResourceOptions(parent=self, provider=kube),
            )
            for spec in args.workloads
        }

        self.compliance_runs = {}
        if args.compliance_run is not None:
            run = args.compliance_run
            # The state backend counts as inside the EU zone only when it is addressed on the zone's
            # own network (a self-hosted backend); otherwise the residency policy sees the internet.
            inside = all(ipaddress.ip_network(c).subnet_of(ipaddress.ip_network(args.network_cidr))
                         for c in run.state_backend_cidrs)
            run_peers = PeerContext(cidrs={**peers.cidrs, "@state-backend": list(run.state_backend_cidrs)},
                                    workload_ports=peers.workload_ports,
                                    zones={**peers.zones, **({"@state-backend": "eu-phi"} if inside else {})})
            for stack in run.stacks:
                spec = compliance_spec(run, stack)
                self.compliance_runs[stack] = Workload(
                    f"{name}-{spec.name}",
                    # Tokens the operator stores as Secrets: never in config, state or outputs.
                    WorkloadArgs(spec=spec, image=run.image, namespace=ns, peers=run_peers,
                                 secret_names={"state-token": run.token_secret,
                                               "audit-token": run.audit_token_secret},
                                 storage_class="medplat-encrypted"),
                    labels=self.labels,
                    opts=pulumi.ResourceOptions(parent=self, provider=kube),
                )

        self.ingest_endpoint = public_ip.address.apply(lambda ip: f"https://{ip}:443")
        self.site_enrollments = {site.site: pki.site_enrollments[site.site].to_output() for site in args.edge_sites}
        self.site_policies = {
            s.site: {"site": s.site, "egressDataClasses": sorted(args.egress_data_classes),
                     "refusedDataClasses": ["key-material"], "cloudIngress": "ingest"}
            for s in args.edge_sites
        }
        self.outputs = {
            "ingestEndpoint": self.ingest_endpoint,
            "ingressCidr": public_ip.address.apply(lambda ip: f"{ip}/32"),
            "caCertPem": pki.ca_cert_pem,
            "siteEnrollments": self.site_enrollments,
            "sitePolicies": self.site_policies,
            "keyRefs": {purpose: order.order_ref for purpose, order in keys.items()},
            "phiArchive": archive.name,
            "auditArchive": audit_archive.name,
            "database": database.id,
            "backupVolume": backup.id,
            "cluster": cluster.id,
            "workloads": sorted(self.workloads),
            "complianceRuns": sorted(self.compliance_runs),
        }
        self.finish(self.outputs)

