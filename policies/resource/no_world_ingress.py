"""Nothing is open to the whole internet, except 443 on the ingress load balancer."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy

META = Meta(
    id="no-world-ingress",
    description="Security groups and NetworkPolicies admit no 0.0.0.0/0 or ::/0 ingress, except TCP 443 "
                "on the ingress load balancer.",
    severity=Severity.CRITICAL,
    rationale="Every open port is attack surface; PHI systems accept only known peers (edge sites by CIDR, "
              "devices by VLAN).",
    remediation="Restrict the source to the edge sites' egress CIDRs or the device VLAN.",
    resource_types=("openstack:networking/secGroupRule:SecGroupRule", "aws:ec2/securityGroup:SecurityGroup",
                    "aws:ec2/securityGroupRule:SecurityGroupRule", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                    "kubernetes:networking.k8s.io/v1:NetworkPolicy"),
)
WORLD = {"0.0.0.0/0", "::/0"}


def _https_only(from_port, to_port) -> bool:
    return from_port == 443 and to_port == 443


def check(args, report):
    props = args.props
    kind = args.resource_type
    if kind == "openstack:networking/secGroupRule:SecGroupRule":
        if props.get("direction") != "ingress":
            return
        source = props.get("remoteIpPrefix")
        if (source in WORLD or (not source and not props.get("remoteGroupId"))) and not _https_only(
                props.get("portRangeMin"), props.get("portRangeMax")):
            report(f"rule '{args.name}' opens ports {props.get('portRangeMin')}-{props.get('portRangeMax')} to the world")
    elif kind == "aws:ec2/securityGroup:SecurityGroup":
        for rule in props.get("ingress") or []:
            if WORLD & set(rule.get("cidrBlocks") or []) | WORLD & set(rule.get("ipv6CidrBlocks") or []):
                if not _https_only(rule.get("fromPort"), rule.get("toPort")):
                    report(f"security group '{args.name}' opens {rule.get('fromPort')}-{rule.get('toPort')} to the world")
    elif kind in ("aws:ec2/securityGroupRule:SecurityGroupRule", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"):
        if props.get("type", "ingress") == "ingress" and (
                WORLD & set(props.get("cidrBlocks") or []) or props.get("cidrIpv4") in WORLD):
            if not _https_only(props.get("fromPort"), props.get("toPort")):
                report(f"rule '{args.name}' opens {props.get('fromPort')}-{props.get('toPort')} to the world")
    else:
        for rule in (props.get("spec") or {}).get("ingress") or []:
            for peer in rule.get("from") or []:
                if (peer.get("ipBlock") or {}).get("cidr") in WORLD:
                    report(f"NetworkPolicy '{args.name}' admits ingress from the whole internet")


POLICY = MedplatResourcePolicy(META, check)
