"""Research export: consent decides per patient and resource type; permitted resources leave
de-identified by medplat.deid's research configuration — the patient as a pseudonym of the
recipient's domain, dates shifted per patient, everything the recipient may not see removed.
The recipient and its domains come from the authenticated client's registration, never from
the request body. A stored Bundle leaves whole, as one de-identified Bundle whose references
still resolve (medplat.deid's bundleReferences), only when every patient in it permits the
disclosure of every type of resource in it; otherwise it is refused whole. The answer carries
the exported resources as one collection Bundle whose references between them resolve."""
from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Engine, select

from medplat.deid import Deidentifier, KeyDomain, builtin
from medplat.deid.engine import PATIENT_FIELDS, PATIENT_REFERENCE
from medplat.service.clients import ServiceClient
from medplat.service.fhir import FhirError

FULFILLABLE = {"pseudonymize"}


class ExportClient(BaseModel):
    """A registered export client (by token subject): the organisation it exports for and the
    pseudonym domains of that organisation's studies."""
    organisation: str = Field(pattern=r"^Organization/[A-Za-z0-9\-.]{1,64}$")
    domains: list[str] = Field(min_length=1)


class ExportRequest(BaseModel):
    # Bounded: purpose goes to the consent service and into the audit record.
    purpose: str = Field("HRESCH", max_length=64, pattern=r"^[^\s]+( [^\s]+)*$",
                         description="purpose of use (v3-ActReason code), e.g. HRESCH")
    domain: str | None = Field(None, max_length=128, description="one of the client's registered pseudonym domains")
    actor: str | None = Field(None, max_length=128,
                              description="optional; must be the client's registered organisation")
    limit: int = Field(10_000, ge=1, le=100_000)


def recipient_of(subject: str, request: ExportRequest, clients: dict[str, ExportClient]) -> tuple[str, str]:
    """(organisation, domain) for the token's subject; anything else in the body is refused."""
    client = clients.get(subject)
    if client is None:
        raise FhirError(403, f"client {subject!r} is not registered for research exports", code="forbidden")
    if request.actor is not None and request.actor != client.organisation:
        raise FhirError(403, f"client {subject!r} exports for {client.organisation}, not {request.actor}",
                        code="forbidden", expression=["actor"])
    if request.domain is None:
        if len(client.domains) != 1:
            raise FhirError(422, f"name the domain: one of {client.domains}", code="required", expression=["domain"])
        return client.organisation, client.domains[0]
    if request.domain not in client.domains:
        raise FhirError(403, f"domain {request.domain!r} is not registered to {client.organisation}: refused",
                        code="forbidden", expression=["domain"])
    return client.organisation, request.domain


def _patient(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient" and resource.get("id"):
        return f"Patient/{resource['id']}"
    for field in ("subject", "patient"):
        reference = (resource.get(field) or {}).get("reference", "")
        if reference.startswith("Patient/"):
            return reference
    return None


def pseudonymizer_callback(pseudonymizer: ServiceClient):
    def pseudonymize(domain: str, values: list[str]) -> list[str]:
        return pseudonymizer.post(f"/domains/{domain}/pseudonymize", {"values": values})["pseudonyms"]
    return pseudonymize


def bundle_patients(bundle: dict[str, Any]) -> set[str] | None:
    """The patients a Bundle's entries belong to (as `Patient/<id>`); None when an entry names a
    patient consent cannot be asked about (a Patient without an id, or a reference to one) and
    when an entry is itself a Bundle: its patients would escape the check of the outer entries."""
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    if any(e["resource"].get("resourceType") == "Bundle" for e in entries):
        return None
    by_url = {e["fullUrl"]: e["resource"] for e in entries if isinstance(e.get("fullUrl"), str)}
    patients: set[str] = set()
    for entry in entries:
        resource = entry["resource"]
        if resource.get("resourceType") == "Patient":
            if not resource.get("id"):
                return None
            patients.add(f"Patient/{resource['id']}")
        for field in PATIENT_FIELDS:
            reference = (resource.get(field) or {}).get("reference") if isinstance(resource.get(field), dict) else None
            if not isinstance(reference, str):
                continue
            match = PATIENT_REFERENCE.search(reference)
            target = by_url.get(reference)
            if match:
                patients.add(f"Patient/{match.group(1)}")
            elif target is not None and target.get("resourceType") == "Patient":
                if not target.get("id"):
                    return None
                patients.add(f"Patient/{target['id']}")
    return patients


def research_export(engine: Engine, messages, consent: ServiceClient, pseudonymizer: ServiceClient, project_key: bytes,
                    *, purpose: str, actor: str, domain: str, limit: int) -> dict[str, Any]:
    with engine.connect() as connection:
        rows = connection.execute(select(messages.c.id, messages.c.payload, messages.c.data_class)
                                  .order_by(messages.c.device, messages.c.seq).limit(limit)).all()
    decisions: dict[tuple[str, str], dict[str, Any]] = {}

    def refusal(patient: str, resource_type: str, data_class: str) -> str | None:
        """Why consent does not let this leave for the recipient, or None when it may."""
        key = (patient, resource_type)
        if key not in decisions:
            decisions[key] = consent.post("/decide", {"patient": patient, "purpose": purpose, "actors": [actor],
                                                      "action": "disclose", "resourceType": resource_type,
                                                      "dataClass": data_class})
        decision = decisions[key]
        if decision["decision"] != "permit":
            return f"consent: {decision['decision']}"
        unknown = set(decision["obligations"]) - FULFILLABLE
        if unknown or "pseudonymize" not in decision["obligations"]:
            # Secondary use never leaves with the real patient reference.
            return f"cannot fulfil obligations {sorted(unknown) or 'none given'}"
        return None

    refused, permitted, patients = [], [], set()
    for row in rows:
        resource = row.payload
        if resource.get("resourceType") == "Bundle":
            # A Bundle leaves whole or not at all: every patient in it, for every type of entry in it.
            found = bundle_patients(resource)
            if not found:
                refused.append({"id": row.id, "reason": "Bundle without identifiable patients: consent cannot "
                                                        "be checked"})
                continue
            types = sorted({e["resource"].get("resourceType", "") for e in resource.get("entry") or []
                            if isinstance(e, dict) and isinstance(e.get("resource"), dict)})
            reasons = {r for p in sorted(found) for t in types if (r := refusal(p, t, row.data_class))}
            if reasons:
                refused.append({"id": row.id, "reason": "; ".join(sorted(reasons))})
                continue
            patients |= found
            permitted.append(resource)
            continue
        patient = _patient(resource)
        if patient is None:
            refused.append({"id": row.id, "reason": "no patient reference: consent cannot be checked"})
            continue
        reason = refusal(patient, resource["resourceType"], row.data_class)
        if reason:
            refused.append({"id": row.id, "reason": reason})
            continue
        patients.add(patient)
        permitted.append(resource)
    keys = KeyDomain(project_key, pseudonymizer_callback(pseudonymizer))
    keys.prefetch(domain, [p.removeprefix("Patient/") for p in patients])
    deidentifier = Deidentifier(builtin("research"), keys, domain=domain)
    exported = [out for out in (deidentifier.deidentify(resource) for resource in permitted) if out]
    return {"purpose": purpose, "actor": actor, "domain": domain, "bundle": collection(exported, keys),
            "refused": refused, "counts": {"considered": len(rows), "exported": len(exported), "refused": len(refused)}}


def collection(resources: list[dict[str, Any]], keys: KeyDomain) -> dict[str, Any]:
    """The export as one FHIR collection Bundle. Each entry gets a keyed urn:uuid fullUrl and a
    reference to another exported resource (by its de-identified Type/id: ids and references
    went through the same hash or pseudonym) names that fullUrl, so it resolves by the Bundle
    rules; references to what was not exported stay as they are."""
    urls: dict[str, str] = {}
    entries = []
    for index, resource in enumerate(resources):
        local = f"{resource['resourceType']}/{resource['id']}" if resource.get("id") else ""
        digest = bytes.fromhex(keys.hash(f"export-entry|{index}|{local}")[:32])
        url = f"urn:uuid:{uuid.UUID(bytes=digest, version=4)}"
        if local:
            urls.setdefault(local, url)
        entries.append({"fullUrl": url, "resource": resource})
    for entry in entries:
        _point(entry["resource"], urls, top=True)
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _point(value: Any, urls: dict[str, str], top: bool = False) -> None:
    if isinstance(value, list):
        for item in value:
            _point(item, urls)
    elif isinstance(value, dict):
        if not top and value.get("resourceType") == "Bundle":
            return  # an exported Bundle's references were resolved inside it
        reference = value.get("reference")
        if isinstance(reference, str) and reference in urls:
            value["reference"] = urls[reference]
        for key, item in value.items():
            if key != "reference":
                _point(item, urls)
