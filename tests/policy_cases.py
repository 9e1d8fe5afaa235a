"""Deliberately broken additions to the example stacks, built from real Pulumi resources.

Each case adds or replaces resources inside a real stack's program run (under the mock
runtime), so policies see exactly what the engine would send them.
"""
from __future__ import annotations

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_openstack as openstack

from medplat.components import Labels, SecureBucket, SecureBucketArgs
from medplat.components.labels import attach


def _labels(zone: str, site: str, data_class: str) -> Labels:
    return Labels(zone=zone, site=site, data_class=data_class, owner="tests")


def labelled(cls, name, labels: Labels, **props):
    return cls(name, **attach(cls, props, labels))


AWS = _labels("analytics", "analytics", "deidentified")
EDGE = _labels("edge", "dresden", "phi")
PHI = _labels("eu-phi", "eu-phi", "phi")


def aws_provider():
    return pulumi.ResourceOptions(provider=aws.Provider("tamper-aws", region="eu-central-1"))


def k3s():
    return pulumi.ResourceOptions(provider=k8s.Provider("tamper-k3s", kubeconfig="tamper"))


def phi_bucket_on_aws():
    SecureBucket("tamper-phi-store", SecureBucketArgs(purpose="phi-store", kms_key_arn="arn:aws:kms:eu-central-1:1:key/x"),
                 labels=_labels("analytics", "analytics", "phi"), opts=aws_provider())


def pseudonymized_table_on_aws():
    labelled(aws.dynamodb.Table, "tamper-pseudonymized", _labels("analytics", "analytics", "pseudonymized"),
             hash_key="id", attributes=[{"name": "id", "type": "S"}], opts=aws_provider())


def us_region_provider():
    aws.Provider("tamper-us", region="us-east-1")


def bucket_without_kms():
    bucket = labelled(aws.s3.Bucket, "tamper-plain", AWS, opts=aws_provider())
    aws.s3.BucketServerSideEncryptionConfiguration("tamper-plain-sse", bucket=bucket.id, rules=[
        {"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}], opts=aws_provider())


def unencrypted_cinder_volume():
    labelled(openstack.blockstorage.Volume, "tamper-volume", PHI, size=10, volume_type="classic")


def bucket_without_tls_policy():
    labelled(aws.s3.Bucket, "tamper-no-tls", AWS, opts=aws_provider())


def http_listener():
    labelled(aws.lb.Listener, "tamper-http", AWS, load_balancer_arn="arn:x", port=80, protocol="HTTP",
             default_actions=[{"type": "fixed-response", "fixed_response": {"content_type": "text/plain",
                                                                         "status_code": "200"}}], opts=aws_provider())


def forwarder_without_mtls():
    _deployment("tamper-forwarder", annotations={"medplat.io/egress": "@cloud", "medplat.io/workload": "tamper"})


def world_open_security_group():
    labelled(aws.ec2.SecurityGroup, "tamper-world", AWS, vpc_id="vpc-1",
             ingress=[{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"]}],
             opts=aws_provider())


def public_subnet():
    labelled(aws.ec2.Subnet, "tamper-public", AWS, vpc_id="vpc-1", cidr_block="10.40.200.0/24",
             map_public_ip_on_launch=True, opts=aws_provider())


def kms_without_rotation():
    labelled(aws.kms.Key, "tamper-key", AWS, enable_key_rotation=False, opts=aws_provider())


def barbican_secret_with_payload():
    openstack.keymanager.SecretV1("tamper-secret", payload="c2VjcmV0", payload_content_type="text/plain")


def trail_without_validation():
    labelled(aws.cloudtrail.Trail, "tamper-trail", AWS, s3_bucket_name="b", enable_log_file_validation=False,
             is_multi_region_trail=True, kms_key_id="arn:k", opts=aws_provider())


def vpc_without_flow_logs():
    labelled(aws.ec2.Vpc, "tamper-vpc", AWS, cidr_block="10.50.0.0/16", opts=aws_provider())


def bucket_without_logging():
    bucket_without_tls_policy()


def unversioned_swift_container():
    labelled(openstack.objectstorage.Container, "tamper-container", PHI, versioning=False)


def audit_bucket_without_lock():
    labelled(aws.s3.Bucket, "tamper-audit", AWS, tags={"medplat:purpose": "audit"}, opts=aws_provider())


def baseline_namespace():
    labelled(k8s.core.v1.Namespace, "tamper-ns", EDGE,
             metadata={"name": "tamper", "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}, opts=k3s())


def privileged_pod():
    _deployment("tamper-privileged", security={"privileged": True, "allowPrivilegeEscalation": True})


def root_pod():
    _deployment("tamper-root", security={"runAsNonRoot": False, "runAsUser": 0}, pod_security={})


def writable_pod():
    _deployment("tamper-writable", security={"readOnlyRootFilesystem": False})


def capable_pod():
    _deployment("tamper-capable", security={"capabilities": {"add": ["NET_ADMIN"], "drop": []}})


def unlimited_pod():
    _deployment("tamper-unlimited", resources={})


def tagged_image_pod():
    _deployment("tamper-tagged", image="eclipse-mosquitto:2")


def token_pod():
    _deployment("tamper-token", automount=True)


def unlabelled_bucket():
    aws.s3.Bucket("tamper-unlabelled", opts=aws_provider())


def phi_to_the_internet():
    _deployment("tamper-exporter", annotations={"medplat.io/workload": "exporter", "medplat.io/reads": "phi",
                                                "medplat.io/writes": "phi", "medplat.io/egress": "@internet"})


def second_path_into_the_bucket():
    """An operational exporter naming the de-identified bucket as a peer: a flow the feed's proof does not cover."""
    _deployment("bucket-exporter", annotations={"medplat.io/workload": "exporter", "medplat.io/reads": "operational",
                                                "medplat.io/writes": "operational", "medplat.io/roles": "exporter",
                                                "medplat.io/egress": "@analytics-bucket"})


def edge_without_forwarder():
    """Handled by config: drop edge-forwarder from the site's workloads."""


def _deployment(name, security=None, pod_security=None, resources=None, image=None, automount=False,
                annotations=None):
    container_security = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                          "privileged": False, "capabilities": {"drop": ["ALL"]},
                          "seccompProfile": {"type": "RuntimeDefault"}, **(security or {})}
    labelled(k8s.apps.v1.Deployment, name, EDGE, opts=k3s(), metadata={
        "namespace": "medplat-dresden", "name": name, "annotations": annotations or {}}, spec={
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {
            "automountServiceAccountToken": automount,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001} if pod_security is None else pod_security,
            "containers": [{
                "name": name, "image": image or ("ghcr.io/x/y@sha256:" + "a" * 64),
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
                if resources is None else resources,
                "securityContext": container_security}]}}})


def unsigned_image_pod():
    """A real-looking digest that is in no lock file: nobody recorded a signature verification."""
    _deployment("tamper-unsigned", image="registry.example.eu/acme/pump-gateway@sha256:"
                "4b1d2c3e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff001")


def placeholder_issuer_pod():
    labelled(k8s.apps.v1.Deployment, "tamper-issuer", EDGE, opts=k3s(), metadata={
        "namespace": "medplat-dresden", "name": "tamper-issuer"}, spec={
        "selector": {"matchLabels": {"app": "tamper-issuer"}},
        "template": {"metadata": {"labels": {"app": "tamper-issuer"}}, "spec": {"containers": [{
            "name": "app", "image": "ghcr.io/x/y@sha256:" + "4b" * 32,
            "env": [{"name": "AUTH_ISSUER", "value": "https://idp.example.com/realms/x"},
                    {"name": "AUDIT_URL", "value": "http://audit-log:8080"}]}]}}})


# A hand-built PEM block of the kind pulumi-tls writes to state (the key itself is irrelevant:
# the policy must refuse any PRIVATE KEY text; this one is truncated and not a usable key).
PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIByfQ0Zp5m7b9g==\n-----END EC PRIVATE KEY-----\n"


def private_key_in_state():
    import pulumi_tls as tls

    tls.PrivateKey("tamper-ca-key", algorithm="ECDSA", ecdsa_curve="P384")
    # A ConfigMap is never masked as a secret: the key would sit in state as plain text.
    labelled(k8s.core.v1.ConfigMap, "tamper-plain-key", PHI, opts=k3s(), metadata={"name": "tamper-plain-key"},
             data={"key.pem": PEM})
