"""Audit and evidence buckets are under COMPLIANCE-mode object lock."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatStackPolicy
from medplat.policies.stack._buckets import bound, buckets, purpose

META = Meta(
    id="object-lock-audit-evidence",
    description="Buckets whose purpose is audit or evidence enable object lock with a COMPLIANCE-mode "
                "default retention.",
    severity=Severity.HIGH,
    rationale="Audit trails and evidence bundles must be impossible to alter or delete, even for admins.",
    remediation="Pass object_lock_days to SecureBucket.",
    scope=lambda resources: [r.urn for r in resources if r.resource_type == "aws:s3/bucket:Bucket"
                             and purpose(r) in LOCKED],
)
LOCKED = ("audit", "evidence")
LOCK = "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration"


def check(args, report):
    for bucket in buckets(args):
        if purpose(bucket) not in LOCKED:
            continue
        locks = bound(args, bucket, LOCK)
        mode = (((locks[0].props.get("rule") or {}).get("defaultRetention") or {}).get("mode")) if locks else None
        if bucket.props.get("objectLockEnabled") is not True or mode != "COMPLIANCE":
            report(f"{purpose(bucket)} bucket '{bucket.name}' is not under COMPLIANCE-mode object lock", bucket.urn)


POLICY = MedplatStackPolicy(META, check)
