"""No compute gets a public address."""
from collections.abc import Mapping

from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy

META = Meta(
    id="no-public-ip-phi-compute",
    description="Magnum clusters, EC2 subnets/instances and ECS services get no public or floating IPs.",
    severity=Severity.CRITICAL,
    rationale="Compute that processes health data is reachable only through the controlled ingress.",
    remediation="Set floating_ip_enabled / map_public_ip_on_launch / assign_public_ip / "
                "associate_public_ip_address to false.",
    resource_types=("openstack:containerinfra/cluster:Cluster", "openstack:containerinfra/clusterTemplate:ClusterTemplate",
                    "aws:ec2/subnet:Subnet", "aws:ec2/instance:Instance", "aws:ecs/service:Service"),
)
FLAGS = {
    "openstack:containerinfra/cluster:Cluster": ("floatingIpEnabled",),
    "openstack:containerinfra/clusterTemplate:ClusterTemplate": ("floatingIpEnabled",),
    "aws:ec2/subnet:Subnet": ("mapPublicIpOnLaunch",),
    "aws:ec2/instance:Instance": ("associatePublicIpAddress",),
    "aws:ecs/service:Service": ("networkConfiguration", "assignPublicIp"),
}


def check(args, report):
    path = FLAGS[args.resource_type]
    node = args.props
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    # Magnum enables floating IPs unless told otherwise, so absence counts as public there.
    public = node is True or (node is None and args.resource_type.startswith("openstack:containerinfra"))
    if public:
        report(f"'{args.name}' would get a public IP ({'.'.join(path)} is {node!r})")


POLICY = MedplatResourcePolicy(META, check)
