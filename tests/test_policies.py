"""Every policy: compliant on the shipped stacks, failing with its message on a broken one."""
from __future__ import annotations

import pytest

import policy_cases as cases
from conftest import STACKS, edit_stack
from medplat.policies.registry import all_policies, by_id
from medplat.policycheck import run_pack
from medplat.stackset import StackSet
from medplat.synth import synthesize

CASES = [
    ("phi-only-in-eu-openstack", "analytics", cases.phi_bucket_on_aws, "holds phi data on AWS"),
    ("aws-deidentified-or-operational-only", "analytics", cases.pseudonymized_table_on_aws, "is labelled 'pseudonymized'"),
    ("aws-eu-region-only", "analytics", cases.us_region_provider, "'us-east-1' is not an EU region"),
    ("s3-sse-kms", "analytics", cases.bucket_without_kms, "is encrypted with 'AES256', not SSE-KMS"),
    ("block-storage-encrypted", "eu-phi", cases.unencrypted_cinder_volume, "volume type 'classic'"),
    ("s3-tls-only-policy", "analytics", cases.bucket_without_tls_policy, "no policy denying requests without TLS"),
    ("tls-listeners", "analytics", cases.http_listener, "uses HTTP; use HTTPS or TLS"),
    ("edge-egress-mtls", "edge-dresden", cases.forwarder_without_mtls, "mounts no mtls-client certificate"),
    ("no-world-ingress", "analytics", cases.world_open_security_group, "opens 22-22 to the world"),
    ("s3-public-access-block", "analytics", cases.bucket_without_tls_policy, "has no public-access block"),
    ("no-public-ip-phi-compute", "analytics", cases.public_subnet, "would get a public IP"),
    ("kms-key-rotation", "analytics", cases.kms_without_rotation, "does not rotate"),
    ("no-plaintext-key-material", "eu-phi", cases.barbican_secret_with_payload, "carries its payload through Pulumi"),
    ("cloudtrail-log-validation", "analytics", cases.trail_without_validation, "does not validate its log files"),
    ("vpc-flow-logs", "analytics", cases.vpc_without_flow_logs, "has no flow log"),
    ("s3-access-logging", "analytics", cases.bucket_without_logging, "writes no access logs"),
    ("s3-versioning", "analytics", cases.bucket_without_logging, "versioning is not configured"),
    ("swift-versioning", "eu-phi", cases.unversioned_swift_container, "is not versioned"),
    ("object-lock-audit-evidence", "analytics", cases.audit_bucket_without_lock, "not under COMPLIANCE-mode object lock"),
    ("k8s-psa-restricted", "edge-dresden", cases.baseline_namespace, "does not enforce Pod Security 'restricted'"),
    ("k8s-default-deny-per-namespace", "edge-dresden", cases.baseline_namespace, "has no default-deny NetworkPolicy"),
    ("k8s-no-privilege-escalation", "edge-dresden", cases.privileged_pod, "is privileged"),
    ("k8s-run-as-non-root", "edge-dresden", cases.root_pod, "may run as root"),
    ("k8s-read-only-root-fs", "edge-dresden", cases.writable_pod, "root filesystem is writable"),
    ("k8s-capabilities-dropped", "edge-dresden", cases.capable_pod, "does not drop all capabilities"),
    ("k8s-resource-limits", "edge-dresden", cases.unlimited_pod, "has no CPU/memory requests and limits"),
    ("k8s-image-pinned-by-digest", "edge-dresden", cases.tagged_image_pod, "image is not pinned by digest"),
    ("k8s-no-token-automount", "edge-dresden", cases.token_pod, "automounts a service-account token"),
    ("mandatory-labels", "analytics", cases.unlabelled_bucket, "lacks medplat:zone, medplat:site"),
    ("dataflow-residency", "edge-dresden", cases.phi_to_the_internet, "phi flows out of the EU zone without anonymization"),
    ("dataflow-residency", "edge-dresden", cases.second_path_into_the_bucket,
     "sends to the de-identified analytics bucket but is not a de-identifier"),
]


@pytest.fixture(scope="module")
def eu_outputs():
    return StackSet(STACKS).synth("eu-phi").outputs


def findings_for(stack, policy_id, eu_outputs, extra=None, stacks_dir=STACKS):
    references = {"saxony-hospital-group/medplat/eu-phi": eu_outputs} if stack.startswith("edge") else {}
    inventory = synthesize(stack, stacks_dir, references, extra=extra).inventory.to_json()
    return [f for f in run_pack(inventory, [by_id()[policy_id]])]


# Policies the shipped stacks fail on purpose (placeholders, keys in state), tested on their own below.
FAIL_ON_SHIPPED = {"k8s-image-published", "no-placeholder-endpoints", "no-private-key-in-state"}


def test_every_policy_has_a_case_and_metadata():
    ids = {p.name for p in all_policies()}
    assert ids - {"site-required-workloads"} - FAIL_ON_SHIPPED == {c[0] for c in CASES}
    for policy in all_policies():
        meta = policy.meta
        assert meta.rationale and meta.remediation and policy.severity and policy.enforcement_level
        assert policy.controls


@pytest.mark.parametrize("policy_id,stack,tamper,expected", CASES, ids=[c[0] for c in CASES])
def test_policy_passes_shipped_stack_and_fails_broken_one(policy_id, stack, tamper, expected, eu_outputs):
    assert findings_for(stack, policy_id, eu_outputs) == [], f"{policy_id} fails the shipped {stack} stack"
    broken = findings_for(stack, policy_id, eu_outputs, extra=tamper)
    assert broken, f"{policy_id} did not notice {tamper.__name__}"
    assert any(expected in f.message for f in broken), [f.message for f in broken]
    assert all(f.controls for f in broken)


def test_site_without_store_and_forward_fails(stacks_copy, eu_outputs):
    assert findings_for("edge-dresden", "site-required-workloads", eu_outputs) == []
    edit_stack(stacks_copy, "edge-dresden", lambda c: c["medplat:edge"].update(
        workloads=["mqtt-broker", "audit-log", "sdc-bridge"]))
    broken = findings_for("edge-dresden", "site-required-workloads", eu_outputs, stacks_dir=stacks_copy)
    assert [f.message for f in broken] == [
        "edge namespace 'medplat-dresden' runs no workload with role store-and-forward"]


def test_anonymizer_on_the_path_makes_the_flow_compliant(eu_outputs):
    """PHI may leave only through an anonymizer: the same exporter behind one passes."""
    def through_anonymizer():
        cases._deployment("tamper-anon", annotations={
            "medplat.io/workload": "anon", "medplat.io/roles": "anonymizer", "medplat.io/reads": "phi",
            "medplat.io/writes": "deidentified", "medplat.io/egress": "@internet"})
    assert findings_for("edge-dresden", "dataflow-residency", eu_outputs, extra=through_anonymizer) == []


def test_placeholder_digests_fail(eu_outputs):
    """Every image in workloads/images.lock.yaml is an all-zero placeholder: the check must say so."""
    shipped = findings_for("edge-dresden", "k8s-image-published", eu_outputs)
    assert shipped and all("placeholder digest (sha256:00000000" in f.message for f in shipped), shipped
    workloads = {f.name for f in shipped}
    assert {"edge-dresden-edge-forwarder-deployment", "edge-dresden-audit-log-deployment"} <= workloads
    analytics = findings_for("analytics", "k8s-image-published", eu_outputs)
    assert any("analytics-api" in f.message and "placeholder digest" in f.message for f in analytics)
    unsigned = findings_for("edge-dresden", "k8s-image-published", eu_outputs, extra=cases.unsigned_image_pod)
    assert any(f.name == "tamper-unsigned" and "no signature verification recorded" in f.message
               for f in unsigned)


def test_a_published_signed_image_passes(monkeypatch):
    from medplat import workloads
    from medplat.policies.resource import k8s_image_published as policy

    digest = "sha256:" + "4b1d2c3e" * 8
    entries = {"ingest": {"digest": digest, "signature": {"type": "cosign", "verified": "2026-11-20"}},
               "consent": {"digest": "sha256:" + "5c" * 32}}
    monkeypatch.setattr(workloads, "image_entries", lambda: entries)
    assert policy.problem(f"ghcr.io/medplat/ingest@{digest}") is None
    assert "no verified signature" in policy.problem("ghcr.io/medplat/consent@sha256:" + "5c" * 32)
    assert "placeholder digest" in policy.problem("ghcr.io/medplat/ingest@sha256:" + "f" * 64)


def test_placeholder_endpoints_fail(eu_outputs):
    shipped = findings_for("eu-phi", "no-placeholder-endpoints", eu_outputs)
    messages = sorted(f.message for f in shipped)
    assert any("consent" in m and "MEDPLAT_CONSENT_AUTH_ISSUER points at placeholder host keycloak.medplat.internal"
               in m for m in messages), messages
    assert any("MEDPLAT_PSEUDONYMIZER_BARBICAN_AUTH_URL points at placeholder host identity.medplat.internal"
               in m for m in messages), messages
    assert findings_for("edge-dresden", "no-placeholder-endpoints", eu_outputs) == []
    broken = findings_for("edge-dresden", "no-placeholder-endpoints", eu_outputs, extra=cases.placeholder_issuer_pod)
    assert [f.message for f in broken] == [
        "'tamper-issuer', container 'app': AUTH_ISSUER points at placeholder host idp.example.com"]


def test_private_key_material_in_state_fails(eu_outputs):
    assert findings_for("analytics", "no-private-key-in-state", eu_outputs) == []
    broken = findings_for("analytics", "no-private-key-in-state", eu_outputs, extra=cases.private_key_in_state)
    messages = [f.message for f in broken]
    assert "tls:index/privateKey:PrivateKey 'tamper-ca-key' generates its private key into Pulumi state" in messages
    assert "'tamper-plain-key' holds PEM private key text at data.key.pem" in messages


def test_no_private_key_in_any_synthesized_state_or_output(inventories):
    """No stack generates, passes or exports a private key (PlatformPki: CSR flow, Barbican-held CA)."""
    import json

    policy = by_id()["no-private-key-in-state"]
    for name, inventory in inventories.items():
        assert "PRIVATE KEY" not in json.dumps(inventory), name
        assert run_pack(inventory, [policy]) == [], name
