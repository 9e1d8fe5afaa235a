"""Every resource carries the four medplat labels, set by its component."""
from __future__ import annotations

from medplat.components.labels import DATA_CLASSES, LABEL_KEYS


def test_every_resource_of_every_example_stack_is_labelled(inventories):
    for stack, inv in inventories.items():
        for resource in inv["resources"]:
            labels = resource["labels"]
            assert set(labels) == set(LABEL_KEYS), (stack, resource["urn"], labels)
            assert labels["medplat:zone"] == inv["zone"], resource["urn"]
            assert labels["medplat:data-class"] in DATA_CLASSES
            assert labels["medplat:owner"]


def test_sites_and_owners_come_from_the_stack(inventories):
    dresden = {r["labels"]["medplat:site"] for r in inventories["edge-dresden"]["resources"]}
    owners = {r["labels"]["medplat:owner"] for r in inventories["edge-dresden"]["resources"]}
    assert dresden == {"dresden"} and owners == {"clinical-it-dresden"}


def test_taggable_resources_carry_the_labels_themselves(inventories):
    """Labels are on the cloud objects, not only in our inventory."""
    bucket = next(r for r in inventories["analytics"]["resources"] if r["type"] == "aws:s3/bucket:Bucket")
    assert bucket["inputs"]["tags"]["medplat:data-class"] in ("deidentified", "operational")
    group = next(r for r in inventories["eu-phi"]["resources"] if r["type"] == "openstack:networking/secGroup:SecGroup")
    assert "medplat:zone=eu-phi" in group["inputs"]["tags"]
    deployment = next(r for r in inventories["edge-dresden"]["resources"] if r["type"] == "kubernetes:apps/v1:Deployment")
    assert deployment["inputs"]["metadata"]["labels"]["medplat.io/site"] == "dresden"
    pod_labels = deployment["inputs"]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["medplat.io/zone"] == "edge"


def test_untaggable_children_get_their_declared_class(inventories):
    members = next(r for r in inventories["eu-phi"]["resources"] if r["type"] == "openstack:loadbalancer/members:Members")
    assert members["labels"]["medplat:data-class"] == "operational"  # not the zone's default "phi"
    access_block = [r for r in inventories["analytics"]["resources"]
                    if r["type"] == "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"]
    assert {r["labels"]["medplat:data-class"] for r in access_block} == {"deidentified", "operational"}
