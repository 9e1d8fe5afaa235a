"""DeidAnalyticsZone under the mock runtime: de-identified data only, EU, encrypted, logged."""
from __future__ import annotations

import json

from conftest import of_type
from medplat.residency import residency


def buckets(inv):
    return {r["urn"]: r for r in of_type(inv, "aws:s3/bucket:Bucket")}


def config_of(inv, type_, bucket_urn):
    found = [r for r in of_type(inv, type_) if bucket_urn in r["propertyDependencies"].get("bucket", [])]
    assert len(found) == 1, f"{type_} for {bucket_urn}: {len(found)}"
    return found[0]["inputs"]


def purpose(bucket):
    return bucket["inputs"]["bucketPrefix"].removeprefix("medplat-").rstrip("-")


def test_every_aws_resource_is_in_an_eu_region(inventories):
    inv = inventories["analytics"]
    for resource in inv["resources"]:
        if resource["custom"]:
            assert residency().aws_region_problem(resource["region"]) is None, resource["urn"]


def test_no_phi_or_key_material_in_the_aws_zone(inventories):
    classes = {r["labels"]["medplat:data-class"] for r in inventories["analytics"]["resources"]}
    assert classes <= {"deidentified", "operational"}


def test_buckets_are_encrypted_blocked_versioned_and_tls_only(inventories):
    inv = inventories["analytics"]
    assert {purpose(b) for b in buckets(inv).values()} == {
        "access-logs", "deidentified", "athena-results", "audit", "evidence"}
    for urn, bucket in buckets(inv).items():
        rule = config_of(inv, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", urn)["rules"][0]
        if purpose(bucket) == "access-logs":  # S3 access-log targets support SSE-S3 only
            assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
        else:
            assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
            assert rule["bucketKeyEnabled"] is True
        block = config_of(inv, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", urn)
        assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"))
        assert config_of(inv, "aws:s3/bucketVersioning:BucketVersioning", urn)["versioningConfiguration"]["status"] == "Enabled"
        policy = json.loads(config_of(inv, "aws:s3/bucketPolicy:BucketPolicy", urn)["policy"])
        deny = [s for s in policy["Statement"] if s["Effect"] == "Deny"]
        assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        if purpose(bucket) != "access-logs":
            assert config_of(inv, "aws:s3/bucketLogging:BucketLogging", urn)["targetPrefix"].startswith("s3/")


def test_audit_and_evidence_buckets_are_object_locked(inventories):
    inv = inventories["analytics"]
    locked = {purpose(b) for urn, b in buckets(inv).items() if b["inputs"]["objectLockEnabled"]}
    assert locked == {"audit", "evidence"}
    for urn, bucket in buckets(inv).items():
        if purpose(bucket) in locked:
            lock = config_of(inv, "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration", urn)
            assert lock["rule"]["defaultRetention"] == {"mode": "COMPLIANCE", "days": 3650}


def test_network_is_private_with_endpoints_and_flow_logs(inventories):
    inv = inventories["analytics"]
    assert not of_type(inv, "aws:ec2/internetGateway:InternetGateway")
    assert not of_type(inv, "aws:ec2/natGateway:NatGateway")
    for subnet in of_type(inv, "aws:ec2/subnet:Subnet"):
        assert subnet["inputs"]["mapPublicIpOnLaunch"] is False
    services = {r["inputs"]["serviceName"].split(".", 3)[-1] for r in of_type(inv, "aws:ec2/vpcEndpoint:VpcEndpoint")}
    assert {"s3", "kms", "logs"} <= services
    (flow,) = of_type(inv, "aws:ec2/flowLog:FlowLog")
    assert flow["inputs"]["trafficType"] == "ALL"
    for group in of_type(inv, "aws:ec2/securityGroup:SecurityGroup"):
        for rule in group["inputs"].get("ingress", []):
            assert "0.0.0.0/0" not in rule.get("cidrBlocks", []), group["name"]


def test_kms_rotation_cloudtrail_validation_athena_and_ecr(inventories):
    inv = inventories["analytics"]
    (key,) = of_type(inv, "aws:kms/key:Key")
    assert key["inputs"]["enableKeyRotation"] is True
    (trail,) = of_type(inv, "aws:cloudtrail/trail:Trail")
    assert trail["inputs"]["enableLogFileValidation"] is True and trail["inputs"]["isMultiRegionTrail"] is True
    (workgroup,) = of_type(inv, "aws:athena/workgroup:Workgroup")
    result = workgroup["inputs"]["configuration"]["resultConfiguration"]
    assert result["encryptionConfiguration"]["encryptionOption"] == "SSE_KMS"
    assert workgroup["inputs"]["configuration"]["enforceWorkgroupConfiguration"] is True
    repos = of_type(inv, "aws:ecr/repository:Repository")
    assert len(repos) == 1
    for repo in repos:
        assert repo["inputs"]["imageTagMutability"] == "IMMUTABLE"
        assert repo["inputs"]["imageScanningConfiguration"]["scanOnPush"] is True


def test_containers_have_no_public_ip_and_api_listens_with_tls(inventories):
    inv = inventories["analytics"]
    for service in of_type(inv, "aws:ecs/service:Service"):
        assert service["inputs"]["networkConfiguration"]["assignPublicIp"] is False
    (alb,) = of_type(inv, "aws:lb/loadBalancer:LoadBalancer")
    assert alb["inputs"]["internal"] is True
    for listener in of_type(inv, "aws:lb/listener:Listener"):
        assert listener["inputs"]["protocol"] == "HTTPS" and listener["inputs"]["sslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    for task in of_type(inv, "aws:ecs/taskDefinition:TaskDefinition"):
        (container,) = json.loads(task["inputs"]["containerDefinitions"])
        assert container["readonlyRootFilesystem"] is True and container["privileged"] is False
        assert "@sha256:" in container["image"]


def test_analytics_role_reads_only_the_deidentified_bucket(inventories):
    inv = inventories["analytics"]
    deid = [b for b in buckets(inv).values() if purpose(b) == "deidentified"][0]
    policy_resource = [r for r in of_type(inv, "aws:iam/rolePolicy:RolePolicy") if r["name"].endswith("analytics-reader-policy")][0]
    policy = json.loads(policy_resource["inputs"]["policy"])
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert actions == {"s3:ListBucket", "s3:GetObject", "s3:GetObjectVersion", "kms:Decrypt"}
    s3_resources = {s["Resource"] for s in policy["Statement"] if s["Action"][0].startswith("s3:")}
    bucket_arn = deid["inputs"].get("arn") or f"arn:aws:s3:eu-central-1:000000000000:{deid['name']}"
    assert s3_resources == {bucket_arn, bucket_arn + "/*"}
