"""The one Pulumi program: builds the zone named by the stack's `medplat:zone`.

`pulumi up` runs it through `__main__.py`; `medplat synth` runs the very same function
under the SDK's mock runtime.
"""
from __future__ import annotations

from pathlib import Path

import pulumi
import yaml
from pydantic import ValidationError
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_openstack as openstack

from medplat import config as stack_config
from medplat.components import (
    DeidAnalyticsZone, DeidAnalyticsZoneArgs, EdgeSite, EdgeSiteArgs, EuPhiZone, EuPhiZoneArgs, Labels,
)
from medplat.components.eu_phi_zone import ComplianceRunArgs, EdgeSiteIngress
from medplat.components.workload_spec import WorkloadSpec, load_spec
from medplat.workloads import catalog, image_lock


def resolve_workloads(names: list[str], zone: str, source: str) -> tuple[list[WorkloadSpec], dict[str, str]]:
    specs = catalog()
    chosen: list[WorkloadSpec] = []
    for name in names:
        spec = specs.get(name)
        if spec is None:
            raise stack_config.ConfigError(
                f"{source}: workloads: unknown workload {name!r}; known: {', '.join(sorted(specs))}")
        if zone not in spec.zones:
            raise stack_config.ConfigError(
                f"{source}: workloads: {name!r} may run only in {', '.join(spec.zones)}, not in {zone!r}")
        chosen.append(spec)
    lock = image_lock()
    return chosen, {spec.name: spec.pinned_image(lock) for spec in chosen}


def extra_workloads(paths: list[str], project_dir: Path, source: str) -> list[WorkloadSpec]:
    """Third-party specs named in the stack: validated like ours, images pinned in the spec."""
    specs = []
    for relative in paths:
        path = project_dir / relative
        where = f"{source}: extraWorkloads: {relative}"
        try:
            spec = load_spec(path)
        except OSError as exc:
            raise stack_config.ConfigError(f"{where}: cannot read: {exc.strerror}") from None
        except yaml.YAMLError:
            raise stack_config.ConfigError(f"{where}: not valid YAML") from None
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"]) or "spec"
            raise stack_config.ConfigError(f"{where}: {field}: {error['msg'].removeprefix('Value error, ')}") from None
        if "@" not in spec.image:
            raise stack_config.ConfigError(f"{where}: image: a third-party image must be pinned by digest")
        if spec.name in catalog():
            raise stack_config.ConfigError(f"{where}: name {spec.name!r} is already a medplat workload")
        specs.append(spec)
    return specs


def build(cfg: stack_config.StackConfig, source: str = "stack config", project_dir: Path | None = None) -> None:
    labels = Labels(zone=cfg.zone, site=cfg.site, data_class="operational", owner=cfg.owner)
    if cfg.zone == "eu-phi":
        _eu_phi(cfg, labels, source)
    elif cfg.zone == "analytics":
        _analytics(cfg, labels, source)
    else:
        _edge(cfg, labels, source, project_dir or Path.cwd())


def _eu_phi(cfg: stack_config.StackConfig, labels: Labels, source: str) -> None:
    phi = cfg.eu_phi
    assert phi is not None
    specs, images = resolve_workloads(phi.workloads, "eu-phi", f"{source}: medplat:euPhi")
    provider = openstack.Provider("openstack-eu", auth_url=cfg.auth_url, region=cfg.region)
    zone = EuPhiZone("eu-phi", EuPhiZoneArgs(
        organization=phi.organization, country=phi.country, region=str(cfg.region),
        network_cidr=str(phi.network_cidr), external_network_id=phi.external_network_id,
        encrypted_volume_type=phi.encrypted_volume_type,
        edge_sites=[EdgeSiteIngress(s.site, str(s.egress_cidr)) for s in phi.edge_sites],
        compute_image=phi.compute.image, compute_flavor=phi.compute.flavor,
        master_flavor=phi.compute.master_flavor, masters=phi.compute.masters, nodes=phi.compute.nodes,
        db_flavor=phi.database.flavor, db_size_gb=phi.database.size_gb, db_version=phi.database.datastore_version,
        backup_volume_gb=phi.backup_volume_gb, workloads=specs, images=images,
        egress_data_classes=list(phi.egress_data_classes),
        ca_cert_pem=phi.platform_ca.cert_pem, ca_key_ref=phi.platform_ca.key_ref,
        analytics_bucket_cidrs=[str(c) for c in phi.analytics_bucket_cidrs],
        dns_nameservers=[str(ip) for ip in phi.dns_nameservers],
        compliance_run=_compliance_run(phi.compliance_run),
    ), labels=labels, opts=pulumi.ResourceOptions(providers={"openstack": provider}))
    for key, value in zone.outputs.items():
        pulumi.export(key, value)


def _compliance_run(run: stack_config.ComplianceRunConfig | None) -> ComplianceRunArgs | None:
    if run is None:
        return None
    spec = catalog()["compliance-run"]
    return ComplianceRunArgs(
        spec=spec, image=spec.pinned_image(image_lock()), stacks=list(run.stacks),
        pulumi_organization=run.pulumi_organization, pulumi_project=run.pulumi_project, pulumi_api=run.pulumi_api,
        state_backend_cidrs=[str(c) for c in run.state_backend_cidrs], token_secret=run.token_secret,
        audit_token_secret=run.audit_token_secret, schedule=run.schedule)


def _analytics(cfg: stack_config.StackConfig, labels: Labels, source: str) -> None:
    analytics = cfg.analytics
    assert analytics is not None
    specs, images = resolve_workloads(analytics.workloads, "analytics", f"{source}: medplat:analytics")
    provider = aws.Provider("aws-eu", region=cfg.region)
    zone = DeidAnalyticsZone("analytics", DeidAnalyticsZoneArgs(
        region=str(cfg.region), vpc_cidr=str(analytics.vpc_cidr),
        availability_zones=list(analytics.availability_zones),
        log_retention_days=analytics.log_retention_days,
        evidence_retention_days=analytics.evidence_retention_days,
        certificate_arn=analytics.certificate_arn,
        writer_principal_arns=list(analytics.writer_principal_arns),
        workloads=specs, images=images,
    ), labels=labels, opts=pulumi.ResourceOptions(providers={"aws": provider}))
    for key, value in zone.outputs.items():
        pulumi.export(key, value)


def _edge(cfg: stack_config.StackConfig, labels: Labels, source: str, project_dir: Path) -> None:
    edge = cfg.edge
    assert edge is not None
    specs, images = resolve_workloads(edge.workloads, "edge", f"{source}: medplat:edge")
    extra = extra_workloads(edge.extra_workloads, project_dir, f"{source}: medplat:edge")
    images.update({spec.name: spec.image for spec in extra})
    kubeconfig = pulumi.Config("kubernetes").require_secret("kubeconfig")
    provider = k8s.Provider(f"k3s-{edge.site}", kubeconfig=kubeconfig, enable_server_side_apply=True)
    site = EdgeSite(f"edge-{edge.site}", EdgeSiteArgs(
        site=edge.site, hospital=edge.hospital, cloud_stack=edge.cloud_stack,
        device_cidrs=[str(c) for c in edge.device_cidrs], workloads=specs, images=images,
        buffer_size=edge.buffer_size, storage_class=edge.storage_class, extra_workloads=extra,
    ), labels=labels, opts=pulumi.ResourceOptions(providers={"kubernetes": provider}))
    pulumi.export("namespace", site.namespace.metadata.name)
    pulumi.export("workloads", sorted(site.workloads))
    pulumi.export("cloudEndpoint", site.cloud_endpoint)


def main() -> None:
    """Entry point for `pulumi up`: validate the engine's config, then build."""
    try:
        build(stack_config.from_runtime())
    except stack_config.ConfigError as exc:
        raise pulumi.RunError(str(exc)) from None
