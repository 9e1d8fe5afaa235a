"""Swift containers holding PHI or audit archives are versioned."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy

META = Meta(
    id="swift-versioning",
    description="Object storage keeps versions: S3 buckets have versioning Enabled, Swift containers set "
                "versioning.",
    severity=Severity.HIGH,
    rationale="Versions let an overwritten or deleted archive be restored (ransomware, operator error).",
    remediation="Set versioning=True on the container (SecureBucket does this for S3).",
    resource_types=("openstack:objectstorage/container:Container",),
)


def check(args, report):
    if args.props.get("versioning") is not True and not args.props.get("versioningLegacy"):
        report(f"Swift container '{args.name}' is not versioned")


POLICY = MedplatResourcePolicy(META, check)
