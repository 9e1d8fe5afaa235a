"""pseudonymizer service: domains with their own keys, batch pseudonyms, audited
de-pseudonymization, and FHIR `$pseudonymize` / `$de-pseudonymize` on Parameters (shaped like
the gPAS-based TTP operations of the German Medical Informatics Initiative).

Scopes: pseudonym.admin (domains, rotation), pseudonym.create, pseudonym.resolve (the
distinct role for de-pseudonymization; every use is audited).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fhir.resources.R4B.parameters import Parameters
from pydantic import BaseModel, Field, ValidationError

from medplat.service.app import create_app
from medplat.service.audit import AuditClient, balp_event
from medplat.service.auth import Authenticator, Principal
from medplat.service.db import make_engine
from medplat.service.fhir import FhirError
from medplat.service.settings import ServiceSettings, service_config
from medplat.service.tls import serve
from medplat.workloads.pseudonymizer.keys import AwsKms, Barbican, KeyProvider, LocalKeyFile
from medplat.workloads.pseudonymizer.pseudonyms import CROCKFORD
from medplat.workloads.pseudonymizer.service import PseudonymError, Pseudonymizer, metadata, migrate_store

NAME = "pseudonymizer"


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    port: int = 8050
    key_file: Path | None = None  # local provider; default <data_dir>/keys.json
    key_passphrase: str | None = None  # default: a generated passphrase file beside the key file
    # Barbican with a Keystone application credential (the secret from a mounted file); the
    # endpoint defaults to the catalog's key-manager entry.
    barbican_auth_url: str | None = None
    barbican_application_credential_id: str | None = None
    barbican_application_credential_secret_file: Path | None = None
    barbican_endpoint: str | None = None
    aws_kms_key_id: str | None = None
    aws_region: str | None = None
    max_batch: int = Field(10_000, ge=1)


class DomainRequest(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    data_class: str = Field(alias="dataClass", pattern=r"^(pseudonymized|deidentified)$")
    provider: str = "local"
    alphabet: str = CROCKFORD
    length: int = 16
    reversible: bool = False


Value = Annotated[str, Field(min_length=1, max_length=1024)]


class Values(BaseModel):
    values: list[Value] = Field(min_length=1)


class Pseudonyms(BaseModel):
    pseudonyms: list[Value] = Field(min_length=1)


def providers(settings: Settings) -> dict[str, KeyProvider]:
    found: dict[str, KeyProvider] = {"local": LocalKeyFile(settings.key_file or settings.data_dir / "keys.json",
                                                           settings.key_passphrase)}
    if settings.barbican_auth_url and settings.barbican_application_credential_id:
        if settings.barbican_application_credential_secret_file is None:
            raise ValueError("barbican_application_credential_secret_file is required with barbican_auth_url")
        found["barbican"] = Barbican(settings.barbican_auth_url, settings.barbican_application_credential_id,
                                     settings.barbican_application_credential_secret_file.read_text().strip(),
                                     settings.barbican_endpoint)
    if settings.aws_kms_key_id and settings.aws_region:
        found["aws-kms"] = AwsKms(settings.aws_kms_key_id, settings.aws_region)
    return found


def _fail(exc: PseudonymError) -> FhirError:
    return FhirError(exc.status, str(exc), expression=[exc.where] if exc.where else None)


def _parameters(body: dict[str, Any], wanted: str) -> tuple[str, list[str]]:
    if body.get("resourceType") != "Parameters":
        raise FhirError(422, "body must be a FHIR Parameters resource", code="invalid")
    try:
        Parameters.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise FhirError(422, f"Parameters.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    target, values = None, []
    for parameter in body.get("parameter", []):
        value = parameter.get("valueString") or (parameter.get("valueIdentifier") or {}).get("value")
        if parameter.get("name") == "target":
            target = value
        elif parameter.get("name") == wanted and value:
            values.append(value)
    if not target or not values:
        raise FhirError(422, f"Parameters need a 'target' and at least one '{wanted}'", code="required")
    return target, values


def _result(target: str, pairs: list[tuple[str, str]], names: tuple[str, str]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "pseudonym", "part": [{"name": names[0], "valueString": a}, {"name": "target", "valueString": target},
                                       {"name": names[1], "valueString": b}]} for a, b in pairs]}


def build(settings: Settings | None = None):
    settings = settings or Settings()
    engine = make_engine(settings.resolved_database_url(NAME))
    migrate_store(engine)
    auth = Authenticator(NAME, settings)
    audit = AuditClient.for_service(settings)
    core = Pseudonymizer(engine, providers(settings))
    router = APIRouter()

    def run(call, *args):
        try:
            return call(*args)
        except PseudonymError as exc:
            raise _fail(exc) from None

    def check_batch(items: list[str]) -> None:
        if len(items) > settings.max_batch:
            raise FhirError(413, f"batch of {len(items)} exceeds {settings.max_batch}")

    @router.post("/domains", status_code=201, tags=["domains"])
    def create_domain(body: DomainRequest, principal: Principal = Depends(auth.require("pseudonym.admin"))):
        try:
            domain = core.create_domain(body.name, body.data_class, body.provider, alphabet=body.alphabet,
                                        length=body.length, reversible=body.reversible)
        except PseudonymError as exc:
            raise _fail(exc) from None
        audit.record(balp_event("create", source=NAME, agent=principal.subject, entities=[],
                                description=f"pseudonymization domain {domain.name} created"))
        return domain.__dict__

    @router.post("/domains/{name}/rotate", tags=["domains"])
    def rotate(name: str, principal: Principal = Depends(auth.require("pseudonym.admin"))) -> dict[str, Any]:
        version = run(core.rotate, name)
        audit.record(balp_event("update", source=NAME, agent=principal.subject,
                                description=f"domain {name} key rotated to version {version}"))
        return {"domain": name, "keyVersion": version}

    @router.post("/domains/{name}/pseudonymize", tags=["pseudonyms"])
    def pseudonymize(name: str, body: Values, principal: Principal = Depends(auth.require("pseudonym.create"))):
        check_batch(body.values)
        results = run(core.pseudonymize, name, body.values)
        audit.record(balp_event("execute", source=NAME, agent=principal.subject,
                                description=f"pseudonymized {len(results)} values in domain {name}"))
        return {"domain": name, "pseudonyms": results}

    @router.post("/domains/{name}/de-pseudonymize", tags=["pseudonyms"])
    def de_pseudonymize(name: str, body: Pseudonyms, principal: Principal = Depends(auth.require("pseudonym.resolve"))):
        check_batch(body.pseudonyms)
        try:
            values = core.de_pseudonymize(name, body.pseudonyms)
        except PseudonymError as exc:
            audit.record(balp_event("execute", source=NAME, agent=principal.subject, outcome="4",
                                    description=f"de-pseudonymization refused in domain {name}: {exc}"))
            raise _fail(exc) from None
        audit.record(balp_event("execute", source=NAME, agent=principal.subject,
                                description=f"de-pseudonymized {len(values)} pseudonyms in domain {name}"))
        return {"domain": name, "values": values}

    @router.post("/$pseudonymize", tags=["fhir"])
    def fhir_pseudonymize(body: dict[str, Any] = Body(...),
                          principal: Principal = Depends(auth.require("pseudonym.create"))) -> dict[str, Any]:
        target, originals = _parameters(body, "original")
        results = pseudonymize(target, Values(values=originals), principal)["pseudonyms"]
        return _result(target, list(zip(originals, results)), ("original", "value"))

    @router.post("/$de-pseudonymize", tags=["fhir"])
    def fhir_de_pseudonymize(body: dict[str, Any] = Body(...),
                             principal: Principal = Depends(auth.require("pseudonym.resolve"))) -> dict[str, Any]:
        target, candidates = _parameters(body, "pseudonym")
        values = de_pseudonymize(target, Pseudonyms(pseudonyms=candidates), principal)["values"]
        return _result(target, list(zip(candidates, values)), ("value", "original"))

    def health() -> dict[str, Any]:
        return {"database": engine.dialect.name, "keyProviders": sorted(core.providers)}

    app = create_app(NAME, __doc__.strip().splitlines()[0], router, health, settings=settings,
                     collectors=[audit.collector()])
    app.state.core, app.state.audit, app.state.auth = core, audit, auth
    return app, settings


def main() -> None:
    app, settings = build()
    serve(app, settings)
