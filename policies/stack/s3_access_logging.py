"""S3 buckets log access (except the log target itself)."""
from pulumi_policy import Severity

from medplat.components.secure_bucket import LOG_TARGET_PURPOSE
from medplat.policies.base import Meta, MedplatStackPolicy
from medplat.policies.stack._buckets import bucket_urns, bucket_check, purpose

META = Meta(
    id="s3-access-logging",
    description="Every S3 bucket except the access-log target writes server access logs.",
    severity=Severity.MEDIUM,
    rationale="Object-level access logs show who read research data and when.",
    remediation="Pass access_log_bucket to SecureBucket.",
    scope=bucket_urns,
)


def problem(bucket, configs):
    if purpose(bucket) == LOG_TARGET_PURPOSE or configs:
        return None
    return "writes no access logs"


POLICY = MedplatStackPolicy(META, bucket_check("aws:s3/bucketLogging:BucketLogging", problem))
