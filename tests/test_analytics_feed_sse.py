"""Server-side encryption of the analytics feed per target, against what is real here.

Swift's s3api (Debian 2.30, tests/swift_s3.py, with its encryption middleware) is the only
S3-protocol server on this machine. Checked on it: `AES256` is accepted and the object is
encrypted on the object server; `aws:kms` is answered 501 NotImplemented; SSE-C headers are
accepted and silently ignored (the object reads back without the customer key), which is why
the feed never offers SSE-C. The AWS path (aws:kms with the analytics zone's key) can only be
asserted here by the request as it goes on the wire; AWS's own behaviour is not evaluated, and
the botocore Stubber test at the end exercises only the feed's reaction to an answer, not AWS."""
from __future__ import annotations

import datetime
import os

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medplat.workloads.analytics_feed.feed import (EncryptionError, FeedSettings, Release, sse_arguments,
                                                    write_release)

KMS_KEY = "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
SSE_HEADERS = ("x-amz-server-side-encryption", "x-amz-server-side-encryption-aws-kms-key-id",
               "x-amz-server-side-encryption-customer-algorithm", "x-amz-server-side-encryption-customer-key")


@pytest.fixture(scope="module")
def bucket_server():
    """The one place this module names the Swift fixture."""
    from swift_s3 import start_swift_s3, stop, wait_until_ready

    server, processes = start_swift_s3()
    try:
        wait_until_ready(server, timeout=90)
        yield server
    finally:
        stop(processes, server.folder)


def release() -> Release:
    when = datetime.datetime(2019, 5, 2, 8, 0, tzinfo=datetime.timezone.utc)
    rows = [{"patient": f"P{i % 3}", "device": "d" * 64, "code_system": "urn:iso:std:iso:11073:10101",
             "code": "150456", "statistic": None, "value": 95.0 + i, "unit": "%",
             "effective": when + datetime.timedelta(minutes=i)} for i in range(6)]
    return Release("r" * 24, rows, [{"patient": f"P{i}", "age": "60", "sex": "female"} for i in range(3)],
                   {"kAchieved": 3})


def bucket(server, name: str):
    client = server.client()
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": server.region})
    sent: list[dict[str, str]] = []

    def record(request, **_):  # the request exactly as botocore puts it on the wire
        if request.method == "PUT" and "/" in request.url.split(f"/{name}", 1)[-1]:
            sent.append({h: request.headers[h].decode() if isinstance(request.headers[h], bytes)
                         else request.headers[h] for h in SSE_HEADERS if h in request.headers})
    client.meta.events.register("before-send.s3.PutObject", record)
    return client, sent


def test_swift_target_sends_aes256_and_swift_encrypts_every_object_at_rest(bucket_server):
    client, sent = bucket(bucket_server, "sse-swift")
    settings = FeedSettings(bucket="sse-swift", domain="analytics", target="swift", sse="AES256")
    result = write_release(client, settings, release(), Ed25519PrivateKey.generate())
    assert result["status"] == "released"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="sse-swift")["Contents"]]
    assert len(sent) == len(keys) >= 4, "every object went up in its own PUT"
    assert all(headers == {"x-amz-server-side-encryption": "AES256"} for headers in sent)
    bodies = [client.get_object(Bucket="sse-swift", Key=k)["Body"].read() for k in keys]
    assert any(body.startswith(b"PAR1") for body in bodies), "readable through the API"
    on_disk = [p.read_bytes() for p in (bucket_server.folder / "srv").rglob("*.data")]
    assert on_disk and not any(b"PAR1" in data or b"releaseId" in data for data in on_disk), \
        "Swift's encryption middleware encrypted what s3api accepted as AES256"


def test_aws_target_puts_sse_kms_with_the_zone_key_and_swift_refuses_it(bucket_server):
    client, sent = bucket(bucket_server, "sse-aws")
    settings = FeedSettings(bucket="sse-aws", domain="analytics", target="aws", sse="aws:kms", kms_key_id=KMS_KEY)
    with pytest.raises(ClientError) as refused:
        write_release(client, settings, release(), Ed25519PrivateKey.generate())
    assert refused.value.response["Error"]["Code"] == "NotImplemented"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    # The request shape AWS documents for SSE-KMS (PutObject: x-amz-server-side-encryption: aws:kms
    # and x-amz-server-side-encryption-aws-kms-key-id), as sent:
    assert sent[0] == {"x-amz-server-side-encryption": "aws:kms",
                       "x-amz-server-side-encryption-aws-kms-key-id": KMS_KEY}
    assert client.list_objects_v2(Bucket="sse-aws").get("KeyCount", 0) == 0, "nothing was written"


def test_swift_ignores_sse_c_so_the_feed_never_offers_it(bucket_server):
    client, sent = bucket(bucket_server, "sse-c")
    client.put_object(Bucket="sse-c", Key="x", Body=b"customer-keyed?", SSECustomerAlgorithm="AES256",
                      SSECustomerKey=os.urandom(32))
    assert "x-amz-server-side-encryption-customer-algorithm" in sent[0], "SSE-C was asked for"
    assert client.get_object(Bucket="sse-c", Key="x")["Body"].read() == b"customer-keyed?", \
        "Swift returns the object without the customer key: SSE-C headers are ignored"
    with pytest.raises(EncryptionError):
        sse_arguments(FeedSettings(bucket="b", domain="d", target="swift", sse="SSE-C"))


@pytest.mark.parametrize("target, sse, key, message", [
    ("swift", "aws:kms", None, "takes sse=AES256"),
    ("aws", "AES256", KMS_KEY, "takes sse=aws:kms"),
    ("aws", "aws:kms", None, "kms_key_id"),
    ("minio", "AES256", None, "must be one of"),
])
def test_a_target_and_encryption_that_do_not_match_are_refused(target, sse, key, message):
    with pytest.raises(EncryptionError, match=message):
        sse_arguments(FeedSettings(bucket="b", domain="d", target=target, sse=sse, kms_key_id=key))


def test_the_job_stops_with_one_line_before_reading_any_data(monkeypatch, capsys, tmp_path):
    from medplat.workloads.analytics_feed import job
    monkeypatch.setenv("MEDPLAT_ANALYTICS_FEED_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDPLAT_ANALYTICS_FEED_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("MEDPLAT_ANALYTICS_FEED_S3_TARGET", "swift")
    monkeypatch.setenv("MEDPLAT_ANALYTICS_FEED_SSE", "aws:kms")
    assert job.main() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "EncryptionError: target swift takes sse=AES256" in err[0]


def test_an_aws_answer_without_sse_kms_stops_the_release_before_its_record():
    """Stubbed answers (not AWS): the feed's reaction to a PutObject answer that does not
    confirm SSE-KMS — it stops after that object, and the release record is never written."""
    import boto3
    client = boto3.client("s3", region_name="eu-central-1", aws_access_key_id="x", aws_secret_access_key="y")
    settings = FeedSettings(bucket="b", domain="d", target="aws", sse="aws:kms", kms_key_id=KMS_KEY)
    with Stubber(client) as stub:
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
        stub.add_response("put_object", {"ETag": '"0"'})  # no ServerSideEncryption in the answer
        first = "telemetry/observations/day=2019-05-02/release=" + "r" * 24 + ".parquet"
        stub.add_response("delete_object", {}, {"Bucket": "b", "Key": first})  # the unconfirmed object is withdrawn
        with pytest.raises(EncryptionError, match="did not confirm SSE-KMS"):
            write_release(client, settings, release(), Ed25519PrivateKey.generate())
        stub.assert_no_pending_responses()
    with Stubber(client) as stub:
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
        stub.add_response("put_object", {"ETag": '"0"', "ServerSideEncryption": "aws:kms",
                                         "SSEKMSKeyId": KMS_KEY.replace("1234abcd", "ffffffff")})
        with pytest.raises(EncryptionError, match="did not confirm"):
            write_release(client, settings, release(), Ed25519PrivateKey.generate())


def test_a_server_failing_mid_release_leaves_no_object_of_that_release(bucket_server):
    """Athena reads every object under the table's folder, not only those a release record
    names: the parts of a release that stopped half-way must not stay in the bucket. The first
    PUT reaches real Swift; the connection then fails (injected: botocore's own error)."""
    from botocore.exceptions import EndpointConnectionError

    client, _sent = bucket(bucket_server, "mid-release")
    puts = []

    def fail_after_first(params, **_):
        puts.append(params["Key"])
        if len(puts) > 1:
            raise EndpointConnectionError(endpoint_url="http://swift.invalid")
    client.meta.events.register("provide-client-params.s3.PutObject", fail_after_first)
    settings = FeedSettings(bucket="mid-release", domain="analytics", target="swift", sse="AES256")
    with pytest.raises(EndpointConnectionError):
        write_release(client, settings, release(), Ed25519PrivateKey.generate())
    assert len(puts) == 2
    assert client.list_objects_v2(Bucket="mid-release").get("KeyCount", 0) == 0, "the written part was withdrawn"


@pytest.mark.parametrize("name, value", [
    ("K", "1"),                       # k=1 is no k-anonymity at all: every patient their own class
    ("K", "0"), ("L_DIVERSITY", "0"), ("SUPPRESSION_LIMIT", "-0.1"), ("SUPPRESSION_LIMIT", "1.5"),
    ("DP_EPSILON", "0"), ("DP_EPSILON", "-1"), ("DP_EPSILON", "inf"), ("DP_EPSILON", "abc"),
    ("RESAMPLE_SECONDS", "0"),
])
def test_a_release_policy_setting_out_of_range_stops_the_job_with_one_line(monkeypatch, capsys, tmp_path,
                                                                           name, value):
    from medplat.workloads.analytics_feed import job
    monkeypatch.setenv("MEDPLAT_ANALYTICS_FEED_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDPLAT_ANALYTICS_FEED_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("MEDPLAT_ANALYTICS_FEED_S3_TARGET", "swift")
    monkeypatch.setenv("MEDPLAT_ANALYTICS_FEED_SSE", "AES256")
    monkeypatch.setenv(f"MEDPLAT_ANALYTICS_FEED_{name}", value)
    assert job.main() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ValidationError" in err[0] and name.lower() in err[0], err
