"""Workload settings: `MEDPLAT_<NAME>_<FIELD>` environment variables over embedded defaults."""
from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


def env_prefix(name: str) -> str:
    return "MEDPLAT_" + name.upper().replace("-", "_") + "_"


class ServiceSettings(BaseSettings):
    """Fields every workload has. Subclasses set `model_config = service_config("<name>")`."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(".medplat")
    database_url: str | None = None  # default: SQLite file in data_dir
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set => clients must present a certificate from this CA
    tls_crl: Path | None = None  # optional revocation list for client certificates
    # Plain-HTTP listener serving only /healthz: Kubernetes probes cannot present client
    # certificates, so an mTLS-only service exposes its health here.
    health_port: int | None = None
    log_level: str = "info"
    # The zone's audit-log service; unset, audit records wait in <data_dir>/audit-spool.jsonl.
    audit_url: str | None = None
    # OAuth2 bearer tokens (services that use medplat.service.auth): the issuer, this
    # service's audience (default: its name) and the issuer's JWKS (file or https URL).
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_jwks: str | None = None

    def resolved_database_url(self, name: str) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / f'{name}.sqlite').resolve()}"


def service_config(name: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=env_prefix(name), extra="ignore")
