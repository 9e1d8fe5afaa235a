"""Shared by the S3 stack policies: each bucket and the configuration resources bound to it."""
from __future__ import annotations

from medplat.components.secure_bucket import PURPOSE_TAG
from medplat.policies.lib import referencing

BUCKET = "aws:s3/bucket:Bucket"


def buckets(args):
    return [r for r in args.resources if r.resource_type == BUCKET]


def bucket_urns(resources) -> list[str]:
    """Scope of the bucket policies: every S3 bucket."""
    return [r.urn for r in resources if r.resource_type == BUCKET]


def purpose(bucket) -> str | None:
    return (bucket.props.get("tags") or {}).get(PURPOSE_TAG)


def bound(args, bucket, resource_type: str) -> list:
    return list(referencing(args.resources, bucket.urn, resource_type))


def bucket_check(resource_type: str, problem):
    """A stack check: for every bucket, `problem(bucket, configs)` returns a message or None."""
    def check(args, report):
        for bucket in buckets(args):
            message = problem(bucket, bound(args, bucket, resource_type))
            if message:
                report(f"bucket '{bucket.name}': {message}", bucket.urn)
    return check
