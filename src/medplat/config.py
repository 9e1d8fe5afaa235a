"""Typed schema of a medplat stack's configuration (`stacks/Pulumi.<stack>.yaml`).

The same validation runs under a real `pulumi up` (config from the engine) and offline in
`medplat synth` (config read from the YAML file). A problem is reported as one line naming
the file and the key, e.g. `stacks/Pulumi.edge-x.yaml: medplat:edge.egressCidr: ...`.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from medplat.residency import residency

PROJECT = "medplat"
SLUG = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
# Config namespaces each zone may use besides `medplat:`; everything else is a typo.
PROVIDER_NAMESPACES = {"eu-phi": "openstack", "analytics": "aws", "edge": "kubernetes"}


class ConfigError(Exception):
    """A stack configuration problem, rendered as a single line."""


@dataclass(frozen=True)
class SecretValue:
    """A `secure:` config value. Offline it holds ciphertext; under the engine, plaintext."""

    value: str

    def __repr__(self) -> str:  # never print secrets
        return "SecretValue([secret])"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


def _eu_country(value: str) -> str:
    if value not in residency().eu_countries:
        raise ValueError(f"{value!r} is not an EU member state (ISO 3166 alpha-2)")
    return value


class EdgeSiteRef(_Model):
    site: str = Field(pattern=SLUG)
    egress_cidr: ipaddress.IPv4Network


class PhiCompute(_Model):
    kind: Literal["magnum"] = "magnum"
    image: str
    flavor: str
    master_flavor: str
    masters: Literal[1, 3, 5] = 3
    nodes: int = Field(ge=1, le=100)


class PhiDatabase(_Model):
    flavor: str
    size_gb: int = Field(ge=10, le=16384)
    datastore_version: str = "15"


class PlatformCaConfig(_Model):
    """The mTLS CA's public certificate and the Barbican reference of its key (made with
    `medplat.barbican_ca.create_ca`); the key itself never appears in config."""
    cert_pem: str = Field(min_length=100)
    key_ref: str = Field(pattern=r"^https://[^/]+(/[^/]+)*/v1/secrets/[0-9a-f-]{36}$")

    @field_validator("cert_pem")
    @classmethod
    def _public_only(cls, value: str) -> str:
        if "PRIVATE KEY" in value:
            raise ValueError("holds a private key: only the CA certificate belongs in config")
        if "BEGIN CERTIFICATE" not in value:
            raise ValueError("is not a PEM certificate")
        return value


STACK_NAME = r"^[a-z0-9]([a-z0-9-]{0,23}[a-z0-9])?$"  # fits `compliance-run-<stack>` (a DNS label)


class ComplianceRunConfig(_Model):
    """`medplat compliance run` as one CronJob per stack in the EU zone. Each run reads its stack's
    deployed state from the Pulumi Cloud API with a read-only token the operator stores as a
    Kubernetes Secret (never in config or state) and keeps its OSCAL results on an encrypted volume."""

    stacks: list[str] = Field(min_length=1, description="stacks to re-check (Pulumi.<stack>.yaml names)")
    pulumi_organization: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    pulumi_project: str = Field(default="medplat", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    pulumi_api: str = Field(default="https://api.pulumi.com", pattern=r"^https://[^/\s]+$",
                            description="the state backend's API (https only: a token goes with each call)")
    state_backend_cidrs: list[ipaddress.IPv4Network] = Field(
        min_length=1, description="addresses of the state backend's API: the only place the job may reach "
                                  "besides the audit log")
    schedule: str | None = Field(default=None, pattern=r"^(\S+\s+){4}\S+$",
                                 description="cron, UTC (default: the compliance-run workload's)")
    token_secret: str = Field(default="medplat-compliance-pulumi-token", pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$",
                              description="Secret (key `token`) with a Pulumi token that can read these stacks")
    audit_token_secret: str = Field(default="medplat-compliance-audit-token",
                                    pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$",
                                    description="Secret (key `token`) with an audit-log token of scope audit.write")

    @field_validator("stacks")
    @classmethod
    def _stack_names(cls, value: list[str]) -> list[str]:
        for stack in value:
            if not re.match(STACK_NAME, stack):
                raise ValueError(f"{stack!r} is not a stack name of at most 25 lower-case letters, digits and '-'")
        if len(set(value)) != len(value):
            raise ValueError("a stack is listed twice")
        return value


class EuPhiConfig(_Model):
    provider: str
    organization: str = Field(min_length=2)
    country: str
    network_cidr: ipaddress.IPv4Network
    external_network_id: str = Field(min_length=1)
    dns_nameservers: list[ipaddress.IPv4Address] = Field(default_factory=list)
    encrypted_volume_type: str
    backup_volume_gb: int = Field(default=200, ge=10)
    compute: PhiCompute
    database: PhiDatabase
    edge_sites: list[EdgeSiteRef] = Field(min_length=1)
    workloads: list[str] = Field(min_length=1)
    platform_ca: PlatformCaConfig
    egress_data_classes: list[Literal["phi", "pseudonymized", "deidentified", "operational"]] = Field(
        default_factory=lambda: ["phi", "pseudonymized", "deidentified", "operational"],
        description="data classes edge sites may send to the EU zone; key material never leaves a site",
    )
    analytics_bucket_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=list,
        description="addresses of the analytics zone's S3 endpoint (the AWS region's S3 ranges); only the "
                    "analytics-feed may reach them",
    )
    compliance_run: ComplianceRunConfig | None = Field(
        default=None, description="schedule `medplat compliance run` per stack (a CronJob each)")

    _country = field_validator("country")(classmethod(lambda cls, v: _eu_country(v)))

    @model_validator(mode="after")
    def _checks(self) -> "EuPhiConfig":
        if self.provider not in residency().openstack:
            raise ValueError(f"provider: unknown OpenStack provider {self.provider!r}; known: "
                             f"{', '.join(sorted(residency().openstack))}")
        allowed = residency().encrypted_volume_types(self.provider)
        if self.encrypted_volume_type not in allowed:
            raise ValueError(f"encryptedVolumeType: {self.encrypted_volume_type!r} is not an encrypted volume "
                             f"type of {self.provider}; allowed: {', '.join(allowed)}")
        sites = [s.site for s in self.edge_sites]
        if len(set(sites)) != len(sites):
            raise ValueError("edgeSites: a site is listed twice")
        if "compliance-run" in self.workloads:
            raise ValueError("workloads: compliance-run runs once per stack: configure it under complianceRun")
        return self


class AnalyticsConfig(_Model):
    vpc_cidr: ipaddress.IPv4Network
    availability_zones: list[str] = Field(min_length=2, max_length=3)
    log_retention_days: int = Field(default=400, ge=365, description="NIS2/ISO 27001 8.15: keep logs >= 1 year")
    evidence_retention_days: int = Field(default=3650, ge=365)
    certificate_arn: str = Field(pattern=r"^arn:aws:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]+$")
    writer_principal_arns: list[str] = Field(min_length=1, description="who may write de-identified data")
    workloads: list[str] = Field(min_length=1)

    @field_validator("writer_principal_arns")
    @classmethod
    def _arns(cls, values: list[str]) -> list[str]:
        for arn in values:
            if not re.match(r"^arn:aws:iam::\d{12}:role/[\w+=,.@/-]+$", arn):
                raise ValueError(f"{arn!r} is not an IAM role ARN")
        return values


class EdgeConfig(_Model):
    site: str = Field(pattern=SLUG)
    hospital: str = Field(min_length=2)
    country: str
    egress_cidr: ipaddress.IPv4Network
    device_cidrs: list[ipaddress.IPv4Network] = Field(min_length=1)
    cloud_stack: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$",
                             description="fully qualified EU PHI zone stack: org/project/stack")
    workloads: list[str] = Field(min_length=1)
    buffer_size: str = Field(default="50Gi", pattern=r"^[0-9]+(Mi|Gi|Ti)$")
    storage_class: str = "local-path"
    extra_workloads: list[str] = Field(
        default_factory=list,
        description="third-party workload.yaml files (relative to the project), images pinned by digest")

    _country = field_validator("country")(classmethod(lambda cls, v: _eu_country(v)))


# An accepted risk is approved again at least yearly: a waiver running longer waives nothing.
MAX_WAIVER_DAYS = 366


class Waiver(_Model):
    """An accepted violation: always visible in reports, never silent, never open-ended."""

    policy: str = Field(min_length=3, description="policy id or checkov check id (CKV_...)")
    resource: str = Field(min_length=1, description="resource URN, resource name, or a glob over them")
    reason: str = Field(min_length=10)
    approver: str = Field(min_length=3)
    expires: datetime.date

    def too_long(self, today: datetime.date) -> bool:
        return (self.expires - today).days > MAX_WAIVER_DAYS

    def in_force(self, today: datetime.date) -> bool:
        """Not expired and not open-ended: the one rule the gate, the pack and checkov-config apply."""
        return today <= self.expires and not self.too_long(today)


class StackConfig(_Model):
    """The `medplat:*` keys of one stack, plus the provider keys the program reads."""

    zone: Literal["eu-phi", "analytics", "edge"]
    owner: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
                       description="owning team, a Kubernetes-label-safe slug")
    environment: Literal["dev", "staging", "prod"] = "prod"
    eu_phi: EuPhiConfig | None = None
    analytics: AnalyticsConfig | None = None
    edge: EdgeConfig | None = None
    waivers: list[Waiver] = Field(default_factory=list)
    # Provider settings (validated here, passed to the provider by the program).
    region: str | None = Field(default=None, exclude=True)
    auth_url: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _zone_section(self) -> "StackConfig":
        sections = {"eu-phi": self.eu_phi, "analytics": self.analytics, "edge": self.edge}
        if sections[self.zone] is None:
            raise ValueError(f"{_SECTION[self.zone]}: required for zone {self.zone!r}")
        for zone, section in sections.items():
            if zone != self.zone and section is not None:
                raise ValueError(f"{_SECTION[zone]}: not allowed in a {self.zone!r} stack")
        return self

    @property
    def site(self) -> str:
        return self.edge.site if self.edge else self.zone


_SECTION = {"eu-phi": "euPhi", "analytics": "analytics", "edge": "edge"}


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    if not parts:
        return "medplat"
    head, rest = parts[0], parts[1:]
    text = f"medplat:{head}"
    for part in rest:
        text += f"[{part}]" if part.isdigit() else f".{part}"
    return text


def validate(raw: dict[str, Any], source: str) -> StackConfig:
    """Validate a flat Pulumi config map (`ns:key` -> value) for the medplat program."""
    medplat: dict[str, Any] = {}
    zone = raw.get("medplat:zone")
    provider_ns = PROVIDER_NAMESPACES.get(zone) if isinstance(zone, str) else None
    for key in sorted(raw):
        namespace, _, name = key.partition(":")
        if not name:
            raise ConfigError(f"{source}: {key}: config keys must be namespaced, e.g. medplat:{key}")
        if namespace == PROJECT:
            value = raw[key]
            if isinstance(value, SecretValue):
                raise ConfigError(f"{source}: {key}: must not be a secret")
            medplat[name] = value
        elif provider_ns is not None and namespace != provider_ns:
            raise ConfigError(f"{source}: {key}: unknown key: a {zone!r} stack takes only medplat:* "
                              f"and {provider_ns}:* keys")
    try:
        config = StackConfig.model_validate(medplat)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = _loc(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        raise ConfigError(f"{source}: {where}: {message}") from None
    return _check_provider_keys(config, raw, source)


def _check_provider_keys(config: StackConfig, raw: dict[str, Any], source: str) -> StackConfig:
    def need(key: str) -> Any:
        if key not in raw:
            raise ConfigError(f"{source}: {key}: required key is missing for zone {config.zone!r}")
        return raw[key]

    if config.zone == "analytics":
        region = need("aws:region")
        problem = residency().aws_region_problem(str(region))
        if problem:
            raise ConfigError(f"{source}: aws:region: {problem}")
        for zone_name in config.analytics.availability_zones:  # type: ignore[union-attr]
            if not zone_name.startswith(str(region)):
                raise ConfigError(f"{source}: medplat:analytics.availabilityZones: {zone_name!r} is not in {region}")
        return config.model_copy(update={"region": region})
    if config.zone == "eu-phi":
        region, auth_url = str(need("openstack:region")), str(need("openstack:authUrl"))
        provider = config.eu_phi.provider  # type: ignore[union-attr]
        problem = residency().openstack_region_problem(provider, region)
        if problem:
            raise ConfigError(f"{source}: openstack:region: {problem}")
        problem = residency().openstack_auth_problem(provider, auth_url)
        if problem:
            raise ConfigError(f"{source}: openstack:authUrl: {problem}")
        if "openstack:password" in raw and not isinstance(raw["openstack:password"], SecretValue):
            raise ConfigError(f"{source}: openstack:password: must be set with --secret")
        if "openstack:applicationCredentialSecret" in raw and not isinstance(
                raw["openstack:applicationCredentialSecret"], SecretValue):
            raise ConfigError(f"{source}: openstack:applicationCredentialSecret: must be set with --secret")
        return config.model_copy(update={"region": region, "auth_url": auth_url})
    kubeconfig = need("kubernetes:kubeconfig")
    if not isinstance(kubeconfig, SecretValue):
        raise ConfigError(f"{source}: kubernetes:kubeconfig: must be a secret (pulumi config set --secret)")
    return config


def read_stack_file(path: Path) -> dict[str, Any]:
    """Read `Pulumi.<stack>.yaml` into a flat config map; `secure:` values become SecretValue."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML") from None
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise ConfigError(f"{path}: config: required mapping is missing")
    flat: dict[str, Any] = {}
    for key, value in document["config"].items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            flat[str(key)] = SecretValue(str(value["secure"]))
        else:
            flat[str(key)] = value
    return flat


def load_stack(path: Path) -> StackConfig:
    return validate(read_stack_file(path), str(path))


def from_runtime() -> StackConfig:
    """Validate the config the Pulumi engine handed to this program run."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    values = dict(runtime_config.CONFIG.get() or runtime_config.get_config_env())
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if runtime_config.is_config_secret(key):
            flat[key] = SecretValue(str(value))
        elif isinstance(value, str) and value[:1] in "{[":
            try:
                flat[key] = json.loads(value)
            except ValueError:
                flat[key] = value
        else:
            flat[key] = value
    return validate(flat, f"stack {pulumi.get_stack()!r} config")
