"""S3 buckets are encrypted with a customer-managed KMS key."""
from pulumi_policy import Severity

from medplat.components.secure_bucket import LOG_TARGET_PURPOSE
from medplat.policies.base import Meta, MedplatStackPolicy
from medplat.policies.stack._buckets import bucket_urns, bucket_check, purpose

META = Meta(
    id="s3-sse-kms",
    description="Every S3 bucket has default encryption SSE-KMS with a bucket key; only the access-log "
                "target may use SSE-S3, which is all S3 server access logging supports.",
    severity=Severity.HIGH,
    rationale="KMS keys add access control and an audit trail on every decryption.",
    remediation="Create buckets through SecureBucket with kms_key_arn set.",
    scope=bucket_urns,
)
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"


def problem(bucket, configs):
    if not configs:
        return "has no default encryption configuration"
    rule = ((configs[0].props.get("rules") or [{}])[0])
    algorithm = (rule.get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm")
    if purpose(bucket) == LOG_TARGET_PURPOSE and algorithm == "AES256":
        return None
    if algorithm not in ("aws:kms", "aws:kms:dsse"):
        return f"is encrypted with {algorithm!r}, not SSE-KMS"
    if rule.get("bucketKeyEnabled") is not True:
        return "uses SSE-KMS without a bucket key"
    return None


POLICY = MedplatStackPolicy(META, bucket_check(SSE, problem))
