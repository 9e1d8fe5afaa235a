"""PlanDefinition/ActivityDefinition `$apply` (FHIR R4 Clinical Reasoning) for the shipped protocols:
applicability conditions are FHIRPath, evaluated with fhirpathpy against the inputs (%news2); the
result is a CarePlan containing a RequestGroup and the proposed Tasks, nothing stored or started."""
from __future__ import annotations

import datetime
import json
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import fhirpathpy
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan

PROTOCOLS = Path(__file__).parent / "processes"


class ApplyError(ValueError):
    """A protocol that cannot be applied (unknown, or a condition that is not FHIRPath)."""


@lru_cache(maxsize=8)
def library() -> dict[str, dict[str, Any]]:
    """Every shipped PlanDefinition and ActivityDefinition by canonical URL (validated as R4)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(PROTOCOLS.glob("*.plandefinition.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        Bundle.model_validate(bundle)
        for entry in bundle["entry"]:
            found[entry["resource"]["url"]] = entry["resource"]
    return found


def plan(plan_id: str) -> dict[str, Any]:
    for resource in library().values():
        if resource["resourceType"] == "PlanDefinition" and resource["id"] == plan_id:
            return resource
    raise ApplyError(f"no PlanDefinition {plan_id}")


def applicable(action: dict[str, Any], variables: dict[str, Any]) -> bool:
    for condition in action.get("condition") or []:
        if condition.get("kind") != "applicability":
            continue
        expression = condition["expression"]
        if expression.get("language") != "text/fhirpath":
            raise ApplyError(f"action {action.get('id')}: only text/fhirpath conditions are supported")
        if fhirpathpy.evaluate({}, expression["expression"], variables) != [True]:
            return False
    return True


def apply(plan_id: str, *, subject: str, variables: dict[str, Any]) -> dict[str, Any]:
    definition = plan(plan_id)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    contained: list[dict[str, Any]] = []
    actions: list[dict[str, Any]] = []
    for action in definition.get("action") or []:
        if not applicable(action, variables):
            continue
        activity = library().get(action.get("definitionCanonical", ""))
        if activity is None or activity.get("kind") != "Task":
            raise ApplyError(f"action {action.get('id')}: no Task ActivityDefinition {action.get('definitionCanonical')}")
        task_id = f"task-{uuid.uuid4().hex[:12]}"
        task = {"resourceType": "Task", "id": task_id, "status": "draft", "intent": "proposal",
                "priority": activity.get("priority", "routine"), "code": activity["code"], "for": {"reference": subject},
                "instantiatesCanonical": activity["url"], "authoredOn": now, "description": action.get("description")}
        focus = variables.get("news2")
        if focus and focus.get("id"):
            task["focus"] = {"reference": f"Observation/{focus['id']}"}
        contained.append({k: v for k, v in task.items() if v is not None})
        actions.append({"title": action.get("title"), "priority": action.get("priority"),
                        "resource": {"reference": f"#{task_id}"}})
    group = {"resourceType": "RequestGroup", "id": "request-group", "status": "draft", "intent": "proposal",
             "subject": {"reference": subject}, "instantiatesCanonical": [definition["url"]], "authoredOn": now}
    if actions:
        group["action"] = actions
    care_plan = {"resourceType": "CarePlan", "id": str(uuid.uuid4()), "status": "draft", "intent": "proposal",
                 "subject": {"reference": subject}, "instantiatesCanonical": [definition["url"]], "created": now,
                 "contained": [group, *contained], "activity": [{"reference": {"reference": "#request-group"}}]}
    return CarePlan.model_validate(care_plan).model_dump(mode="json", exclude_none=True, by_alias=True)
