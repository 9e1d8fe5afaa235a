"""CDS Hooks 2.0 (https://cds-hooks.hl7.org/2.0/): discovery and the `patient-view` and
`encounter-start` services, answering with a NEWS2 card. The score comes from the prefetched vital
signs when the EHR sends them (stateless, the same NEWS2 rules and staleness policy), otherwise from
the latest score this site computed for the patient."""
from __future__ import annotations

import datetime
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medplat.workloads.clinical_workflow import news2

VITALS_PREFETCH = ("Observation?patient={{context.patientId}}&category=vital-signs&_sort=-date&_count=100")
SERVICES = [
    {"hook": "patient-view", "id": "news2-patient-view", "title": "NEWS2 early warning score",
     "description": "The patient's National Early Warning Score 2 (RCP 2017) with its clinical risk and the "
                    "RCP response, from the bedside monitors' and staff's vital signs.",
     "prefetch": {"patient": "Patient/{{context.patientId}}", "vitals": VITALS_PREFETCH}},
    {"hook": "encounter-start", "id": "news2-encounter-start", "title": "NEWS2 at encounter start",
     "description": "NEWS2 when an encounter starts (admission, transfer), so the receiving team sees the "
                    "current early warning score.",
     "prefetch": {"patient": "Patient/{{context.patientId}}", "vitals": VITALS_PREFETCH}},
]
HOOK_OF = {s["id"]: s["hook"] for s in SERVICES}
INDICATOR = {news2.Risk.HIGH: "critical", news2.Risk.MEDIUM: "warning", news2.Risk.LOW_MEDIUM: "warning",
             news2.Risk.LOW: "info"}
SOURCE = {"label": "Royal College of Physicians: National Early Warning Score (NEWS) 2",
          "url": "https://www.rcp.ac.uk/improving-care/resources/national-early-warning-score-news-2/"}


class HookContext(BaseModel):
    model_config = ConfigDict(extra="allow")
    user_id: str = Field(alias="userId", max_length=200)
    patient_id: str = Field(alias="patientId", pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    encounter_id: str | None = Field(None, alias="encounterId", max_length=64)


class HookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    hook: str = Field(max_length=64)
    hook_instance: uuid.UUID = Field(alias="hookInstance")
    fhir_server: str | None = Field(None, alias="fhirServer", max_length=2000)
    context: HookContext
    prefetch: dict[str, Any] | None = None


def from_prefetch(bundle: dict[str, Any], patient: str, now: datetime.datetime,
                  policy: news2.StalenessPolicy, scale: int) -> dict[str, Any] | news2.Incomplete | None:
    """NEWS2 from a prefetched searchset Bundle of Observations; None when there is none."""
    entries = [e.get("resource") or {} for e in (bundle or {}).get("entry") or []]
    record = news2.PatientVitals(spo2_scale=scale)
    used = 0
    for resource in entries:
        if resource.get("resourceType") != "Observation":
            continue
        subject = resource.get("subject")
        if subject is not None and (not isinstance(subject, dict) or subject.get("reference") != patient):
            continue  # another patient's Observation never feeds this patient's score
        try:
            found = news2.reading(resource)
        except (news2.ReadingError, ValueError):
            continue  # one unusable Observation does not stop the others
        if found is not None:
            used += record.add(found)
    if not used:
        return None
    snapshot = record.snapshot(now, policy)
    if isinstance(snapshot, news2.Incomplete):
        return snapshot
    vitals, inputs = snapshot
    return news2.observation(news2.score(vitals), patient=patient, inputs=inputs, issued=now)


def card_for(scored: dict[str, Any] | None, incomplete: news2.Incomplete | None) -> dict[str, Any]:
    """A card from a NEWS2 Observation (as `news2.observation` builds it), or why there is none."""
    if scored is None:
        detail = incomplete.reason() if incomplete else "no recent NEWS2 and no vital signs prefetched"
        return {"uuid": str(uuid.uuid4()), "summary": "NEWS2 not available", "indicator": "info",
                "detail": f"{detail}. Record the missing observations to obtain a score.", "source": SOURCE}
    total = scored["valueInteger"]
    risk = news2.Risk(scored["interpretation"][0]["coding"][0]["code"])
    monitoring, response = news2.RESPONSE["zero" if total == 0 else risk]
    parts = ", ".join(f"{c['code']['coding'][0]['display'].removeprefix('NEWS2 - ')} {c['valueInteger']}"
                      for c in scored["component"])
    return {"uuid": str(uuid.uuid4()), "summary": f"NEWS2 {total}: {risk.value} clinical risk",
            "indicator": INDICATOR[risk],
            "detail": f"**{response}**; monitoring {monitoring}.\n\nComponent scores: {parts}. "
                      f"Scored {scored['issued']} from vital signs of {scored['effectiveDateTime']}.",
            "source": SOURCE}
