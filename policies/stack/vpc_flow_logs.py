"""Every VPC records flow logs."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatStackPolicy
from medplat.policies.lib import referencing

META = Meta(
    id="vpc-flow-logs",
    description="Every VPC has a flow log capturing ALL traffic.",
    severity=Severity.MEDIUM,
    rationale="Network flow records are needed to scope an incident and detect exfiltration.",
    remediation="Add an aws.ec2.FlowLog with vpc_id and traffic_type ALL (DeidAnalyticsZone does).",
    scope=lambda resources: [r.urn for r in resources if r.resource_type == "aws:ec2/vpc:Vpc"],
)


def check(args, report):
    for vpc in (r for r in args.resources if r.resource_type == "aws:ec2/vpc:Vpc"):
        logs = [f for f in referencing(args.resources, vpc.urn, "aws:ec2/flowLog:FlowLog", "vpcId")
                if f.props.get("trafficType") == "ALL"]
        if not logs:
            report(f"VPC '{vpc.name}' has no flow log capturing ALL traffic", vpc.urn)


POLICY = MedplatStackPolicy(META, check)
