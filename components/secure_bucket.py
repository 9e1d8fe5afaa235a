"""`SecureBucket`: an S3 bucket that cannot be configured insecurely by its callers.

Always: versioning, default encryption (SSE-KMS with a bucket key; SSE-S3 only for a
server-access-log target, which S3 requires), all four public-access blocks, bucket-owner
ownership (no ACLs), a policy denying any request without TLS. Optionally: access logging
into a log bucket and object lock in COMPLIANCE mode for audit/evidence data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pulumi
import pulumi_aws as aws

from medplat.components.base import LabelledComponent
from medplat.components.labels import Labels


PURPOSE_TAG = "medplat:purpose"
LOG_TARGET_PURPOSE = "access-logs"


@dataclass
class SecureBucketArgs:
    purpose: str
    kms_key_arn: pulumi.Input[str] | None
    access_log_bucket: pulumi.Input[str] | None = None
    object_lock_days: int | None = None
    # Extra bucket-policy statements, built from the bucket's ARN once it is known.
    policy_statements: Callable[[pulumi.Output[str]], list[dict[str, Any]]] | None = None
    is_log_target: bool = False

    def __post_init__(self) -> None:
        if self.kms_key_arn is None and not self.is_log_target:
            raise ValueError(f"bucket {self.purpose!r}: SSE-KMS is required unless it is an access-log target")


class SecureBucket(LabelledComponent):
    def __init__(self, name: str, args: SecureBucketArgs, labels: Labels, opts: pulumi.ResourceOptions | None = None):
        super().__init__("medplat:components:SecureBucket", name, labels, opts)
        self.bucket = self.child(
            aws.s3.Bucket, "bucket",
            bucket_prefix=f"medplat-{args.purpose}-"[:37],
            force_destroy=False,
            object_lock_enabled=bool(args.object_lock_days),
            # Policies read the purpose: access-log targets may use SSE-S3, audit/evidence need object lock.
            tags={PURPOSE_TAG: args.purpose},
        )
        bucket_id = self.bucket.id
        self.child(aws.s3.BucketOwnershipControls, "ownership", bucket=bucket_id,
                   rule={"object_ownership": "BucketOwnerEnforced"})
        self.child(aws.s3.BucketPublicAccessBlock, "public-access-block", bucket=bucket_id,
                   block_public_acls=True, block_public_policy=True,
                   ignore_public_acls=True, restrict_public_buckets=True)
        self.child(aws.s3.BucketVersioning, "versioning", bucket=bucket_id,
                   versioning_configuration={"status": "Enabled"})
        if args.kms_key_arn is not None:
            encryption = {"sse_algorithm": "aws:kms", "kms_master_key_id": args.kms_key_arn}
        else:
            encryption = {"sse_algorithm": "AES256"}
        self.child(aws.s3.BucketServerSideEncryptionConfiguration, "encryption", bucket=bucket_id,
                   rules=[{"apply_server_side_encryption_by_default": encryption,
                           "bucket_key_enabled": args.kms_key_arn is not None}])
        if args.access_log_bucket is not None:
            self.child(aws.s3.BucketLogging, "logging", bucket=bucket_id,
                       target_bucket=args.access_log_bucket, target_prefix=f"s3/{args.purpose}/")
        if args.object_lock_days:
            self.child(aws.s3.BucketObjectLockConfiguration, "object-lock", bucket=bucket_id,
                       object_lock_enabled="Enabled",
                       rule={"default_retention": {"mode": "COMPLIANCE", "days": args.object_lock_days}})
        # Incomplete multipart uploads are invisible garbage; old versions are kept for a year
        # (or past the lock period), then expire, so versioning does not grow without bound.
        self.child(aws.s3.BucketLifecycleConfiguration, "lifecycle", bucket=bucket_id, rules=[{
            "id": "medplat-housekeeping",
            "status": "Enabled",
            "filter": {"prefix": ""},
            "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
            "noncurrent_version_expiration": {"noncurrent_days": max(365, (args.object_lock_days or 0) + 1)},
        }])
        self.child(aws.s3.BucketPolicy, "policy", bucket=bucket_id, policy=pulumi.Output.json_dumps({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [self.bucket.arn, pulumi.Output.concat(self.bucket.arn, "/*")],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                },
                *(args.policy_statements(self.bucket.arn) if args.policy_statements else []),
            ],
        }))
        self.arn = self.bucket.arn
        self.finish({"bucket": bucket_id, "arn": self.bucket.arn, "purpose": args.purpose})
