"""Customer-managed KMS keys rotate."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy

META = Meta(
    id="kms-key-rotation",
    description="AWS KMS keys have automatic rotation enabled.",
    severity=Severity.MEDIUM,
    rationale="Rotation limits how much data one key version protects and how long a leaked key is useful.",
    remediation="Set enable_key_rotation=True.",
    resource_types=("aws:kms/key:Key",),
)


def check(args, report):
    if args.props.get("customerMasterKeySpec", "SYMMETRIC_DEFAULT") == "SYMMETRIC_DEFAULT" and \
            args.props.get("enableKeyRotation") is not True:
        report(f"KMS key '{args.name}' does not rotate")


POLICY = MedplatResourcePolicy(META, check)
