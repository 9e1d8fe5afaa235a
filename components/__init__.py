"""Pulumi components of medplat: one ComponentResource per concern, each with a typed Args class."""
from medplat.components.labels import DATA_CLASSES, ZONES, Labels
from medplat.components.pki import PlatformPki, PlatformPkiArgs
from medplat.components.workload import Workload, WorkloadArgs, WorkloadSpec
from medplat.components.secure_bucket import SecureBucket, SecureBucketArgs
from medplat.components.eu_phi_zone import EuPhiZone, EuPhiZoneArgs
from medplat.components.analytics_zone import DeidAnalyticsZone, DeidAnalyticsZoneArgs
from medplat.components.edge_site import EdgeSite, EdgeSiteArgs

__all__ = [
    "DATA_CLASSES", "ZONES", "Labels",
    "PlatformPki", "PlatformPkiArgs",
    "Workload", "WorkloadArgs", "WorkloadSpec",
    "SecureBucket", "SecureBucketArgs",
    "EuPhiZone", "EuPhiZoneArgs",
    "DeidAnalyticsZone", "DeidAnalyticsZoneArgs",
    "EdgeSite", "EdgeSiteArgs",
]
