"""EuPhiZone under the mock runtime: the properties an auditor of a PHI zone checks."""
from __future__ import annotations

import ipaddress
import json

from conftest import named, of_type
from medplat.residency import residency

EDGE_CIDRS = {"198.51.100.16/29", "203.0.113.32/29"}


def test_block_storage_and_database_use_an_encrypted_volume_type(inventories):
    inv = inventories["eu-phi"]
    allowed = set(residency().encrypted_volume_types("ovhcloud"))
    volumes = of_type(inv, "openstack:blockstorage/volume:Volume")
    databases = of_type(inv, "openstack:database/instance:Instance")
    assert volumes and databases
    for resource in volumes + databases:
        assert resource["inputs"]["volumeType"] in allowed, resource["name"]
    storage_class = of_type(inv, "kubernetes:storage.k8s.io/v1:StorageClass")[0]
    assert storage_class["inputs"]["parameters"]["type"] in allowed


def test_security_group_is_default_deny_and_admits_only_edge_sites_on_443(inventories):
    inv = inventories["eu-phi"]
    (group,) = of_type(inv, "openstack:networking/secGroup:SecGroup")
    assert group["inputs"]["deleteDefaultRules"] is True
    ingress = [r["inputs"] for r in of_type(inv, "openstack:networking/secGroupRule:SecGroupRule")
               if r["inputs"]["direction"] == "ingress"]
    assert {rule["remoteIpPrefix"] for rule in ingress} == EDGE_CIDRS
    for rule in ingress:
        assert (rule["portRangeMin"], rule["portRangeMax"], rule["protocol"]) == (443, 443, "tcp")
        assert ipaddress.ip_network(rule["remoteIpPrefix"]).num_addresses < 256


def test_ingress_listener_is_443_restricted_to_edge_cidrs(inventories):
    (listener,) = of_type(inventories["eu-phi"], "openstack:loadbalancer/listener:Listener")
    assert listener["inputs"]["protocolPort"] == 443
    assert set(listener["inputs"]["allowedCidrs"]) == EDGE_CIDRS


def test_phi_compute_has_no_floating_ips(inventories):
    inv = inventories["eu-phi"]
    for type_ in ("openstack:containerinfra/cluster:Cluster", "openstack:containerinfra/clusterTemplate:ClusterTemplate"):
        (resource,) = of_type(inv, type_)
        assert resource["inputs"]["floatingIpEnabled"] is False
    # The only floating IP is the ingress load balancer's.
    (fip,) = of_type(inv, "openstack:networking/floatingIp:FloatingIp")
    lb = named(inv, "-ingress-lb")
    assert lb["urn"] in fip["dependencies"]


def test_object_storage_is_versioned_with_separate_audit_archive(inventories):
    containers = {r["name"]: r for r in of_type(inventories["eu-phi"], "openstack:objectstorage/container:Container")}
    assert set(containers) == {"eu-phi-phi-archive", "eu-phi-audit-archive"}
    for container in containers.values():
        assert container["inputs"]["versioning"] is True
        assert not container["inputs"].get("containerRead"), "containers must not be world-readable"
    assert containers["eu-phi-phi-archive"]["labels"]["medplat:data-class"] == "phi"


def test_keys_are_generated_by_barbican_orders_and_never_in_clear(inventories):
    inv = inventories["eu-phi"]
    orders = of_type(inv, "openstack:keymanager/orderV1:OrderV1")
    assert len(orders) == 3
    for order in orders:
        assert order["inputs"]["type"] == "key"
        assert order["inputs"]["meta"]["bitLength"] == 256
        assert "payload" not in json.dumps(order["inputs"]).lower()
        assert order["labels"]["medplat:data-class"] == "key-material"
    assert not of_type(inv, "openstack:keymanager/secretV1:SecretV1"), "no key payloads through state"
    text = json.dumps(inv)
    assert "planned private key" not in text, "a private key reached the inventory unmasked"
    # The mTLS CA key is a Barbican secret used outside Pulumi; sites enroll with CSRs: no
    # pulumi-tls private key anywhere, and the enrollments the sites read are public records.
    for stack, inventory in inventories.items():
        assert not of_type(inventory, "tls:index/privateKey:PrivateKey"), stack
        assert "PRIVATE KEY" not in json.dumps(inventory), stack
    assert inv["outputs"]["siteEnrollments"]["dresden"] == {
        "commonName": "edge-dresden", "organization": "Saxony Hospital Group", "secretName": "mtls-client",
        "dnsNames": [], "validityDays": 365}


def test_phi_workloads_run_in_a_restricted_namespace(inventories):
    inv = inventories["eu-phi"]
    (namespace,) = of_type(inv, "kubernetes:core/v1:Namespace")
    assert namespace["inputs"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    deployments = {r["inputs"]["metadata"]["name"] for r in of_type(inv, "kubernetes:apps/v1:Deployment")}
    assert deployments == {"ingest", "consent", "pseudonymizer", "audit-log", "fleet"}
    # Ingest takes traffic only from the edge sites' ranges.
    policy = [r for r in of_type(inv, "kubernetes:networking.k8s.io/v1:NetworkPolicy")
              if r["inputs"]["metadata"]["name"] == "ingest-allow"][0]
    sources = {peer["ipBlock"]["cidr"] for rule in policy["inputs"]["spec"]["ingress"] for peer in rule["from"]}
    assert sources == EDGE_CIDRS


def test_stack_exports_what_edge_sites_need(examples):
    outputs = examples.results["eu-phi"].outputs
    assert outputs["ingestEndpoint"].startswith("https://")
    assert set(outputs["siteEnrollments"]) == {"dresden", "leipzig"}
    assert "BEGIN CERTIFICATE" in outputs["caCertPem"] and "PRIVATE KEY" not in json.dumps(outputs, default=str)
    assert all(policy["refusedDataClasses"] == ["key-material"] for policy in outputs["sitePolicies"].values())
