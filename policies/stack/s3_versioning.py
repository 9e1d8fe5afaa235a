"""S3 buckets keep versions."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatStackPolicy
from medplat.policies.stack._buckets import bucket_urns, bucket_check

META = Meta(
    id="s3-versioning",
    description="Every S3 bucket has versioning Enabled.",
    severity=Severity.HIGH,
    rationale="Versions let an overwritten or deleted object be restored (ransomware, operator error).",
    remediation="Create buckets through SecureBucket (BucketVersioning status Enabled).",
    scope=bucket_urns,
)


def problem(bucket, configs):
    status = ((configs[0].props.get("versioningConfiguration") or {}).get("status")) if configs else None
    return None if status == "Enabled" else f"versioning is {status or 'not configured'}"


POLICY = MedplatStackPolicy(META, bucket_check("aws:s3/bucketVersioning:BucketVersioning", problem))
