"""S3 buckets refuse requests without TLS."""
import json

from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatStackPolicy
from medplat.policies.stack._buckets import bucket_urns, bucket_check

META = Meta(
    id="s3-tls-only-policy",
    description="Every S3 bucket has a policy that denies any request with aws:SecureTransport=false.",
    severity=Severity.HIGH,
    rationale="Without the deny, clients may read or write objects over plain HTTP.",
    remediation="Create buckets through SecureBucket, which adds the DenyInsecureTransport statement.",
    scope=bucket_urns,
)


def problem(bucket, policies):
    for policy in policies:
        try:
            document = json.loads(policy.props.get("policy") or "{}")
        except (TypeError, ValueError):
            continue
        for statement in document.get("Statement") or []:
            condition = (statement.get("Condition") or {}).get("Bool") or {}
            if statement.get("Effect") == "Deny" and str(condition.get("aws:SecureTransport")).lower() == "false":
                return None
    return "has no policy denying requests without TLS"


POLICY = MedplatStackPolicy(META, bucket_check("aws:s3/bucketPolicy:BucketPolicy", problem))
