"""Pulumi components of medplat: one ComponentResource per concern, each with a typed Args class.

Names are imported on first use (PEP 562), so a service image that only reads workload specs
(`medplat.components.workload_spec`) does not import Pulumi and its providers: they are not in
the service's lock (see workloads/lock.py).
"""
from importlib import import_module

_EXPORTS = {
    "DATA_CLASSES": "labels", "ZONES": "labels", "Labels": "labels",
    "PlatformPki": "pki", "PlatformPkiArgs": "pki",
    "Workload": "workload", "WorkloadArgs": "workload", "WorkloadSpec": "workload",
    "SecureBucket": "secure_bucket", "SecureBucketArgs": "secure_bucket",
    "EuPhiZone": "eu_phi_zone", "EuPhiZoneArgs": "eu_phi_zone",
    "DeidAnalyticsZone": "analytics_zone", "DeidAnalyticsZoneArgs": "analytics_zone",
    "EdgeSite": "edge_site", "EdgeSiteArgs": "edge_site",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
