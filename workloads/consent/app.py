"""consent service: FHIR R4 Consent store and decisions (`POST /decide`), every decision audited.

Consent resources are validated with fhir.resources (R4B, whose Consent is R4's) and stored
in PostgreSQL (SQLite by default). Revocation is an update of `status` (e.g. `inactive`).
Scopes: consent.read, consent.write, consent.decide. Every write, read and decision is audited
with the caller's identity.
"""
from __future__ import annotations

from pathlib import Path

import datetime
import threading
import uuid
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Response
from fhir.resources.R4B.consent import Consent
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import JSON, Column, DateTime, MetaData, String, Table, insert, select, update

from medplat.service.app import create_app
from medplat.service.audit import AuditClient, balp_consent_decision, balp_event
from medplat.service.auth import Authenticator, Principal
from medplat.service.db import make_engine
from medplat.service.migrations import migrate
from medplat.service.fhir import FhirError, searchset
from medplat.service.settings import ServiceSettings, service_config
from medplat.service.tls import serve
from medplat.workloads.consent.engine import CompiledConsent, Decision, Request, decide

NAME = "consent"
metadata = MetaData()
consents = Table(
    "consents", metadata,
    Column("id", String(64), primary_key=True),
    Column("patient", String(200), nullable=False, index=True),
    Column("status", String(32), nullable=False),
    Column("resource", JSON, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
)


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    port: int = 8060
    # Decision when no consent applies, per purpose of use (v3-ActReason); default deny.
    when_nothing_applies: dict[str, str] = {}
    # Obligations attached to a permit, per purpose of use.
    obligations: dict[str, list[str]] = {"HRESCH": ["pseudonymize"], "HMARKT": ["deidentify"]}


class DecideRequest(BaseModel):
    patient: str = Field(pattern=r"^Patient/[A-Za-z0-9\-.]{1,64}$")
    actors: list[str] = Field(default_factory=list, description="references of the requesting parties")
    purpose: str = Field(min_length=1, description="purpose of use, v3-ActReason code, e.g. TREAT, HRESCH")
    action: str = Field("access", description="consentaction code: collect, access, use, disclose, correct")
    resource_type: str | None = Field(None, alias="resourceType")
    data_class: str | None = Field(None, alias="dataClass")
    security_labels: list[str] = Field(default_factory=list, alias="securityLabels")
    data: list[str] = Field(default_factory=list, description="references of the data concerned")
    time: datetime.datetime | None = None


def validate_consent(resource: Any) -> dict[str, Any]:
    if not isinstance(resource, dict) or resource.get("resourceType") != "Consent":
        raise FhirError(422, "resource is not a FHIR Consent", code="invalid", expression=["Consent"])
    try:
        Consent.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "Consent." + ".".join(str(p) for p in first["loc"])
        raise FhirError(422, f"{where}: {first['msg']}", code="invalid", expression=[where]) from None
    patient = resource.get("patient")
    patient = patient.get("reference") if isinstance(patient, dict) else None
    if not isinstance(patient, str) or not patient.startswith("Patient/"):
        raise FhirError(422, "Consent.patient must reference a Patient", code="required", expression=["Consent.patient"])
    if not resource.get("provision"):
        raise FhirError(422, "Consent.provision is required to decide anything", code="required",
                        expression=["Consent.provision"])
    _check_provision_types(resource["provision"], "Consent.provision")
    return resource


def _check_provision_types(provision: dict[str, Any], where: str) -> None:
    # fhir.resources checks the code's syntax only; R4 binds provision.type (required) to deny | permit.
    if provision.get("type") not in (None, "deny", "permit"):
        raise FhirError(422, f"{where}.type: {provision['type']!r} is not deny or permit", code="code-invalid",
                        expression=[f"{where}.type"])
    for index, child in enumerate(provision.get("provision", [])):
        _check_provision_types(child, f"{where}.provision[{index}]")


def build(settings: Settings | None = None):
    settings = settings or Settings()
    engine = make_engine(settings.resolved_database_url(NAME))
    migrate(engine, NAME, Path(__file__).parent / "migrations", metadata)
    auth = Authenticator(NAME, settings)
    audit = AuditClient.for_service(settings)
    cache: dict[str, list[CompiledConsent]] = {}
    lock = threading.Lock()
    router = APIRouter()

    def patient_consents(patient: str) -> list[CompiledConsent]:
        with lock:
            if patient not in cache:
                with engine.connect() as connection:
                    rows = connection.execute(select(consents.c.resource).where(consents.c.patient == patient))
                    cache[patient] = [CompiledConsent.compile(r.resource) for r in rows]
            return cache[patient]

    def store(resource: dict[str, Any], *, new: bool) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.timezone.utc)
        resource["meta"] = {**resource.get("meta", {}), "lastUpdated": now.isoformat()}
        row = {"patient": resource["patient"]["reference"], "status": resource["status"], "resource": resource,
               "last_updated": now}
        with engine.begin() as connection:
            if new:
                connection.execute(insert(consents).values(id=resource["id"], **row))
            else:
                previous = connection.execute(select(consents.c.patient).where(consents.c.id == resource["id"])).first()
                if previous is None:
                    raise FhirError(404, f"no Consent/{resource['id']}")
                connection.execute(update(consents).where(consents.c.id == resource["id"]).values(**row))
                with lock:
                    cache.pop(previous.patient, None)
        with lock:
            cache.pop(row["patient"], None)
        return resource

    def audited(interaction: str, principal: Principal, resource: dict[str, Any]) -> None:
        audit.record(balp_event(interaction, source=NAME, agent=principal.subject,
                                patient=resource["patient"]["reference"], entities=[f"Consent/{resource['id']}"],
                                description=f"Consent status {resource.get('status')}"))

    @router.post("/Consent", status_code=201, tags=["Consent"])
    def create(response: Response, resource: dict[str, Any] = Body(...),
               principal: Principal = Depends(auth.require("consent.write"))) -> dict[str, Any]:
        resource = validate_consent(resource)
        resource["id"] = resource.get("id") or uuid.uuid4().hex
        with engine.connect() as connection:
            if connection.execute(select(consents.c.id).where(consents.c.id == resource["id"])).first():
                raise FhirError(409, f"Consent/{resource['id']} exists; update it with PUT", code="duplicate")
        response.headers["Location"] = f"Consent/{resource['id']}"
        stored = store(resource, new=True)
        audited("create", principal, stored)
        return stored

    @router.put("/Consent/{consent_id}", tags=["Consent"])
    def replace(consent_id: str, resource: dict[str, Any] = Body(...),
                principal: Principal = Depends(auth.require("consent.write"))) -> dict[str, Any]:
        """Update, e.g. revoke by setting status to inactive."""
        resource = validate_consent(resource)
        if resource.get("id") not in (None, consent_id):
            raise FhirError(400, "resource id does not match the URL", expression=["Consent.id"])
        resource["id"] = consent_id
        stored = store(resource, new=False)
        audited("update", principal, stored)
        return stored

    @router.get("/Consent/{consent_id}", tags=["Consent"])
    def read(consent_id: str, principal: Principal = Depends(auth.require("consent.read"))) -> dict[str, Any]:
        with engine.connect() as connection:
            row = connection.execute(select(consents.c.resource).where(consents.c.id == consent_id)).first()
        if row is None:
            raise FhirError(404, f"no Consent/{consent_id}")
        audited("read", principal, row.resource)
        return row.resource

    @router.get("/Consent", tags=["Consent"])
    def search(patient: str = Query(..., max_length=200), status: str | None = Query(None, max_length=32),
               principal: Principal = Depends(auth.require("consent.read"))) -> dict[str, Any]:
        query = select(consents.c.resource).where(consents.c.patient == patient).order_by(consents.c.id)
        if status:
            query = query.where(consents.c.status == status)
        with engine.connect() as connection:
            found = [r.resource for r in connection.execute(query)]
        audit.record(balp_event("search-type", source=NAME, agent=principal.subject, patient=patient,
                                entities=[f"Consent/{r['id']}" for r in found], description=f"{len(found)} found"))
        return searchset(found)

    @router.post("/decide", tags=["decision"])
    def decide_endpoint(body: DecideRequest, principal: Principal = Depends(auth.require("consent.decide"))):
        request = Request(patient=body.patient, actors=frozenset(body.actors), purpose=body.purpose,
                          action=body.action, resource_type=body.resource_type, data_class=body.data_class,
                          labels=frozenset(body.security_labels), data=frozenset(body.data),
                          time=body.time or datetime.datetime.now(datetime.timezone.utc))
        result = decision_for(request)
        audit.record(balp_consent_decision(
            decision=result.decision, patient=body.patient, consents=[b["consent"] for b in result.basis],
            actors=body.actors, purpose=body.purpose, source=NAME, requester=principal.subject))
        return {"decision": result.decision, "basis": result.basis, "obligations": result.obligations,
                "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}

    def decision_for(request: Request) -> Decision:
        return decide(patient_consents(request.patient), request,
                      when_nothing_applies=settings.when_nothing_applies.get(request.purpose, "deny"),
                      obligations=settings.obligations.get(request.purpose, []))

    def health() -> dict[str, Any]:
        return {"database": engine.dialect.name, "issuer": auth.issuer}

    app = create_app(NAME, __doc__.strip().splitlines()[0], router, health, settings=settings,
                     collectors=[audit.collector()])
    app.state.engine, app.state.audit, app.state.auth, app.state.decide = engine, audit, auth, decision_for
    return app, settings


def main() -> None:
    app, settings = build()
    serve(app, settings)
