"""EdgeSite under the mock runtime: PSA restricted, default deny, hardened workloads."""
from __future__ import annotations

import json

import re

from conftest import REPO, named, of_type

HARDENED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_namespace_enforces_pod_security_restricted(inventories):
    for stack in ("edge-dresden", "edge-leipzig"):
        (namespace,) = of_type(inventories[stack], "kubernetes:core/v1:Namespace")
        labels = namespace["inputs"]["metadata"]["labels"]
        for mode in ("enforce", "audit", "warn"):
            assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_default_deny_covers_ingress_and_egress(inventories):
    policies = {r["inputs"]["metadata"]["name"]: r["inputs"]["spec"]
                for r in of_type(inventories["edge-dresden"], "kubernetes:networking.k8s.io/v1:NetworkPolicy")}
    deny = policies["default-deny-all"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    # The forwarder may reach the cloud only on 443 and the broker/audit log by pod selector.
    forwarder = policies["edge-forwarder-allow"]
    cloud = [rule for rule in forwarder["egress"] if "ipBlock" in rule["to"][0]]
    assert cloud and all(rule["ports"] == [{"port": 443, "protocol": "TCP"}] for rule in cloud)
    # Its only ingress: the HTTP intake (and probes) from the site's own workloads on 8080.
    assert forwarder["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}],
                                     "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "medplat"}}}]}]
    # HL7 devices reach only the MLLP listener, from the configured device VLAN.
    hl7 = policies["hl7-retrofit-allow"]
    assert {peer["ipBlock"]["cidr"] for rule in hl7["ingress"] for peer in rule["from"]} == {"10.61.0.0/24", "10.61.8.0/24"}


def test_every_pod_is_hardened(inventories):
    for stack in ("edge-dresden", "eu-phi"):
        deployments = of_type(inventories[stack], "kubernetes:apps/v1:Deployment")
        assert deployments
        for deployment in deployments:
            pod = deployment["inputs"]["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod.get("hostNetwork") in (None, False)
            for container in pod["containers"]:
                for key, value in HARDENED_CONTAINER.items():
                    assert container["securityContext"][key] == value, (deployment["name"], key)
                assert re.search(r"@sha256:[0-9a-f]{64}$", container["image"]), container["image"]
                assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]
                liveness = container["livenessProbe"]
                # medplat services answer /healthz; the broker (no HTTP) gets a TCP probe.
                assert liveness.get("httpGet", {}).get("path") == "/healthz" or \
                    (deployment["name"].endswith("mqtt-broker-deployment") and liveness["tcpSocket"]["port"] == "mqtt")
                assert container["readinessProbe"]


def test_service_accounts_do_not_automount_tokens(inventories):
    accounts = of_type(inventories["edge-leipzig"], "kubernetes:core/v1:ServiceAccount")
    assert len(accounts) == 7
    assert all(a["inputs"]["automountServiceAccountToken"] is False for a in accounts)


def test_store_and_forward_buffer_uses_the_site_size(inventories):
    sizes = {}
    for stack in ("edge-dresden", "edge-leipzig"):
        claims = [c for c in of_type(inventories[stack], "kubernetes:core/v1:PersistentVolumeClaim")
                  if c["inputs"]["metadata"]["name"] == "edge-forwarder-outbox"]
        (claim,) = claims
        sizes[stack] = claim["inputs"]["spec"]["resources"]["requests"]["storage"]
        assert claim["inputs"]["spec"]["storageClassName"] == "local-path"
    assert sizes == {"edge-dresden": "100Gi", "edge-leipzig": "50Gi"}


def test_cloud_credentials_and_policy_come_from_the_eu_stack(inventories):
    inv = inventories["edge-dresden"]
    (reference,) = of_type(inv, "pulumi:pulumi:StackReference")
    assert reference["inputs"]["name"] == "saxony-hospital-group/medplat/eu-phi"
    # The site's key stays at the site: Pulumi creates no Secret with key material, only the
    # enrollment record (what the CSR must name, which Secret it fills) and the CA to trust.
    assert "mtls-client" not in {s["inputs"]["metadata"]["name"] for s in of_type(inv, "kubernetes:core/v1:Secret")}
    enrollment = named(inv, "mtls-enrollment")
    assert reference["urn"] in enrollment["dependencies"]
    assert json.loads(enrollment["inputs"]["data"]["enrollment.json"])["commonName"] == "edge-dresden"
    assert "BEGIN CERTIFICATE" in enrollment["inputs"]["data"]["ca.crt"]
    config_map = named(inv, "site-policy")
    assert '"refusedDataClasses": [\n    "key-material"\n  ]' in config_map["inputs"]["data"]["site-policy.json"]
    assert config_map["inputs"]["data"]["cloud-endpoint"].startswith("https://")


def test_broker_runs_with_the_shipped_config_that_does_not_drop_queued_messages(inventories):
    inv = inventories["edge-dresden"]
    files = named(inv, "mqtt-broker-files")["inputs"]["data"]
    conf = (REPO / "workloads" / "mqtt-broker" / "mosquitto.conf").read_text()
    assert files == {"mosquitto.conf": conf, "acl": (REPO / "workloads" / "mqtt-broker" / "acl").read_text()}
    assert "max_queued_messages 0" in conf and "max_queued_bytes" in conf
    assert "allow_anonymous false" in conf and "acl_file /etc/medplat/files/acl" in conf
    pod = named(inv, "mqtt-broker-deployment")["inputs"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["/usr/sbin/mosquitto", "-c", "/etc/medplat/files/mosquitto.conf"]
    assert {"name": "files", "mountPath": "/etc/medplat/files", "readOnly": True} in container["volumeMounts"]
    assert any(v.get("configMap", {}).get("name") == "mqtt-broker-files" for v in pod["volumes"])
    assert {"name": "mqtt-broker-passwords", "mountPath": "/etc/medplat/broker-secrets",
            "readOnly": True} in container["volumeMounts"]


def test_dicom_anonymizer_batch_runs_as_an_indexed_job(inventories):
    job = named(inventories["edge-dresden"], "dicom-anonymizer-batch")
    assert job["type"] == "kubernetes:batch/v1:Job"
    spec = job["inputs"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 4 and spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["args"][:1] == ["anonymize"] and "--shards" in container["args"]
    assert "livenessProbe" not in container


def test_clinical_workflow_is_deployed_with_its_data_classes_and_peers(inventories):
    for stack in ("edge-dresden", "edge-leipzig"):
        policies = {r["inputs"]["metadata"]["name"]: r["inputs"]["spec"]
                    for r in of_type(inventories[stack], "kubernetes:networking.k8s.io/v1:NetworkPolicy")}
        workflow = policies["clinical-workflow-allow"]
        peers = [peer for rule in workflow["egress"] for peer in rule["to"]]
        names = {p["podSelector"]["matchLabels"].get("app.kubernetes.io/name") for p in peers if "podSelector" in p}
        assert names == {"mqtt-broker", "audit-log"}
        assert all(rule["ports"] == [{"port": 443, "protocol": "TCP"}] for rule in workflow["egress"]
                   if "ipBlock" in rule["to"][0])  # the EU zone (consent) only on 443
        [deployment] = [d for d in of_type(inventories[stack], "kubernetes:apps/v1:Deployment")
                        if d["name"].endswith("clinical-workflow-deployment")]
        annotations = deployment["inputs"]["metadata"]["annotations"]
        assert annotations["medplat.io/reads"] == "phi" and annotations["medplat.io/writes"] == "phi"
        assert annotations["medplat.io/egress"] == "mqtt-broker,audit-log,@cloud"
