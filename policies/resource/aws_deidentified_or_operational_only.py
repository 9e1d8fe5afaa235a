"""The AWS zone handles only de-identified and operational data."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import data_class, is_aws

META = Meta(
    id="aws-deidentified-or-operational-only",
    description="AWS resources must be labelled medplat:data-class 'deidentified' or 'operational'.",
    severity=Severity.HIGH,
    rationale="Pseudonymized data is still personal data; only data that no longer identifies a patient, "
              "and the platform's own operational data, may be processed on AWS.",
    remediation="Keep pseudonymized/PHI processing in the EU PHI zone; anonymize before export to AWS.",
    applies=lambda resource_type, _props: is_aws(resource_type) and not resource_type.startswith("pulumi:providers:"),
)
ALLOWED = ("deidentified", "operational")


def check(args, report):
    if not is_aws(args.resource_type) or args.resource_type.startswith("pulumi:providers:"):
        return
    data = data_class(args.resource_type, args.props)
    if data is not None and data not in ALLOWED:
        report(f"'{args.name}' is labelled {data!r}; the AWS zone takes only {' or '.join(ALLOWED)} data")


POLICY = MedplatResourcePolicy(META, check)
