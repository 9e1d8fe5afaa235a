"""The declarative Workload spec: the extension point integrators fill in to add a service.

A spec says what a service is (image, ports, health, resources, data it reads and writes,
zones it may run in); the `Workload` component decides how it runs (hardened Kubernetes
objects). Specs live in `workloads/<name>/workload.yaml`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DataClass = Literal["phi", "pseudonymized", "deidentified", "key-material", "operational"]
Zone = Literal["eu-phi", "analytics", "edge"]
Role = Literal[
    "adapter", "alarm-router", "analytics", "anonymizer", "audit", "broker", "compliance", "consent",
    "fleet", "ingest", "pseudonymizer", "store-and-forward",
]
# `@group` peers are resolved by the deploying site: device VLANs, the cloud ingress,
# the edge sites' egress ranges, every workload of the same namespace, or the API of the
# Pulumi state backend (read by the scheduled compliance runs).
PEER_GROUPS = ("@devices", "@cloud", "@edge-sites", "@database", "@site-workloads", "@analytics-bucket",
               "@state-backend")

NAME = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
DIGEST_REF = re.compile(r"^[a-z0-9.\-/:]+@sha256:[0-9a-f]{64}$")
REPOSITORY = re.compile(r"^[a-z0-9.\-]+(:[0-9]+)?(/[a-z0-9._\-]+)+$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Port(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,14}$")
    port: int = Field(ge=1024, le=65535, description="container port; >= 1024 so it binds as non-root")
    protocol: Literal["TCP", "UDP"] = "TCP"
    node_port: int | None = Field(default=None, alias="nodePort", ge=30000, le=32767)


class Health(_Strict):
    path: str | None = Field(default=None, pattern=r"^/", description="HTTP GET path; omitted: TCP probe")
    readiness_path: str | None = Field(default=None, alias="readinessPath", pattern=r"^/",
                                       description="readiness probe path when it differs (medplat services: /readyz)")
    port: str


class Quantities(_Strict):
    cpu: str
    memory: str

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity")
        return value


class Resources(_Strict):
    requests: Quantities
    limits: Quantities


class SecretMount(_Strict):
    name: Literal["mtls-client", "mtls-server", "mqtt-broker-passwords", "state-token", "audit-token"] = Field(
        description="credential issued by PlatformPki, the site broker's per-workload passwords, or a token "
                    "the operator stores (state backend read token, audit-log append token)")
    mount_path: str = Field(alias="mountPath", pattern=r"^/")


class Volume(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    mount_path: str = Field(alias="mountPath", pattern=r"^/")
    size: str = Field(description="persistent volume claim size, e.g. 10Gi")


class Batch(_Strict):
    """Batch work as a Kubernetes Indexed Job: `completions` shards, `parallelism` at a time.
    Each pod gets JOB_COMPLETION_INDEX from Kubernetes and runs `args` (which may use it)."""

    completions: int = Field(ge=1, le=10_000)
    parallelism: int = Field(ge=1, le=1_000)
    args: list[str] = Field(min_length=1)
    backoff_limit_per_index: int = Field(2, alias="backoffLimitPerIndex", ge=0, le=10)


class Schedule(_Strict):
    """Recurring work as a Kubernetes CronJob (one run at a time). A workload with a schedule
    and no ports is a job only: no Deployment or Service."""

    cron: str = Field(pattern=r"^(\S+\s+){4}\S+$", description="five-field cron expression, UTC")
    args: list[str] = Field(default_factory=list)
    active_deadline_seconds: int = Field(3600, alias="activeDeadlineSeconds", ge=60, le=86_400)
    backoff_limit: int = Field(2, alias="backoffLimit", ge=0, le=10)


class DataClasses(_Strict):
    reads: list[DataClass] = Field(default_factory=list)
    writes: list[DataClass] = Field(default_factory=list)


class Network(_Strict):
    ingress_from: list[str] = Field(default_factory=list, alias="ingressFrom")
    egress_to: list[str] = Field(default_factory=list, alias="egressTo")


class WorkloadSpec(_Strict):
    name: str
    description: str = Field(min_length=10)
    image: str = Field(description="repository (digest from images.lock.yaml) or repository@sha256:digest")
    roles: list[Role] = Field(default_factory=list)
    zones: list[Zone] = Field(min_length=1)
    ports: list[Port] = Field(default_factory=list)
    health: Health | None = Field(None, description="required, except for a job-only workload (schedule, no ports)")
    resources: Resources
    replicas: int = Field(default=1, ge=1, le=20)
    env: dict[str, str] = Field(default_factory=dict)
    secrets: list[SecretMount] = Field(default_factory=list)
    volumes: list[Volume] = Field(default_factory=list)
    config_maps: list[str] = Field(default_factory=list, alias="configMaps")
    data_classes: DataClasses = Field(alias="dataClasses")
    network: Network = Field(default_factory=Network)
    run_as_user: int = Field(default=10001, alias="runAsUser", ge=1000)
    args: list[str] = Field(default_factory=list, description="container arguments (replace the image's CMD)")
    # Files shipped beside workload.yaml, mounted read-only at /etc/medplat/files/<name>.
    # In YAML a list of file names; loaded, the name -> content map.
    config_files: dict[str, str] = Field(default_factory=dict, alias="configFiles")
    batch: Batch | None = Field(None, description="also deploy an Indexed Job for sharded batch work")
    schedule: Schedule | None = Field(None, description="run as a CronJob (job only when it has no ports)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError("must be a DNS label: lower-case letters, digits and '-', at most 40 characters")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if "@" in value:
            if not DIGEST_REF.match(value):
                raise ValueError("a pinned image must be repository@sha256:<64 hex digits>")
        elif ":" in value.rsplit("/", 1)[-1]:
            raise ValueError("tags are not allowed: pin the image by digest (repository@sha256:...)")
        elif not REPOSITORY.match(value):
            raise ValueError(f"{value!r} is not an image repository")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.match(r"^[A-Z_][A-Z0-9_]*$", key):
                raise ValueError(f"environment variable name {key!r} is not UPPER_SNAKE_CASE")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "WorkloadSpec":
        names = {p.name for p in self.ports}
        if self.health is None:
            if self.schedule is None or self.ports:
                raise ValueError("health: required for a workload that serves (only a job-only workload has none)")
        elif self.health.port not in names:
            raise ValueError(f"health.port {self.health.port!r} is not one of the ports {sorted(names)}")
        for peer in [*self.network.ingress_from, *self.network.egress_to]:
            if peer.startswith("@") and peer not in PEER_GROUPS:
                raise ValueError(f"unknown peer group {peer!r}; expected one of {', '.join(PEER_GROUPS)}")
        return self

    @property
    def env_prefix(self) -> str:
        return "MEDPLAT_" + self.name.upper().replace("-", "_") + "_"

    def pinned_image(self, lock: dict[str, str]) -> str:
        if "@" in self.image:
            return self.image
        digest = lock.get(self.name)
        if digest is None:
            raise ValueError(f"workload {self.name!r}: image {self.image} has no digest in images.lock.yaml")
        return f"{self.image}@{digest}"


CONFIG_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def spec_from_text(text: str, folder) -> WorkloadSpec:
    """A spec from its YAML; `configFiles` names are read from `folder` (a Path or Traversable)."""
    document = yaml.safe_load(text) or {}
    names = document.get("configFiles") or []
    if isinstance(names, list):
        for file_name in names:
            if not isinstance(file_name, str) or not CONFIG_FILE.match(file_name):
                raise ValueError(f"configFiles: {file_name!r} is not a plain file name beside workload.yaml")
        document["configFiles"] = {name: (folder / name).read_text(encoding="utf-8") for name in names}
    return WorkloadSpec.model_validate(document)


def load_spec(path: Path) -> WorkloadSpec:
    return spec_from_text(path.read_text(encoding="utf-8"), path.parent)
