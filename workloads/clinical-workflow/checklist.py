"""The WHO Surgical Safety Checklist (first edition, 2009) as a FHIR Questionnaire, its answers
per phase, confirmation from device data where a device reports the item, and the completed
checklist as a QuestionnaireResponse with a Provenance naming who (or which device) confirmed what."""
from __future__ import annotations

import datetime
import uuid
from typing import Any

from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from medplat.workloads.clinical_workflow import news2

QUESTIONNAIRE = "urn:medplat:questionnaire:who-surgical-safety-checklist-2009"
# phase (BPMN step) -> [(linkId, item, NEWS2 parameter a device confirms it with, or None)]
ITEMS: dict[str, list[tuple[str, str, str | None]]] = {
    "sign_in": [
        ("sign-in.identity", "Patient has confirmed identity, site, procedure and consent", None),
        ("sign-in.site-marked", "Site marked (or not applicable)", None),
        ("sign-in.anaesthesia-check", "Anaesthesia machine and medication check complete", None),
        ("sign-in.pulse-oximeter", "Pulse oximeter on patient and functioning", "spo2"),
        ("sign-in.allergy", "Known allergy assessed", None),
        ("sign-in.airway", "Difficult airway or aspiration risk assessed (equipment/assistance available)", None),
        ("sign-in.blood-loss", "Risk of >500 ml blood loss (7 ml/kg in children) assessed", None),
    ],
    "time_out": [
        ("time-out.team", "All team members have introduced themselves by name and role", None),
        ("time-out.confirm", "Patient name, procedure and incision site confirmed", None),
        ("time-out.antibiotics", "Antibiotic prophylaxis given within the last 60 minutes (or not applicable)", None),
        ("time-out.critical-events", "Anticipated critical events reviewed (surgeon, anaesthesia, nursing)", None),
        ("time-out.imaging", "Essential imaging displayed (or not applicable)", None),
    ],
    "sign_out": [
        ("sign-out.procedure", "Name of the procedure recorded", None),
        ("sign-out.counts", "Instrument, sponge and needle counts complete", None),
        ("sign-out.specimen", "Specimen labelling (including patient name) done", None),
        ("sign-out.equipment", "Equipment problems to be addressed identified", None),
        ("sign-out.recovery", "Key concerns for recovery and management reviewed", None),
    ],
}
DEVICE_MAX_AGE_S = 300.0


class ChecklistError(ValueError):
    """Answers that do not complete the phase."""


def confirm(phase: str, staff: dict[str, bool], vitals: news2.PatientVitals, who: str,
            now: datetime.datetime) -> dict[str, dict[str, Any]]:
    """Each item of `phase` answered: by a current device reading where the item has one, else by staff."""
    if phase not in ITEMS:
        raise ChecklistError(f"{phase} is not a checklist phase")
    unknown = set(staff) - {link for link, _, _ in ITEMS[phase]}
    if unknown:
        raise ChecklistError(f"not items of {phase}: {', '.join(sorted(unknown))}")
    answers: dict[str, dict[str, Any]] = {}
    for link, text, parameter in ITEMS[phase]:
        reading = vitals.latest.get(parameter) if parameter else None
        # only a device's own live reading confirms a device item; a value staff typed in does not
        if reading is not None and reading.device and (now - reading.at).total_seconds() <= DEVICE_MAX_AGE_S:
            answers[link] = {"value": True, "by": reading.source, "at": reading.at.isoformat()}
        elif staff.get(link) is True:
            answers[link] = {"value": True, "by": who, "at": now.isoformat()}
        else:
            device = f" (no {parameter} reading in the last {DEVICE_MAX_AGE_S:.0f} s)" if parameter else ""
            raise ChecklistError(f"{link} ({text}) is not confirmed{device}")
    return answers


def questionnaire_response(patient: str, answers: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    items = [{"linkId": phase, "text": phase.replace("_", " "),
              "item": [{"linkId": link, "text": text, "answer": [{"valueBoolean": answers[phase][link]["value"]}]}
                       for link, text, _ in ITEMS[phase]]} for phase in ITEMS]
    resource = {"resourceType": "QuestionnaireResponse", "id": str(uuid.uuid4()), "questionnaire": QUESTIONNAIRE,
                "status": "completed", "subject": {"reference": patient},
                "authored": datetime.datetime.now(datetime.timezone.utc).isoformat(), "item": items}
    return QuestionnaireResponse.model_validate(resource).model_dump(mode="json", exclude_none=True, by_alias=True)


def provenance(response: dict[str, Any], answers: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Who confirmed the checklist: staff as authors, device readings as source entities."""
    confirmers = sorted({a["by"] for phase in answers.values() for a in phase.values()})
    resource = {
        "resourceType": "Provenance", "id": str(uuid.uuid4()),
        "target": [{"reference": f"QuestionnaireResponse/{response['id']}"}],
        "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "activity": {"text": "WHO Surgical Safety Checklist completed"},
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                        "code": "author"}]}, "who": {"reference": who}}
                  for who in confirmers if not who.startswith("Observation/")] or
                 [{"who": {"display": "medplat clinical-workflow"}}],
        "entity": [{"role": "source", "what": {"reference": who}} for who in confirmers
                   if who.startswith("Observation/")],
    }
    if not resource["entity"]:
        del resource["entity"]
    return Provenance.model_validate(resource).model_dump(mode="json", exclude_none=True, by_alias=True)
