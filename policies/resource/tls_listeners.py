"""Listeners speak TLS (or pass TLS through to an mTLS endpoint)."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy

META = Meta(
    id="tls-listeners",
    description="AWS load-balancer listeners use HTTPS/TLS with a TLS 1.2+ policy; Octavia listeners either "
                "pass TCP 443 through to an mTLS endpoint or terminate HTTPS with mandatory client certificates.",
    severity=Severity.HIGH,
    rationale="Health data in transit must be encrypted; plain HTTP listeners expose it on the network.",
    remediation="Use protocol HTTPS with an ELBSecurityPolicy-TLS13-* policy, or a TCP 443 passthrough to "
                "the mTLS ingest.",
    resource_types=("aws:lb/listener:Listener", "aws:alb/listener:Listener", "openstack:loadbalancer/listener:Listener"),
)
TLS_POLICIES = ("ELBSecurityPolicy-TLS13-", "ELBSecurityPolicy-TLS-1-2-", "ELBSecurityPolicy-FS-1-2-")


def check(args, report):
    props = args.props
    protocol = props.get("protocol")
    if args.resource_type.startswith("openstack:"):
        if protocol == "TCP" and props.get("protocolPort") == 443:
            return
        if protocol == "TERMINATED_HTTPS" and props.get("clientAuthentication") == "MANDATORY":
            return
        report(f"Octavia listener '{args.name}' is {protocol} on {props.get('protocolPort')}; expected TCP 443 "
               "passthrough or TERMINATED_HTTPS with mandatory client certificates")
        return
    if protocol not in ("HTTPS", "TLS"):
        report(f"listener '{args.name}' uses {protocol}; use HTTPS or TLS")
    elif not str(props.get("sslPolicy", "")).startswith(TLS_POLICIES):
        report(f"listener '{args.name}' uses TLS policy {props.get('sslPolicy')!r}; require TLS 1.2 or newer")


POLICY = MedplatResourcePolicy(META, check)
