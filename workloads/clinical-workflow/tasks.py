"""FHIR Workflow contract: every human step of a process is an R4 Task with the standard state
machine (http://hl7.org/fhir/R4/task.html#statemachine); every change is a Provenance and a BALP
AuditEvent. Resources are validated with fhir.resources (R4B, wire-compatible with R4 for Task and
Provenance) before they are stored."""
from __future__ import annotations

import datetime
import uuid
from typing import Any

from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.task import Task

from medplat.service.audit import balp_event

# The transitions of FHIR's Task state machine that a performer makes (draft/received are the
# requester's side and never occur here: the engine creates Tasks as `requested`).
TRANSITIONS: dict[str, frozenset[str]] = {
    "requested": frozenset({"accepted", "rejected", "cancelled"}),
    "accepted": frozenset({"in-progress", "cancelled", "failed"}),
    "in-progress": frozenset({"completed", "failed", "on-hold", "cancelled"}),
    "on-hold": frozenset({"in-progress", "failed", "cancelled"}),
}
TERMINAL = frozenset({"completed", "rejected", "failed", "cancelled"})
OPEN = frozenset(TRANSITIONS)
ACTIVITY = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_AGENT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def period_end(start: datetime.datetime, seconds: float | None) -> str | None:
    return (start + datetime.timedelta(seconds=seconds)).isoformat(timespec="milliseconds") if seconds else None


def new_task(*, task_id: str, process: str, step: str, name: str, description: str | None, patient: str,
             focus: str | None, priority: str, recipients: list[str], due_s: float | None,
             part_of: str | None = None) -> dict[str, Any]:
    started = datetime.datetime.now(datetime.timezone.utc)
    resource: dict[str, Any] = {
        "resourceType": "Task", "id": task_id,
        "meta": {"versionId": "1", "lastUpdated": started.isoformat(timespec="milliseconds")},
        "identifier": [{"system": "urn:medplat:clinical-workflow:step", "value": f"{process}#{step}"}],
        "instantiatesUri": f"urn:medplat:clinical-workflow:{process}#{step}",
        "status": "requested", "intent": "order", "priority": priority,
        "code": {"coding": [{"system": "urn:medplat:clinical-workflow:step", "code": step}], "text": name},
        "for": {"reference": patient},
        "authoredOn": started.isoformat(timespec="milliseconds"),
        "lastModified": started.isoformat(timespec="milliseconds"),
        "requester": {"display": "medplat clinical-workflow"},
        "restriction": {"period": {"start": started.isoformat(timespec="milliseconds")},
                        "recipient": [{"reference": r} for r in recipients]},
    }
    end = period_end(started, due_s)
    if end:
        resource["restriction"]["period"]["end"] = end
    if description:
        resource["description"] = description
    if focus:
        resource["focus"] = {"reference": focus}
    if part_of:
        resource["partOf"] = [{"reference": part_of}]
    if not recipients:
        del resource["restriction"]["recipient"]
    return Task.model_validate(resource).model_dump(mode="json", exclude_none=True, by_alias=True)


def recipients(task: dict[str, Any]) -> frozenset[str]:
    return frozenset(r.get("reference", "") for r in (task.get("restriction") or {}).get("recipient") or [])


def may_perform(task: dict[str, Any], who: str, roles: frozenset[str]) -> bool:
    """Task.restriction.recipient names who may perform it (roles or people); no recipient: anyone
    with task.write. `roles` are the PractitionerRoles the caller holds (from the identity provider)."""
    allowed = recipients(task)
    return not allowed or who in allowed or bool(allowed & roles)


def changed(task: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A new version of a Task with `fields` set (None removes a field)."""
    updated = {**task, **{k: v for k, v in fields.items() if v is not None}}
    for key in [k for k, v in fields.items() if v is None]:
        updated.pop(key, None)
    when = now_iso()
    updated["lastModified"] = when
    updated["meta"] = {"versionId": str(int(task["meta"]["versionId"]) + 1), "lastUpdated": when}
    return Task.model_validate(updated).model_dump(mode="json", exclude_none=True, by_alias=True)


def provenance(task: dict[str, Any], *, agent: str, activity: str, reason: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Provenance", "id": str(uuid.uuid4()),
        "target": [{"reference": f"Task/{task['id']}/_history/{task['meta']['versionId']}"}],
        "recorded": now_iso(),
        "activity": {"coding": [{"system": ACTIVITY, "code": "UPDATE" if task["meta"]["versionId"] != "1"
                                 else "CREATE"}], "text": activity},
        "agent": [{"type": {"coding": [{"system": PROVENANCE_AGENT,
                                        "code": "author" if agent.startswith(("Practitioner", "PractitionerRole"))
                                        else "assembler"}]},
                   "who": _who(agent)}],
        "entity": [{"role": "source", "what": {"reference": task["for"]["reference"]}}],
    }
    if reason:
        resource["reason"] = [{"text": reason}]
    return Provenance.model_validate(resource).model_dump(mode="json", exclude_none=True, by_alias=True)


def _who(agent: str) -> dict[str, Any]:
    if "/" in agent and agent.split("/", 1)[0][:1].isupper():
        return {"reference": agent}
    return {"display": agent}


def audit(task: dict[str, Any], *, agent: str, activity: str, service: str) -> dict[str, Any]:
    """BALP RESTful Create/Update on the Task, the patient as entity."""
    interaction = "create" if task["meta"]["versionId"] == "1" else "update"
    return balp_event(interaction, source=service, agent=agent, patient=task["for"]["reference"],
                      entities=[f"Task/{task['id']}"], purpose="TREAT", description=f"Task {activity}")
