"""S3 buckets block every form of public access."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatStackPolicy
from medplat.policies.stack._buckets import bucket_urns, bucket_check

META = Meta(
    id="s3-public-access-block",
    description="Every S3 bucket has a public-access block with all four settings true.",
    severity=Severity.CRITICAL,
    rationale="A single public ACL or policy would publish research data to the internet.",
    remediation="Create buckets through SecureBucket (BucketPublicAccessBlock with all four flags).",
    scope=bucket_urns,
)
FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


def problem(bucket, blocks):
    if not blocks:
        return "has no public-access block"
    off = [flag for flag in FLAGS if blocks[0].props.get(flag) is not True]
    return f"public-access block leaves {', '.join(off)} off" if off else None


POLICY = MedplatStackPolicy(META, bucket_check("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", problem))
