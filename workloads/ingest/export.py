"""Research export: consent decides per patient and resource type; permitted resources leave
only with their obligations fulfilled (the patient reference replaced by the pseudonymizer's
pseudonym in the study's domain); denied ones are refused and counted, never exported."""
from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from medplat.service.clients import ServiceClient

FULFILLABLE = {"pseudonymize"}


def _patient(resource: dict[str, Any]) -> str | None:
    for field in ("subject", "patient"):
        reference = (resource.get(field) or {}).get("reference", "")
        if reference.startswith("Patient/"):
            return reference
    return None


def research_export(engine: Engine, messages, consent: ServiceClient, pseudonymizer: ServiceClient, *,
                    purpose: str, actor: str, domain: str, limit: int) -> dict[str, Any]:
    with engine.connect() as connection:
        rows = connection.execute(select(messages.c.id, messages.c.payload, messages.c.data_class)
                                  .order_by(messages.c.device, messages.c.seq).limit(limit)).all()
    decisions: dict[tuple[str, str], dict[str, Any]] = {}
    exported, refused, permitted = [], [], []
    for row in rows:
        resource, patient = row.payload, _patient(row.payload)
        if patient is None:
            refused.append({"id": row.id, "reason": "no patient reference: consent cannot be checked"})
            continue
        key = (patient, resource["resourceType"])
        if key not in decisions:
            decisions[key] = consent.post("/decide", {"patient": patient, "purpose": purpose, "actors": [actor],
                                                      "action": "disclose", "resourceType": resource["resourceType"],
                                                      "dataClass": row.data_class})
        decision = decisions[key]
        if decision["decision"] != "permit":
            refused.append({"id": row.id, "reason": f"consent: {decision['decision']}"})
            continue
        unknown = set(decision["obligations"]) - FULFILLABLE
        if unknown or "pseudonymize" not in decision["obligations"]:
            # Secondary use never leaves with the real patient reference.
            refused.append({"id": row.id, "reason": f"cannot fulfil obligations {sorted(unknown) or 'none given'}"})
            continue
        permitted.append((row.id, resource, patient))
    pseudonyms = {}
    patients = sorted({patient for _, _, patient in permitted})
    if patients:
        pseudonyms = dict(zip(patients, pseudonymizer.post(f"/domains/{domain}/pseudonymize",
                                                           {"values": patients})["pseudonyms"]))
    for message_id, resource, patient in permitted:
        copy = {k: v for k, v in resource.items() if k not in ("subject", "patient", "id", "text")}
        field = "subject" if "subject" in resource else "patient"
        copy[field] = {"identifier": {"system": f"urn:medplat:pseudonym:{domain}", "value": pseudonyms[patient]}}
        exported.append(copy)
    return {"purpose": purpose, "actor": actor, "domain": domain, "exported": exported, "refused": refused,
            "counts": {"considered": len(rows), "exported": len(exported), "refused": len(refused)}}
