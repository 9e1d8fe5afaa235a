"""fleet service: device registry keyed by UDI, certificate-bound onboarding, heartbeats,
maintenance intervals, software inventory with SBOM links, and the TUF update repository.

Devices reach the service over mutual TLS, directly or through the zone's TLS-terminating
ingress, which forwards the verified client certificate in `X-Forwarded-Tls-Client-Cert`
(Traefik's passTLSClientCert) — believed only from `TRUSTED_PROXIES`; a heartbeat is accepted
only with the certificate bound at onboarding.

Access: registering needs `fleet.admin`, reading `fleet.read`; onboarding needs `fleet.onboard`
(the provisioning station) and proof of possession: the device signs a fresh server challenge
with the key of the certificate it presents. An onboarded device is re-bound only by an explicit
re-provision (`reprovision: true`) with `fleet.reprovision`. Every onboarding decision is
audited. TUF metadata and targets are public (signed; clients verify them).
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import secrets
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from medplat.service.access import Peers, public
from medplat.service.app import create_app
from medplat.service.audit import AuditClient, balp_event
from medplat.service.auth import Authenticator, Principal
from medplat.service.db import make_engine
from medplat.service.migrations import migrate
from medplat.service.fhir import FhirError
from medplat.service.settings import ServiceSettings, service_config
from medplat.service.tls import serve
from medplat.workloads.fleet.registry import challenges, devices, metadata, software
from medplat.workloads.fleet.udi import UdiError, parse_udi

NAME = "fleet"


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    port: int = 8070
    device_ca: Path | None = None  # PlatformPki CA that issues device certificates
    tuf_repository: Path | None = None  # default: <data_dir>/tuf
    challenge_ttl_s: int = Field(300, ge=10, le=3600)


class Registration(BaseModel):
    udi: str = Field(description="GS1 UDI, e.g. (01)10884521062856(17)270707(10)A213B1(21)1234")
    site: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    hardware: str = Field(min_length=1, max_length=64)
    rollout_group: str = Field("canary", alias="rolloutGroup", min_length=1, max_length=64)
    maintenance_days: int = Field(365, alias="maintenanceIntervalDays", ge=1, le=3650)


class Onboarding(BaseModel):
    certificate: str = Field(max_length=16_384, description="PEM client certificate issued by PlatformPki for this device")
    challenge: str = Field(max_length=128, description="the nonce from POST /devices/{id}/challenge")
    signature: str = Field(max_length=2048, description="base64 signature by the device key over "
                                                        "'medplat-fleet-onboard:<device id>:<challenge>'")
    reprovision: bool = Field(False, description="re-bind an onboarded device (scope fleet.reprovision)")


def challenge_message(device_id: str, challenge: str) -> bytes:
    """What the device signs to prove it holds the certificate's key (bound to device and nonce)."""
    return f"medplat-fleet-onboard:{device_id}:{challenge}".encode()


def _verify_possession(certificate: x509.Certificate, message: bytes, signature_b64: str) -> None:
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        key = certificate.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise InvalidSignature()
    except (InvalidSignature, ValueError):
        raise FhirError(403, "signature: the challenge is not signed by the certificate's key", code="security",
                        expression=["signature"]) from None


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


def _nonce_digest(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


def issue_challenge(engine, device_id: str, nonce: str, expires_at: float) -> None:
    """Store the device's new challenge (replacing an older one) and drop expired ones."""
    with engine.begin() as connection:
        connection.execute(delete(challenges).where(
            (challenges.c.device == device_id) | (challenges.c.expires_at < time.time())))
        connection.execute(insert(challenges).values(device=device_id, nonce_sha256=_nonce_digest(nonce),
                                                     expires_at=expires_at))


def redeem_challenge(engine, device_id: str, nonce: str) -> bool:
    """Consume the device's challenge (any attempt uses it up); true if it was this nonce and unexpired.

    DELETE ... RETURNING takes the row in one statement, so of two replicas redeeming the same
    challenge at once only one gets it.
    """
    with engine.begin() as connection:
        issued = connection.execute(delete(challenges).where(challenges.c.device == device_id)
                                    .returning(challenges.c.nonce_sha256, challenges.c.expires_at)).first()
    return (issued is not None and issued.expires_at >= time.time()
            and secrets.compare_digest(issued.nonce_sha256, _nonce_digest(nonce)))


def build(settings: Settings | None = None):
    settings = settings or Settings()
    engine = make_engine(settings.resolved_database_url(NAME))
    migrate(engine, NAME, Path(__file__).parent / "migrations", metadata)
    ca = x509.load_pem_x509_certificate(settings.device_ca.read_bytes()) if settings.device_ca else None
    repository = settings.tuf_repository or settings.data_dir / "tuf"
    peers, auth, audit = Peers(settings), Authenticator(NAME, settings), AuditClient.for_service(settings)
    signed_metadata = public("TUF metadata and targets are signed; devices verify them before use")
    router = APIRouter()

    def load(device_id: str):
        with engine.connect() as connection:
            row = connection.execute(select(devices).where(devices.c.id == device_id)).mappings().first()
        if row is None:
            raise FhirError(404, f"no device {device_id!r}")
        return row

    @router.post("/devices", status_code=201, tags=["registry"])
    def register(body: Registration, principal: Principal = Depends(auth.require("fleet.admin"))) -> dict[str, Any]:
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
        audit.record(balp_event("create", source=NAME, agent=principal.subject, entities=[f"Device/{udi.device_id}"],
                                description="device registered"))
        return _public(load(udi.device_id))

    @router.get("/devices", tags=["registry"], dependencies=[Depends(auth.require("fleet.read"))])
    def list_devices(site: str | None = Query(None, max_length=64),
                     maintenance_due: bool = Query(False, alias="maintenanceDue")):
        query = select(devices).order_by(devices.c.id)
        if site:
            query = query.where(devices.c.site == site)
        with engine.connect() as connection:
            rows = [_public(r) for r in connection.execute(query).mappings()]
        if maintenance_due:
            today = _now().date().isoformat()
            rows = [r for r in rows if r["maintenanceDue"] and r["maintenanceDue"] <= today]
        return {"devices": rows}

    def device_with_software(device_id: str) -> dict[str, Any]:
        device = _public(load(device_id))
        with engine.connect() as connection:
            device["software"] = [dict(r) for r in connection.execute(
                select(software.c.component, software.c.version, software.c.sbom)
                .where(software.c.device == device_id).order_by(software.c.component)).mappings()]
        return device

    @router.get("/devices/{device_id}", tags=["registry"], dependencies=[Depends(auth.require("fleet.read"))])
    def get_device(device_id: str) -> dict[str, Any]:
        return device_with_software(device_id)

    @router.post("/devices/{device_id}/challenge", tags=["registry"])
    def challenge(device_id: str, principal: Principal = Depends(auth.require("fleet.onboard"))) -> dict[str, Any]:
        """A one-time nonce the device signs with its key to prove possession at onboarding."""
        load(device_id)
        nonce = secrets.token_urlsafe(32)
        issue_challenge(engine, device_id, nonce, time.time() + settings.challenge_ttl_s)
        return {"challenge": nonce, "sign": challenge_message(device_id, nonce).decode(),
                "expiresInSeconds": settings.challenge_ttl_s}

    def refuse(principal: Principal, device_id: str, error: FhirError) -> FhirError:
        audit.record(balp_event("update", source=NAME, agent=principal.subject, entities=[f"Device/{device_id}"],
                                outcome="4", description=f"onboarding refused: {str(error.detail)[:120]}"))
        return error

    @router.post("/devices/{device_id}/onboard", tags=["registry"])
    def onboard(device_id: str, body: Onboarding, principal: Principal = Depends(auth.require("fleet.onboard"))):
        """Bind the device to its PlatformPki client certificate (chain, validity, name, possession checked)."""
        row = load(device_id)
        if row["cert_fingerprint"] is not None:
            if not body.reprovision:
                raise refuse(principal, device_id, FhirError(
                    409, f"device {device_id} is already onboarded; re-provisioning must be explicit", code="conflict"))
            if "fleet.reprovision" not in principal.scopes:
                raise refuse(principal, device_id, FhirError(403, "re-provisioning needs scope fleet.reprovision",
                                                             code="forbidden"))
        if not redeem_challenge(engine, device_id, body.challenge):
            raise refuse(principal, device_id, FhirError(403, "challenge: unknown, used or expired; request a new one",
                                                         code="security", expression=["challenge"]))
        try:
            certificate = _check_certificate(body.certificate, device_id, ca)
        except FhirError as exc:
            raise refuse(principal, device_id, exc) from None
        try:
            _verify_possession(certificate, challenge_message(device_id, body.challenge), body.signature)
        except FhirError as exc:
            raise refuse(principal, device_id, exc) from None
        with engine.begin() as connection:
            connection.execute(update(devices).where(devices.c.id == device_id).values(
                cert_fingerprint=_fingerprint(certificate), onboarded_at=_now(), status="onboarded"))
        audit.record(balp_event("update", source=NAME, agent=principal.subject, entities=[f"Device/{device_id}"],
                                description="device re-provisioned" if row["cert_fingerprint"] else "device onboarded"))
        return _public(load(device_id))

    device_peer = peers.require()

    @router.post("/devices/{device_id}/heartbeat", tags=["telemetry"], dependencies=[Depends(device_peer)])
    def heartbeat(device_id: str, body: Heartbeat, request: Request) -> dict[str, Any]:
        row = load(device_id)
        if row["cert_fingerprint"] is None:
            raise FhirError(403, f"device {device_id} is not onboarded", code="forbidden")
        presented = peers.certificate(request)
        if presented is None or _fingerprint(presented) != row["cert_fingerprint"]:
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
        return device_with_software(device_id)

    @router.get("/tuf/metadata/{name}", tags=["updates"], dependencies=[signed_metadata])
    def tuf_metadata(name: str) -> FileResponse:
        return _static(repository / "metadata", name)

    @router.get("/tuf/targets/{name:path}", tags=["updates"], dependencies=[signed_metadata])
    def tuf_target(name: str) -> FileResponse:
        return _static(repository / "targets", name)

    def health() -> dict[str, Any]:
        return {"database": engine.dialect.name, "tufRepository": (repository / "metadata").is_dir()}

    app = create_app(NAME, __doc__.strip().splitlines()[0], router, health, settings=settings,
                     collectors=[audit.collector()])
    app.state.engine, app.state.repository, app.state.audit, app.state.auth = engine, repository, audit, auth
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
