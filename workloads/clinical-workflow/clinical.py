"""From device data to clinical work: vital-sign Observations -> NEWS2 -> the RCP response process;
SDC alarm episodes (DetectedIssue) -> the alarm follow-up process. Each message is handled in one
transaction together with its message id, so a redelivered message changes nothing."""
from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from medplat.service.fhir import FhirError
from medplat.workloads.clinical_workflow import news2, store
from medplat.workloads.clinical_workflow.engine import Engine

log = logging.getLogger("medplat.clinical-workflow")
RANK = {news2.Risk.LOW_MEDIUM: 1, news2.Risk.MEDIUM: 2, news2.Risk.HIGH: 3}


@dataclass
class Counters:
    messages: int = 0
    duplicates: int = 0
    refused: int = 0
    unassigned: int = 0
    scores: int = 0
    incomplete: int = 0
    processes: int = 0
    last_refusal: str = ""
    last_incomplete: str = ""


@dataclass
class Clinical:
    engine: Engine
    device_patients: dict[str, str]  # device id pattern (fnmatch) -> Patient reference (the bed assignment)
    policy: news2.StalenessPolicy
    escalate_after: str = "PT5M"  # ISO 8601 duration: an emergency Task not accepted by then escalates
    alarm_escalate_after: str = "PT2M"
    spo2_scale_2: set[str] = field(default_factory=set)  # patients charted on SpO2 scale 2
    counters: Counters = field(default_factory=Counters)

    def handle_envelope(self, raw: bytes) -> str:
        """One sdc-bridge envelope {"id", "device", "dataClass", "resource"}; returns what happened."""
        return self.handle_batch([raw])[0]

    def handle_batch(self, raws: list[bytes]) -> list[str]:
        """Envelopes in one transaction (one fsync for the lot); a batch that fails is retried
        message by message so that one bad message cannot hold back the others."""
        try:
            with self.engine.lock, self.engine.db.begin() as conn:
                outcomes = [self._envelope(conn, raw) for raw in raws]
        except Exception:
            if len(raws) == 1:
                raise
            return [self.handle_batch([raw])[0] for raw in raws]
        self.engine.on_commit()
        return outcomes

    def handle_prefix(self, raws: list[bytes], budget_s: float) -> list[str]:
        """The leading envelopes that fit in `budget_s` of work (at least one), in one transaction; the
        caller acknowledges those and comes back for the rest. A burst of emergency process starts so
        commits in slices: the first patients' Tasks do not wait for the whole burst's transaction."""
        began, outcomes = time.perf_counter(), []
        try:
            with self.engine.lock, self.engine.db.begin() as conn:
                for raw in raws:
                    outcomes.append(self._envelope(conn, raw))
                    if time.perf_counter() - began >= budget_s:
                        break
        except Exception:  # the slice up to the failing message, message by message
            return self.handle_batch(raws[:len(outcomes) + 1])
        self.engine.on_commit()
        return outcomes

    def _envelope(self, conn: Connection, raw: bytes) -> str:
        try:
            doc = orjson.loads(raw)
            message_id, device, resource = str(doc["id"]), str(doc.get("device") or ""), doc["resource"]
            kind = resource["resourceType"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return self._refuse(f"malformed envelope: {exc}")
        if kind not in ("Observation", "DetectedIssue"):
            return "ignored"
        if conn.execute(select(store.inbox.c.id).where(store.inbox.c.id == message_id)).first():
            self.counters.duplicates += 1
            return "duplicate"
        conn.execute(store.inbox.insert(), dict(id=message_id, received=time.time()))
        self.counters.messages += 1
        return (self._observation(conn, resource, device, live=True) if kind == "Observation"
                else self._alarm(conn, resource, device))

    def record_observation(self, resource: dict[str, Any]) -> str:
        """An Observation a member of staff records (ACVPU, air/oxygen, manual vitals): needs a subject.
        As a FHIR create, the server assigns the id (set in `resource`) and keeps the Observation, so
        the score's derivedFrom names a record that exists."""
        resource["id"] = uuid.uuid4().hex
        try:
            Observation.model_validate(resource)
        except ValidationError as exc:
            raise FhirError(422, f"invalid Observation: {str(exc)[:300]}") from None
        if not str((resource.get("subject") or {}).get("reference", "")).startswith("Patient/"):
            raise FhirError(422, "Observation.subject must reference the Patient", expression=["Observation.subject"])
        try:
            found = news2.reading(resource)
            if found is None:
                raise FhirError(422, "not a NEWS2 parameter (code)", expression=["Observation.code"])
            self.policy.refuse_future(found, datetime.datetime.now(datetime.timezone.utc))
        except news2.ReadingError as exc:
            raise FhirError(422, str(exc)) from None
        with self.engine.lock, self.engine.db.begin() as conn:
            conn.execute(store.documents.insert(), dict(id=resource["id"], patient=resource["subject"]["reference"],
                                                        kind="Observation", resource=resource))
            outcome = self._observation(conn, resource, "")
        self.engine.on_commit()
        return outcome

    def _refuse(self, reason: str) -> str:
        self.counters.refused += 1
        self.counters.last_refusal = reason[:300]
        log.warning("refused: %s", reason)
        return "refused"

    def patient_for(self, resource: dict[str, Any], device: str) -> str | None:
        subject = resource.get("subject") or {}
        if not isinstance(subject, dict) or not isinstance(subject.get("reference", ""), str):
            raise ValueError("subject is not a Reference")
        if subject.get("reference"):
            return subject["reference"]
        matches = [pattern for pattern in self.device_patients if fnmatch.fnmatchcase(device, pattern)]
        return self.device_patients[max(matches, key=len)] if matches else None  # the most specific pattern

    # --- NEWS2 -------------------------------------------------------------------------------------
    def _observation(self, conn: Connection, resource: dict[str, Any], device: str, live: bool = False) -> str:
        now = datetime.datetime.now(datetime.timezone.utc)
        try:
            found = news2.reading(resource, received=now if live else None)
            if found is not None:
                self.policy.refuse_future(found, now)
                if live:
                    found = dataclasses.replace(found, device=device)
        except (news2.ReadingError, ValueError) as exc:
            return self._refuse(str(exc))
        if found is None:
            return "not a NEWS2 parameter"
        try:
            patient = self.patient_for(resource, device)
        except ValueError as exc:
            return self._refuse(str(exc))
        if patient is None:
            self.counters.unassigned += 1
            return "no patient assigned to the device"
        record = self._load_vitals(conn, patient)
        if not record.add(found):
            return "older than the latest reading"
        self._save_vitals(conn, patient, record)
        snapshot = record.snapshot(now, self.policy)
        if isinstance(snapshot, news2.Incomplete):
            self.counters.incomplete += 1
            self.counters.last_incomplete = snapshot.reason()
            return snapshot.reason()
        vitals, inputs = snapshot
        result = news2.score(vitals)
        scored = news2.observation(result, patient=patient, inputs=inputs, issued=now)
        conn.execute(store.scores.insert(), dict(id=scored["id"], patient=patient, issued=now.timestamp(),
                                                 total=result.total, risk=result.risk.value, resource=scored))
        conn.execute(store.forward_outbox.insert(), dict(patient=patient, resource=scored, state="pending"))
        self.counters.scores += 1
        return self._respond(conn, patient, result, scored)

    def _respond(self, conn: Connection, patient: str, result: news2.News2, scored: dict[str, Any]) -> str:
        rank = RANK.get(result.risk)
        if rank is None:
            return f"NEWS2 {result.total}: {result.risk.value} risk, no Task"
        open_ones = self.engine.open_for(conn, f"news2:{patient}:")
        if any(RANK[news2.Risk(key.rsplit(":", 1)[1])] >= rank for _, key in open_ones):
            return f"NEWS2 {result.total}: response already under way"
        for workflow_id, key in open_ones:  # a higher risk supersedes the lower response
            self.engine.cancel(conn, workflow_id, reason=f"superseded by NEWS2 {result.total} ({result.risk.value})")
        started = self.engine.start(conn, "news2_response", key=f"news2:{patient}:{result.risk.value}",
                                    patient=patient, data={"risk": result.risk.value,
                                                           "focus": f"Observation/{scored['id']}",
                                                           "escalate_after": self.escalate_after})
        self.counters.processes += bool(started)
        return f"NEWS2 {result.total}: {result.risk.value} risk, response started"

    def vitals_of(self, conn: Connection, patient: str) -> news2.PatientVitals:
        return self._load_vitals(conn, patient)

    def _load_vitals(self, conn: Connection, patient: str) -> news2.PatientVitals:
        row = conn.execute(select(store.vitals.c.state).where(store.vitals.c.patient == patient)).first()
        record = news2.PatientVitals(spo2_scale=2 if patient in self.spo2_scale_2 else 1)
        for item in (row.state if row else []):
            record.latest[item["parameter"]] = news2.Reading(
                item["parameter"], item["value"], datetime.datetime.fromisoformat(item["at"]), item["source"],
                item.get("device", ""))
        return record

    def _save_vitals(self, conn: Connection, patient: str, record: news2.PatientVitals) -> None:
        state = [{"parameter": r.parameter, "value": r.value, "at": r.at.isoformat(), "source": r.source,
                  "device": r.device}
                 for r in record.latest.values()]
        done = conn.execute(update(store.vitals).where(store.vitals.c.patient == patient).values(state=state))
        if done.rowcount == 0:
            conn.execute(store.vitals.insert(), dict(patient=patient, state=state))

    # --- alarms ------------------------------------------------------------------------------------
    def _alarm(self, conn: Connection, issue: dict[str, Any], device: str) -> str:
        episode = str(issue.get("id", ""))
        for suffix in ("-preliminary", "-final"):
            episode = episode.removesuffix(suffix)
        if not episode:
            return self._refuse("DetectedIssue without id")
        if issue.get("status") in ("final", "cancelled", "entered-in-error"):
            return "alarm episode ended"  # the follow-up Task stays: someone still documents the response
        try:
            implicated = [str(i.get("reference", "")) for i in issue.get("implicated") or []]
            device = device or (implicated[0].removeprefix("Device/") if implicated else "")
            patient = self.patient_for(issue, device) or f"Device/{device}"
        except (AttributeError, TypeError, ValueError):
            return self._refuse("DetectedIssue of the wrong shape (implicated, subject)")
        started = self.engine.start(conn, "alarm_response", key=f"alarm:{episode}", patient=patient,
                                    data={"focus": f"DetectedIssue/{issue['id']}",
                                          "priority": "stat" if issue.get("severity") == "high" else "urgent",
                                          "escalate_after": self.alarm_escalate_after})
        self.counters.processes += bool(started)
        return "alarm follow-up started" if started else "alarm episode already has a follow-up"
