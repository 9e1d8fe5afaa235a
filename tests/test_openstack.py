"""Real Keystone, Barbican and Swift (Debian's packages, tests/openstack_services.py), each
result read back with the official OpenStack clients (python-openstackclient, swiftclient's
`swift` CLI, barbicanclient through `openstack secret`) — a mock would fail these."""
from __future__ import annotations

import json
import secrets
import subprocess

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

pytestmark = pytest.mark.slow


def official(argv: list[str], env: dict[str, str], *, check: bool = True) -> subprocess.CompletedProcess:
    """Run one of Debian's official OpenStack CLIs (system python, not medplat's venv)."""
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"{argv} failed: {result.stderr[-1500:]}"
    return result


def keystone_session(openstack, credentials):
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    return session.Session(auth=v3.ApplicationCredential(
        auth_url=credentials.auth_url, application_credential_id=credentials.app_cred_id,
        application_credential_secret=credentials.app_cred_secret))


def s3_client(openstack, credentials):
    """boto3 as it talks to AWS S3; only the endpoint and the EC2 credentials differ. Swift 2.30's
    s3api rejects botocore's default aws-chunked trailing checksums, hence `when_required`."""
    return boto3.client("s3", endpoint_url=openstack.swift_url, region_name="RegionOne",
                        aws_access_key_id=credentials.ec2_access, aws_secret_access_key=credentials.ec2_secret,
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required"))


def test_application_credential_gives_a_project_scoped_token(openstack):
    deployer = openstack.deployer
    issued = json.loads(official(["openstack", "token", "issue", "-f", "json"],
                                 deployer.cli_env(application_credential=True)).stdout)
    assert issued["project_id"] == deployer.project_id
    # Keystone itself, asked by the admin, says what the token is: scoped to the medplat project,
    # carrying the application credential and the roles it was granted.
    validated = httpx.get(f"{openstack.keystone_url}/auth/tokens", timeout=30,
                          headers={"X-Auth-Token": openstack._admin_token, "X-Subject-Token": issued["id"]})
    assert validated.status_code == 200
    token = validated.json()["token"]
    assert token["project"]["id"] == deployer.project_id
    assert token["application_credential"]["id"] == deployer.app_cred_id
    assert {"member", "creator"} <= {role["name"] for role in token["roles"]}
    # The same identity with one character of the secret changed is refused.
    wrong = ("A" if deployer.app_cred_secret[-1] != "A" else "B")
    refused = httpx.post(f"{openstack.keystone_url}/auth/tokens", timeout=30, json={"auth": {"identity": {
        "methods": ["application_credential"], "application_credential": {
            "id": deployer.app_cred_id, "secret": deployer.app_cred_secret[:-1] + wrong}}}})
    assert refused.status_code == 401


def test_keystone_ignores_secret_bytes_past_72(openstack):
    """Why medplat sets its own 64-character application credential secrets: Keystone (Debian's
    22.0) checks secrets with bcrypt, which reads only the first 72 bytes, so anything appended to
    a secret of 72 or more characters is accepted. Fails once Keystone rejects such secrets."""
    deployer = openstack.deployer
    long_secret = secrets.token_urlsafe(60)   # 80 characters, as long as Keystone's own defaults
    created = keystone_session(openstack, deployer).post(
        f"{openstack.keystone_url}/users/{deployer.user_id}/application_credentials",
        json={"application_credential": {"name": "long-secret", "secret": long_secret}}, raise_exc=False)
    assert created.status_code == 403   # an application credential cannot mint another one...
    token, _ = openstack.token_for(deployer.password_auth())
    created = httpx.post(f"{openstack.keystone_url}/users/{deployer.user_id}/application_credentials", timeout=30,
                         headers={"X-Auth-Token": token},
                         json={"application_credential": {"name": "long-secret", "secret": long_secret}})
    assert created.status_code == 201   # ...but its user can, with a password-scoped token
    app_id = created.json()["application_credential"]["id"]
    accepted = httpx.post(f"{openstack.keystone_url}/auth/tokens", timeout=30, json={"auth": {"identity": {
        "methods": ["application_credential"], "application_credential": {
            "id": app_id, "secret": long_secret[:72] + "anything"}}}})
    assert accepted.status_code == 201


def test_barbican_secret_stored_and_fetched_by_reference(openstack):
    deployer, payload = openstack.deployer, secrets.token_hex(16)
    created = keystone_session(openstack, deployer).post(f"{openstack.barbican_url}/v1/secrets", json={
        "name": "medplat-test", "payload": payload, "payload_content_type": "text/plain"})
    ref = created.json()["secret_ref"]
    assert ref.startswith(f"{openstack.barbican_url}/v1/secrets/")
    fetched = official(["openstack", "secret", "get", ref, "--payload", "-f", "value"],
                       deployer.cli_env(application_credential=True))
    assert fetched.stdout.strip() == payload
    # Another project's credentials do not reach this secret.
    other = official(["openstack", "secret", "get", ref, "--payload", "-f", "value"],
                     openstack.other.cli_env(application_credential=True), check=False)
    assert other.returncode != 0 and payload not in other.stdout
    assert "403" in other.stderr or "Forbidden" in other.stderr or "not found" in other.stderr.lower()


def test_swift_object_versions_listed_by_the_swift_cli(openstack, tmp_path):
    deployer = openstack.deployer
    store = keystone_session(openstack, deployer)
    container = f"{openstack.swift_account_url(deployer)}/versioned-{secrets.token_hex(4)}"
    assert store.put(container, headers={"X-Versions-Enabled": "true"}).status_code in (201, 202)
    for body in (b"first", b"second"):
        assert store.put(f"{container}/evidence.json", data=body).status_code == 201
    listing = official(["swift", "list", container.rsplit("/", 1)[1], "--versions"],
                       deployer.cli_env(application_credential=True)).stdout.split()
    assert listing.count("evidence.json") == 2
    current = official(["swift", "download", container.rsplit("/", 1)[1], "evidence.json", "-o", "-"],
                       deployer.cli_env(application_credential=True)).stdout
    assert current == "second"


def test_boto3_through_s3api_with_server_side_encryption(openstack):
    deployer = openstack.deployer
    s3, bucket, body = s3_client(openstack, deployer), f"deidentified-{secrets.token_hex(4)}", secrets.token_bytes(2048)
    s3.create_bucket(Bucket=bucket)
    put = s3.put_object(Bucket=bucket, Key="feed/part-0001.parquet", Body=body, ServerSideEncryption="AES256")
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_object(Bucket=bucket, Key="feed/part-0001.parquet")["Body"].read() == body
    # KMS-managed keys are not something this Swift offers: refused, not silently ignored.
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=bucket, Key="kms", Body=b"x", ServerSideEncryption="aws:kms")
    assert refused.value.response["Error"]["Code"] == "NotImplemented"
    # The swift CLI (Keystone auth, not S3) sees the same object in the same project...
    listed = official(["swift", "list", bucket], deployer.cli_env(application_credential=True)).stdout.split()
    assert listed == ["feed/part-0001.parquet"]
    # ...and on disk the object server holds ciphertext only (Swift's encryption middleware).
    data_files = [path for path in (openstack.s3().folder / "srv").rglob("*.data")
                  if path.stat().st_size == len(body)]
    assert data_files and all(body not in path.read_bytes() for path in data_files)


def test_another_project_and_anonymous_callers_are_refused(openstack):
    """As an attacker: the second project's credentials and no credentials at all, against the
    medplat project's secret, archive container and S3 bucket."""
    deployer, other = openstack.deployer, openstack.other
    secret = official(["openstack", "secret", "store", "--name", "attacker-target", "--payload", "top secret",
                       "-f", "value", "-c", "Secret href"], deployer.cli_env(application_credential=True)).stdout.strip()
    container, bucket = f"archive-{secrets.token_hex(4)}", f"feed-{secrets.token_hex(4)}"
    official(["swift", "post", container, "-H", "X-Versions-Enabled: true"], deployer.cli_env(application_credential=True))
    store = keystone_session(openstack, deployer)
    object_url = f"{openstack.swift_account_url(deployer)}/{container}/audit.jsonl"
    assert store.put(object_url, data=b"{}").status_code == 201
    s3_client(openstack, deployer).create_bucket(Bucket=bucket)
    s3_client(openstack, deployer).put_object(Bucket=bucket, Key="k", Body=b"deidentified", ServerSideEncryption="AES256")

    stolen = official(["openstack", "secret", "get", "--payload", secret], other.cli_env(application_credential=True),
                      check=False)
    assert stolen.returncode != 0 and "Forbidden" in stolen.stderr and "top secret" not in stolen.stdout
    listed = official(["swift", "--os-storage-url", openstack.swift_account_url(deployer), "list", container],
                      other.cli_env(application_credential=True), check=False)
    assert listed.returncode != 0 and "403" in listed.stderr
    intruder = keystone_session(openstack, other)
    assert intruder.get(object_url, raise_exc=False).status_code == 403
    assert intruder.put(object_url, data=b"forged", raise_exc=False).status_code == 403
    with pytest.raises(ClientError) as foreign:      # the other project's EC2 keys see their own account
        s3_client(openstack, other).get_object(Bucket=bucket, Key="k")
    assert foreign.value.response["Error"]["Code"] == "NoSuchBucket"

    assert httpx.get(f"{secret}/payload", timeout=30).status_code == 401
    assert httpx.get(object_url, timeout=30).status_code == 401
    anonymous = httpx.get(f"{openstack.swift_url}/{bucket}/k", timeout=30)
    assert anonymous.status_code >= 400 and b"deidentified" not in anonymous.content
    assert store.get(object_url).content == b"{}", "nothing the attacker sent was stored"
