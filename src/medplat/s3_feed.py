"""The de-identified analytics feed's object store, spoken as S3 with boto3.

The same code writes to AWS S3 (the analytics zone's bucket, SSE-KMS with the zone's key) and
to OpenStack Swift's s3api (EC2 credentials from Keystone; Swift encrypts at rest with its
encryption middleware and accepts `AES256`). Only de-identified data is published here.
"""
from __future__ import annotations

from dataclasses import dataclass


class FeedError(ValueError):
    pass


def s3_client(endpoint_url: str | None, region: str, access_key: str | None = None, secret_key: str | None = None):
    """boto3 S3 client; `endpoint_url` None means AWS. Swift's s3api (2.30) does not take botocore's
    default aws-chunked trailing checksums, so checksums are sent only where an operation needs them."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key,
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required"))


@dataclass
class DeidentifiedFeed:
    client: object
    bucket: str
    sse: str = "AES256"               # "aws:kms" on AWS with kms_key_id
    kms_key_id: str | None = None

    def publish(self, key: str, body: bytes, data_class: str) -> str:
        """Upload one object with server-side encryption; returns its ETag."""
        if data_class != "deidentified":
            raise FeedError(f"the analytics feed takes de-identified data only, not {data_class!r}")
        extra = {"SSEKMSKeyId": self.kms_key_id} if self.kms_key_id else {}
        response = self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ServerSideEncryption=self.sse,
                                          Metadata={"medplat-data-class": data_class}, **extra)
        return response["ETag"]

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
