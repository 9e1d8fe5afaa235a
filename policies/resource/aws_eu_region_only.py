"""AWS is used only in EU regions."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import is_aws
from medplat.residency import residency

META = Meta(
    id="aws-eu-region-only",
    description="AWS providers and resources must be in an EU region.",
    severity=Severity.CRITICAL,
    rationale="Even de-identified research data stays in the EU; processing elsewhere is a transfer under "
              "GDPR Chapter V and breaks the platform's residency promise.",
    remediation="Set aws:region (or the resource's region) to an EU region listed in compliance/residency.yaml.",
    applies=lambda resource_type, _props: is_aws(resource_type),
)


def check(args, report):
    if not is_aws(args.resource_type):
        return
    region = args.props.get("region")
    if args.resource_type == "pulumi:providers:aws" and not region:
        report("the AWS provider sets no region; it must be pinned to an EU region")
        return
    if isinstance(region, str) and region:
        problem = residency().aws_region_problem(region)
        if problem:
            report(f"'{args.name}': {problem}")


POLICY = MedplatResourcePolicy(META, check)
