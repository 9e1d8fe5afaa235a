"""fleet service: device registry keyed by UDI, certificate-bound onboarding, heartbeats,
maintenance intervals, software inventory with SBOM links, and the TUF update repository.

Devices reach the service through the zone's TLS-terminating ingress, which verifies their
client certificate and forwards it in `X-Forwarded-Tls-Client-Cert` (Traefik's
passTLSClientCert); a heartbeat is accepted only with the certificate bound at onboarding.
"""
from __future__ import annotations

import datetime
import hashlib
import urllib.parse
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Header, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from medplat.service.app import create_app
from medplat.service.db import make_engine
from medplat.service.fhir import FhirError
from medplat.service.settings import ServiceSettings, service_config
from medplat.service.tls import serve
from medplat.workloads.fleet.registry import devices, metadata, software
from medplat.workloads.fleet.udi import UdiError, parse_udi

NAME = "fleet"


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    port: int = 8070
    device_ca: Path | None = None  # PlatformPki CA that issues device certificates
    tuf_repository: Path | None = None  # default: <data_dir>/tuf
    client_cert_header: str = "x-forwarded-tls-client-cert"


class Registration(BaseModel):
    udi: str = Field(description="GS1 UDI, e.g. (01)10884521062856(17)270707(10)A213B1(21)1234")
    site: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    hardware: str = Field(min_length=1, max_length=64)
    rollout_group: str = Field("canary", alias="rolloutGroup", min_length=1, max_length=64)
    maintenance_days: int = Field(365, alias="maintenanceIntervalDays", ge=1, le=3650)


class Onboarding(BaseModel):
    certificate: str = Field(description="PEM client certificate issued by PlatformPki for this device")


class SoftwareItem(BaseModel):
    component: str = Field(min_length=1, max_length=120)
    version: str = Field(min_length=1, max_length=64)
    sbom: str | None = Field(None, max_length=500, description="URL or bom-ref of its CycloneDX SBOM")


class Heartbeat(BaseModel):
    status: str = Field(pattern=r"^(ok|degraded|fault)$")
    telemetry: dict[str, Any] = Field(default_factory=dict)
    software: list[SoftwareItem] | None = None
    maintained: bool = Field(False, description="maintenance was performed since the last heartbeat")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _fingerprint(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _check_certificate(pem: str, device_id: str, ca: x509.Certificate | None) -> x509.Certificate:
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise FhirError(422, "certificate: not a PEM X.509 certificate", expression=["certificate"]) from None
    now = _now()
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise FhirError(422, "certificate: expired or not yet valid", code="security", expression=["certificate"])
    if ca is not None:
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, Exception) as exc:  # InvalidSignature has no common base
            raise FhirError(422, f"certificate: not issued by the platform CA ({type(exc).__name__})",
                            code="security", expression=["certificate"]) from None
    names = [a.value for a in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        pass
    if device_id not in names and f"urn:medplat:device:{device_id}" not in names:
        raise FhirError(422, f"certificate: subject names {names} do not name device {device_id}",
                        code="security", expression=["certificate"])
    return certificate


def _public(row) -> dict[str, Any]:
    due = (row["last_maintenance"] or row["onboarded_at"])
    return {
        "id": row["id"], "udi": row["udi"], "udiDi": row["udi_di"], "serial": row["serial"], "lot": row["lot"],
        "expiry": row["expiry"].isoformat() if row["expiry"] else None,
        "manufactured": row["manufactured"].isoformat() if row["manufactured"] else None,
        "site": row["site"], "hardware": row["hardware"], "rolloutGroup": row["rollout_group"],
        "status": row["status"], "certificateFingerprint": row["cert_fingerprint"],
        "lastHeartbeat": row["last_heartbeat"].isoformat() if row["last_heartbeat"] else None,
        "maintenanceDue": (due + datetime.timedelta(days=row["maintenance_days"])).date().isoformat() if due else None,
        "telemetry": row["telemetry"] or {},
    }


def build(settings: Settings | None = None):
    settings = settings or Settings()
    engine = make_engine(settings.resolved_database_url(NAME))
    metadata.create_all(engine)
    ca = x509.load_pem_x509_certificate(settings.device_ca.read_bytes()) if settings.device_ca else None
    repository = settings.tuf_repository or settings.data_dir / "tuf"
    router = APIRouter()

    def load(device_id: str):
        with engine.connect() as connection:
            row = connection.execute(select(devices).where(devices.c.id == device_id)).mappings().first()
        if row is None:
            raise FhirError(404, f"no device {device_id!r}")
        return row

    @router.post("/devices", status_code=201, tags=["registry"])
    def register(body: Registration) -> dict[str, Any]:
        """Register a device instance by its GS1 UDI (UDI-DI + serial)."""
        try:
            udi = parse_udi(body.udi)
        except UdiError as exc:
            raise FhirError(422, f"udi: {exc}", code="value", expression=["udi"]) from None
        row = {"id": udi.device_id, "udi": body.udi, "udi_di": udi.di, "serial": udi.serial, "lot": udi.lot,
               "expiry": udi.expiry, "manufactured": udi.manufactured, "site": body.site, "hardware": body.hardware,
               "rollout_group": body.rollout_group, "maintenance_days": body.maintenance_days,
               "status": "registered"}
        try:
            with engine.begin() as connection:
                connection.execute(insert(devices).values(**row))
        except IntegrityError:
            raise FhirError(409, f"device {udi.device_id} is already registered", code="duplicate") from None
        return _public(load(udi.device_id))

    @router.get("/devices", tags=["registry"])
    def list_devices(site: str | None = None, maintenance_due: bool = Query(False, alias="maintenanceDue")):
        query = select(devices).order_by(devices.c.id)
        if site:
            query = query.where(devices.c.site == site)
        with engine.connect() as connection:
            rows = [_public(r) for r in connection.execute(query).mappings()]
        if maintenance_due:
            today = _now().date().isoformat()
            rows = [r for r in rows if r["maintenanceDue"] and r["maintenanceDue"] <= today]
        return {"devices": rows}

    @router.get("/devices/{device_id}", tags=["registry"])
    def get_device(device_id: str) -> dict[str, Any]:
        device = _public(load(device_id))
        with engine.connect() as connection:
            device["software"] = [dict(r) for r in connection.execute(
                select(software.c.component, software.c.version, software.c.sbom)
                .where(software.c.device == device_id).order_by(software.c.component)).mappings()]
        return device

    @router.post("/devices/{device_id}/onboard", tags=["registry"])
    def onboard(device_id: str, body: Onboarding) -> dict[str, Any]:
        """Bind the device to its PlatformPki client certificate (chain, validity, name checked)."""
        load(device_id)
        certificate = _check_certificate(body.certificate, device_id, ca)
        with engine.begin() as connection:
            connection.execute(update(devices).where(devices.c.id == device_id).values(
                cert_fingerprint=_fingerprint(certificate), onboarded_at=_now(), status="onboarded"))
        return _public(load(device_id))

    @router.post("/devices/{device_id}/heartbeat", tags=["telemetry"])
    def heartbeat(device_id: str, body: Heartbeat,
                  client_cert: str | None = Header(None, alias=settings.client_cert_header)) -> dict[str, Any]:
        row = load(device_id)
        if row["cert_fingerprint"] is None:
            raise FhirError(403, f"device {device_id} is not onboarded", code="forbidden")
        if not client_cert:
            raise FhirError(401, "no client certificate forwarded by the ingress", code="login")
        try:
            presented = x509.load_pem_x509_certificate(urllib.parse.unquote(client_cert).encode())
        except ValueError:
            raise FhirError(401, "forwarded client certificate is not PEM", code="login") from None
        if _fingerprint(presented) != row["cert_fingerprint"]:
            raise FhirError(403, "client certificate is not the one bound to this device", code="forbidden")
        now = _now()
        values: dict[str, Any] = {"status": body.status, "last_heartbeat": now, "telemetry": body.telemetry}
        if body.maintained:
            values["last_maintenance"] = now
        with engine.begin() as connection:
            connection.execute(update(devices).where(devices.c.id == device_id).values(**values))
            if body.software is not None:  # the full inventory replaces the previous one
                connection.execute(delete(software).where(software.c.device == device_id))
                if body.software:
                    connection.execute(insert(software), [{"device": device_id, **item.model_dump()}
                                                          for item in body.software])
        return get_device(device_id)

    @router.get("/tuf/metadata/{name}", tags=["updates"])
    def tuf_metadata(name: str) -> FileResponse:
        return _static(repository / "metadata", name)

    @router.get("/tuf/targets/{name:path}", tags=["updates"])
    def tuf_target(name: str) -> FileResponse:
        return _static(repository / "targets", name)

    def health() -> dict[str, Any]:
        return {"database": engine.dialect.name, "tufRepository": (repository / "metadata").is_dir()}

    app = create_app(NAME, __doc__.strip().splitlines()[0], router, health)
    app.state.engine, app.state.repository = engine, repository
    return app, settings


def _static(folder: Path, name: str) -> FileResponse:
    base = folder.resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise FhirError(404, f"no such file {name!r}")
    return FileResponse(path, media_type="application/octet-stream")


def main() -> None:
    app, settings = build()
    serve(app, settings)
