"""CloudTrail is multi-region, encrypted, and validates its log files."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy

META = Meta(
    id="cloudtrail-log-validation",
    description="CloudTrail trails enable log-file validation, cover all regions and use KMS.",
    severity=Severity.HIGH,
    rationale="Tamper-evident API logs are the basis for incident investigation and breach notification.",
    remediation="Set enable_log_file_validation=True, is_multi_region_trail=True and kms_key_id.",
    resource_types=("aws:cloudtrail/trail:Trail",),
)


def check(args, report):
    props = args.props
    if props.get("enableLogFileValidation") is not True:
        report(f"trail '{args.name}' does not validate its log files")
    if props.get("isMultiRegionTrail") is not True:
        report(f"trail '{args.name}' covers one region only")
    if not props.get("kmsKeyId"):
        report(f"trail '{args.name}' is not encrypted with KMS")
    if props.get("enableLogging") is False:
        report(f"trail '{args.name}' has logging switched off")


POLICY = MedplatResourcePolicy(META, check)
