"""Block storage and databases are encrypted at rest."""
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.residency import residency

META = Meta(
    id="block-storage-encrypted",
    description="Cinder volumes and Trove databases use an encrypted volume type; EBS volumes and RDS "
                "instances are encrypted.",
    severity=Severity.HIGH,
    rationale="Disks holding health data must be unreadable if media or snapshots leave the provider's control.",
    remediation="Use an encrypted volume type listed in compliance/residency.yaml (OpenStack), "
                "or set encrypted / storage_encrypted (AWS).",
    resource_types=("openstack:blockstorage/volume:Volume", "openstack:database/instance:Instance",
                    "aws:ebs/volume:Volume", "aws:rds/instance:Instance", "aws:rds/cluster:Cluster"),
)


def _encrypted_types() -> set[str]:
    return {t for provider in residency().openstack for t in residency().encrypted_volume_types(provider)}


def check(args, report):
    props = args.props
    if args.resource_type.startswith("openstack:"):
        volume_type = props.get("volumeType")
        if volume_type not in _encrypted_types():
            report(f"'{args.name}' uses volume type {volume_type!r}, which is not a known encrypted volume type")
    elif args.resource_type == "aws:ebs/volume:Volume":
        if props.get("encrypted") is not True:
            report(f"EBS volume '{args.name}' is not encrypted")
    elif props.get("storageEncrypted") is not True:
        report(f"'{args.name}' does not set storage_encrypted")


POLICY = MedplatResourcePolicy(META, check)
