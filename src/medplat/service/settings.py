"""Workload settings: `MEDPLAT_<NAME>_<FIELD>` environment variables over embedded defaults."""
from __future__ import annotations

import os

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
    # Client certificates verified when presented but not demanded (fleet: devices present
    # theirs, operators use bearer tokens); routes still declare which identity they need.
    tls_client_optional: bool = False
    tls_crl: Path | None = None  # optional revocation list for client certificates
    # Plain-HTTP listener serving only /healthz: Kubernetes probes cannot present client
    # certificates, so an mTLS-only service exposes its health here.
    health_port: int | None = None
    log_level: str = "info"
    # The zone's audit-log service; unset, audit records wait in <data_dir>/audit-spool.jsonl.
    audit_url: str | None = None
    audit_token_file: Path | None = None  # bearer token (scope audit.write), rotated in place by the platform
    audit_ca: Path | None = None  # https audit log: its CA, and this workload's client certificate
    audit_client_cert: Path | None = None
    audit_client_key: Path | None = None
    # OAuth2 bearer tokens (services that use medplat.service.auth): the issuer, this
    # service's audience (default: its name) and the issuer's JWKS (file or https URL).
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_jwks: str | None = None
    # Peers (IPs, CIDRs) whose X-Forwarded-Tls-Client-Cert is believed: the TLS-terminating
    # ingress only. Empty: forwarded certificates are refused, only the TLS connection counts.
    trusted_proxies: list[str] = []
    client_cert_header: str = "x-forwarded-tls-client-cert"
    broker_ca: Path | None = None  # mqtts:// site broker: its CA
    broker_password_file: Path | None = None  # this workload's broker password (mounted secret)
    max_body_bytes: int = 10 * 1024 * 1024  # request bodies beyond this get 413 while streaming
    # OpenTelemetry: spans are always recorded; exported (OTLP/gRPC, PHI-free allow-list) only when
    # an endpoint is set. The trace key makes site/device ids opaque; default kept in data_dir.
    otlp_endpoint: str | None = None
    otlp_ca: Path | None = None
    trace_key_file: Path | None = None

    def resolved_database_url(self, name: str) -> str:
        if self.database_url:
            return self.database_url
        private_dir(self.data_dir)
        return f"sqlite:///{(self.data_dir / f'{name}.sqlite').resolve()}"


def private_dir(path: Path) -> Path:
    """A folder only the service user can enter (0700): databases, keys and spools live here."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    """A file only the service user can read (0600) in a private folder; created before SQLite opens it,
    so its -wal/-shm files copy the mode."""
    private_dir(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    return path


def service_config(name: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=env_prefix(name), extra="ignore")
