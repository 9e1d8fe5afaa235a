"""clinical-workflow service: NEWS2 and alarm follow-up as BPMN processes with FHIR Tasks, CDS Hooks.

Subscribes to the sdc-bridge's Observations and DetectedIssues on the site broker; scores NEWS2 per
patient (devices are assigned to patients in DEVICE_PATIENTS); runs the RCP response and the alarm
follow-up in SpiffWorkflow (state in the service database after every step); exposes the Tasks as
FHIR R4 with the Task state machine; sends every change as Provenance and BALP AuditEvent; forwards
scores and Tasks off site only with the patient's consent.
"""
from __future__ import annotations

import datetime
import logging
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import delete, insert, select, update

from medplat.service.access import public
from medplat.service.app import create_app
from medplat.service.audit import AuditClient, balp_event
from medplat.service.auth import Authenticator, Principal
from medplat.service.db import make_engine
from medplat.service.fhir import FhirError, searchset
from medplat.service.mqtt import Publisher, make_client
from medplat.service.settings import ServiceSettings, service_config
from medplat.service.tls import client_context, serve
from medplat.workloads.clinical_workflow import cds, cds_auth, checklist, news2, protocols, store
from medplat.workloads.clinical_workflow.clinical import Clinical
from medplat.workloads.clinical_workflow.engine import Engine, Policy

NAME = "clinical-workflow"
log = logging.getLogger("medplat.clinical-workflow")
# Routes anyone may call: discovery lists the CDS services (no patient data). Everything else
# needs a bearer token with the scope its route declares.
PUBLIC_ROUTES = frozenset({("GET", "/cds-services")})
HUMAN_USER = ("http://terminology.hl7.org/CodeSystem/extra-security-role-type", "humanuser")  # IHE BALP user agent
ACTOR = re.compile(r"^(Practitioner|PractitionerRole)/[A-Za-z0-9\-.]{1,64}$")


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    port: int = 8090
    broker_url: str = "mqtt://127.0.0.1:1883"
    topic_prefix: str = "medplat/devices"  # the sdc-bridge publishes <prefix>/<device>/<resourcetype>
    client_id: str = "medplat-clinical-workflow"
    device_patients: dict[str, str] = {}  # device id pattern (fnmatch, e.g. "<epr>-*") -> Patient/<id>
    spo2_scale_2_patients: list[str] = []  # patients with a prescribed 88-92 % target (RCP scale 2)
    device_max_age_s: float = 900.0
    manual_max_age_s: float = 4 * 3600.0
    escalate_after: str = "PT5M"
    alarm_escalate_after: str = "PT2M"
    lanes: dict[str, list[str]] = {
        "ward-nurse": ["PractitionerRole/ward-nurse"], "medical-team": ["PractitionerRole/medical-team"],
        "critical-care-outreach": ["PractitionerRole/critical-care-outreach"], "or-team": ["PractitionerRole/or-team"],
        "unit-nurse": ["PractitionerRole/unit-nurse"], "charge-nurse": ["PractitionerRole/charge-nurse"]}
    due_s: dict[str, float] = {"hourly_observations": 3600, "urgent_response": 1800, "emergency_response": 300,
                               "emergency_escalation": 300, "acknowledge_alarm": 120, "alarm_escalation": 120,
                               "sign_in": 1800, "time_out": 1800, "sign_out": 14400}
    tick_s: float = 0.5
    # Off-site forwarding (through the edge-forwarder's topic) only after the consent service permits.
    consent_url: str | None = None
    consent_token_file: Path | None = None
    # The site's mTLS client credential (PlatformPki) for the EU zone's consent service.
    consent_ca: Path | None = None
    consent_cert: Path | None = None
    consent_key: Path | None = None
    forward_topic: str = "medplat/devices/clinical-workflow"
    # CDS Hooks client authentication: trusted CDS clients (JWT iss -> its JWK Set, https URL or file)
    # and this service's public base URL (the JWT's aud is <base>/cds-services/<id>). Empty: no CDS calls.
    cds_clients: dict[str, str] = {}
    cds_base_url: str | None = None


class Transition(BaseModel):
    status: str = Field(pattern=r"^(accepted|rejected|in-progress|on-hold|completed|failed|cancelled)$")
    reason: str | None = Field(None, max_length=1000)
    # A checklist phase's items (linkId -> confirmed) when its Task is completed.
    answers: dict[str, bool] | None = Field(None, max_length=20)


class ApplyRequest(BaseModel):
    subject: str = Field(pattern=r"^Patient/[A-Za-z0-9\-.]{1,64}$")
    news2: dict[str, Any] | None = Field(None, description="the NEWS2 Observation; default: the latest stored")


class ChecklistStart(BaseModel):
    patient: str = Field(pattern=r"^Patient/[A-Za-z0-9\-.]{1,64}$")


class Handover(BaseModel):
    to: str = Field(pattern=ACTOR.pattern)
    reason: str | None = Field(None, max_length=1000)


def actor(principal: Principal) -> str:
    """Who owns Tasks: the token's SMART `fhirUser` claim (a person signed in through an OpenID provider,
    e.g. a clinician in the portal), else its subject; either way a Practitioner(Role) reference."""
    who = principal.claims.get("fhirUser") or principal.subject
    if not isinstance(who, str) or not ACTOR.match(who):
        raise FhirError(403, "the token's fhirUser or subject must be a Practitioner or PractitionerRole reference "
                             "to own Tasks", code="forbidden")
    return who


# The PractitionerRoles a person holds, as the identity provider states them in the token (e.g.
# ["PractitionerRole/medical-team"]): checked against a Task's restriction.recipient.
ROLES_CLAIM = "medplat_practitioner_roles"


def roles_of(principal: Principal) -> frozenset[str]:
    claimed = principal.claims.get(ROLES_CLAIM) or []
    if not isinstance(claimed, list) or not all(isinstance(r, str) and ACTOR.match(r) for r in claimed):
        raise FhirError(401, f"bearer token rejected: {ROLES_CLAIM} must be a list of PractitionerRole references",
                        code="login")
    return frozenset(claimed)


class ConsentGate:
    """Asks the consent service whether a patient's data may be disclosed off site (purpose TREAT)."""

    def __init__(self, url: str | None, token_file: Path | None, tls: Any = True) -> None:
        self.url, self.token_file, self.tls = url, token_file, tls
        self.cache: dict[str, tuple[float, str]] = {}

    def decide(self, patient: str, resource: dict[str, Any]) -> str | None:
        """'permit' or 'deny'; None when no decision could be had (retry later)."""
        if not self.url or not patient.startswith("Patient/"):
            return "deny"  # no consent service, or no patient to ask about: the data stays on site
        cached = self.cache.get(patient)
        if cached and time.monotonic() - cached[0] < 60:
            return cached[1]
        token = self.token_file.read_text().strip() if self.token_file else ""
        try:
            response = httpx.post(f"{self.url.rstrip('/')}/decide", timeout=5, verify=self.tls, headers={
                "authorization": f"Bearer {token}"}, json={
                "patient": patient, "actors": ["Organization/eu-phi-zone"], "purpose": "TREAT", "action": "disclose",
                "resourceType": resource["resourceType"], "dataClass": "phi"})
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("consent service unavailable (%s): forwarding waits", exc)
            return None
        decision = "permit" if response.json().get("decision") == "permit" else "deny"
        self.cache[patient] = (time.monotonic(), decision)
        return decision


class Subscriber:
    """Persistent-session QoS 1 subscription. Messages are handled in batches of what has arrived (one
    transaction each) and acknowledged after the commit: unacknowledged ones are redelivered."""

    def __init__(self, settings: Settings, clinical: Clinical, batch: int = 200, slice_s: float = 0.1) -> None:
        self.client, self.host, self.port = make_client(
            settings.broker_url, settings.client_id, ca=settings.broker_ca,
            password_file=settings.broker_password_file, clean_session=False, manual_ack=True)
        # batch: messages taken at once; slice_s: work per transaction (each slice commits and is acknowledged)
        self.clinical, self.batch, self.slice_s = clinical, batch, slice_s
        self.topics = [f"{settings.topic_prefix}/+/observation", f"{settings.topic_prefix}/+/detectedissue"]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.received = 0
        self._pending: list[tuple[bytes, int, int]] = []
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clinical-intake", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._stop.set()
        with self._ready:
            self._ready.notify()
        self._thread.join(timeout=10)

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _on_message(self, _client, _userdata, message) -> None:
        with self._ready:
            self._pending.append((message.payload, message.mid, message.qos))
            self.received += 1
            self._ready.notify()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._ready:
                while not self._pending and not self._stop.is_set():
                    self._ready.wait(1.0)
                taken, self._pending = self._pending[:self.batch], self._pending[self.batch:]
            if not taken:
                continue
            while taken:
                try:
                    done = len(self.clinical.handle_prefix([payload for payload, _, _ in taken], self.slice_s))
                except Exception:  # not acknowledged: the broker redelivers after a reconnect
                    log.exception("%d messages not processed; left unacknowledged", len(taken))
                    break
                for _, mid, qos in taken[:done]:
                    self.client.ack(mid, qos)
                taken = taken[done:]


class Worker:
    """Timers, the audit outbox and the consent-gated forwarding, every `tick_s`."""

    def __init__(self, engine: Engine, audit: AuditClient, gate: ConsentGate, publisher: Publisher | None,
                 topic: str, tick_s: float) -> None:
        self.engine, self.audit, self.gate, self.publisher = engine, audit, gate, publisher
        self.topic, self.tick_s = topic, tick_s
        self.forwarded = self.withheld = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clinical-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("worker round failed; retrying")
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def run_once(self) -> None:
        self.engine.tick()
        self.drain_audit()
        self.drain_forwarding()

    def drain_audit(self, batch: int = 500) -> int:
        """Hand committed AuditEvents to the audit client; delete them once it has sent or spooled them."""
        with self.engine.db.connect() as conn:
            rows = conn.execute(select(store.audit_outbox).order_by(store.audit_outbox.c.seq).limit(batch)).all()
        if not rows:
            return 0
        for row in rows:
            self.audit.record(row.event)
        self.audit.flush()  # sent, or fsync'd into the client's spool: durable either way
        with self.engine.db.begin() as conn:
            conn.execute(delete(store.audit_outbox).where(store.audit_outbox.c.seq <= rows[-1].seq))
        return len(rows)

    def drain_forwarding(self, batch: int = 200) -> None:
        with self.engine.db.connect() as conn:
            rows = conn.execute(select(store.forward_outbox).where(store.forward_outbox.c.state == "pending")
                                .order_by(store.forward_outbox.c.seq).limit(batch)).all()
        for row in rows:
            decision = self.gate.decide(row.patient, row.resource)
            if decision is None:
                return
            state = "withheld"
            if decision == "permit":
                if self.publisher is None or not self.publisher.connected:
                    return
                resource = row.resource
                version = (resource.get("meta") or {}).get("versionId", "1")
                envelope = {"id": f"{resource['resourceType']}-{resource['id']}-v{version}", "device": NAME,
                            "dataClass": "phi", "resource": resource}
                try:
                    self.publisher.publish(f"{self.topic}/{resource['resourceType'].lower()}",
                                           orjson.dumps(envelope), 10)
                except (ConnectionError, TimeoutError, RuntimeError):
                    return
                state = "forwarded"
            with self.engine.db.begin() as conn:
                conn.execute(update(store.forward_outbox).where(store.forward_outbox.c.seq == row.seq)
                             .values(state=state))
            if state == "forwarded":
                self.forwarded += 1
            else:
                self.withheld += 1


def build(settings: Settings | None = None, publisher: Publisher | None = None):
    settings = settings or Settings()
    db = make_engine(settings.resolved_database_url(NAME))
    auth = Authenticator(NAME, settings)
    cds_clients = cds_auth.CdsClients(settings.cds_clients, settings.cds_base_url, db)  # refuses a half configuration
    # The worker is the only one that flushes: the client's own thread would race it on the spool.
    audit = AuditClient.for_service(settings, flush_s=3600, batch=100_000)  # its audit credentials and CA too
    worker_box: list[Worker] = []
    engine = Engine(db, Policy(lanes=settings.lanes, due_s=settings.due_s),
                    on_commit=lambda: worker_box and worker_box[0].wake())
    began = time.perf_counter()
    resumed = engine.resume()
    resume_s = round(time.perf_counter() - began, 4)
    policy = news2.StalenessPolicy(device_max_age_s=settings.device_max_age_s,
                                   manual_max_age_s=settings.manual_max_age_s)
    clinical = Clinical(engine, dict(settings.device_patients), policy, escalate_after=settings.escalate_after,
                        alarm_escalate_after=settings.alarm_escalate_after,
                        spo2_scale_2=set(settings.spo2_scale_2_patients))
    tls = client_context(settings.consent_ca, settings.consent_cert, settings.consent_key) \
        if settings.consent_url and settings.consent_url.startswith("https://") else True
    worker = Worker(engine, audit, ConsentGate(settings.consent_url, settings.consent_token_file, tls), publisher,
                    settings.forward_topic, settings.tick_s)
    worker_box.append(worker)
    router = APIRouter()

    def audited(interaction: str, principal: Principal, patient: str | None, entities: list[str]) -> None:
        audit.record(balp_event(interaction, source=NAME, agent=principal.subject, patient=patient,
                                entities=entities, purpose="TREAT"))
        worker.wake()

    @router.get("/Task", tags=["tasks"])
    def search_tasks(status: str | None = Query(None, max_length=120), owner: str | None = Query(None, max_length=200),
                     patient: str | None = Query(None, max_length=200), count: int = Query(100, alias="_count",
                                                                                          ge=1, le=500),
                     principal: Principal = Depends(auth.require("task.read"))) -> dict[str, Any]:
        query = select(store.tasks.c.resource).order_by(store.tasks.c.updated.desc()).limit(count)
        if status:
            query = query.where(store.tasks.c.status.in_(status.split(",")))
        if owner:
            query = query.where(store.tasks.c.owner == owner)
        if patient:
            query = query.where(store.tasks.c.patient == patient)
        with db.connect() as conn:
            found = [r.resource for r in conn.execute(query)]
        audited("search-type", principal, patient, [f"Task/{t['id']}" for t in found][:50])
        return searchset(found)

    @router.get("/Task/{task_id}", tags=["tasks"])
    def read_task(task_id: str, principal: Principal = Depends(auth.require("task.read"))) -> dict[str, Any]:
        task = engine.task(task_id)
        audited("read", principal, task["for"]["reference"], [f"Task/{task_id}"])
        return task

    @router.post("/Task/{task_id}/$claim", tags=["tasks"])
    def claim(task_id: str, principal: Principal = Depends(auth.require("task.write"))) -> dict[str, Any]:
        return engine.claim(task_id, actor(principal), roles_of(principal))

    @router.post("/Task/{task_id}/$transition", tags=["tasks"])
    def transition(task_id: str, body: Transition,
                   principal: Principal = Depends(auth.require("task.write"))) -> dict[str, Any]:
        who = actor(principal)

        def phase_answers(conn, row) -> dict[str, Any]:
            if row.step not in checklist.ITEMS:
                return {}
            vitals = clinical.vitals_of(conn, row.patient)
            try:
                return {row.step: checklist.confirm(row.step, body.answers or {}, vitals, who,
                                                    datetime.datetime.now(datetime.timezone.utc))}
            except checklist.ChecklistError as exc:
                raise FhirError(422, str(exc), code="required") from None
        return engine.transition(task_id, who, body.status, body.reason, output=phase_answers,
                                 roles=roles_of(principal))

    @router.post("/surgical-checklist", tags=["or"], status_code=201)
    def start_checklist(body: ChecklistStart,
                        principal: Principal = Depends(auth.require("task.write"))) -> dict[str, Any]:
        actor(principal)
        with engine.lock, db.begin() as conn:
            workflow_id = engine.start(conn, "surgical_checklist", key=f"checklist:{body.patient}:{uuid.uuid4()}",
                                       patient=body.patient, data={"priority": "urgent"})
        worker.wake()
        return {"workflow": workflow_id}

    def keep_checklist(conn, patient: str, data: dict[str, Any]) -> None:
        answers = {phase: data[phase] for phase in checklist.ITEMS}
        response = checklist.questionnaire_response(patient, answers)
        record = checklist.provenance(response, answers)
        conn.execute(insert(store.documents).values(id=response["id"], patient=patient, kind="QuestionnaireResponse",
                                                    resource=response))
        conn.execute(insert(store.provenance).values(id=record["id"], target=f"QuestionnaireResponse/{response['id']}",
                                                     resource=record))
        conn.execute(insert(store.forward_outbox).values(patient=patient, resource=response, state="pending"))
        conn.execute(insert(store.audit_outbox).values(event=balp_event(
            "create", source=NAME, agent=NAME, patient=patient, entities=[f"QuestionnaireResponse/{response['id']}"],
            purpose="TREAT", description="WHO Surgical Safety Checklist completed")))

    engine.on_completed["surgical_checklist"] = keep_checklist

    @router.post("/PlanDefinition/{plan_id}/$apply", tags=["protocols"])
    def apply_plan(plan_id: str, body: ApplyRequest,
                   principal: Principal = Depends(auth.require("task.read"))) -> dict[str, Any]:
        observation = body.news2 or latest_score(body.subject)
        if observation is None:
            raise FhirError(422, f"no NEWS2 Observation given or stored for {body.subject}")
        try:
            result = protocols.apply(plan_id, subject=body.subject, variables={"news2": observation})
        except protocols.ApplyError as exc:
            raise FhirError(404 if "no PlanDefinition" in str(exc) else 422, str(exc)) from None
        audited("execute", principal, body.subject, [f"PlanDefinition/{plan_id}"])
        return result

    @router.get("/QuestionnaireResponse", tags=["or"])
    def search_checklists(patient: str = Query(..., pattern=r"^Patient/[A-Za-z0-9\-.]{1,64}$"),
                          principal: Principal = Depends(auth.require("task.read"))) -> dict[str, Any]:
        with db.connect() as conn:
            found = [r.resource for r in conn.execute(select(store.documents.c.resource).where(
                store.documents.c.patient == patient, store.documents.c.kind == "QuestionnaireResponse"))]
        audited("search-type", principal, patient, [f"QuestionnaireResponse/{r['id']}" for r in found])
        return searchset(found)

    @router.post("/Task/{task_id}/$handover", tags=["tasks"])
    def handover(task_id: str, body: Handover,
                 principal: Principal = Depends(auth.require("task.write"))) -> dict[str, Any]:
        return engine.handover(task_id, actor(principal), body.to, body.reason)

    @router.get("/Provenance", tags=["tasks"])
    def provenance(target: str = Query(..., pattern=r"^(Task|QuestionnaireResponse)/[A-Za-z0-9\-]{1,64}$"),
                   principal: Principal = Depends(auth.require("task.read"))) -> dict[str, Any]:
        with db.connect() as conn:
            found = [r.resource for r in conn.execute(select(store.provenance.c.resource)
                                                      .where(store.provenance.c.target == target))]
        audited("search-type", principal, None, [target])
        return searchset(found)

    @router.post("/Observation", tags=["news2"], status_code=201)
    def record_observation(resource: dict[str, Any] = Body(...),
                           principal: Principal = Depends(auth.require("observation.write"))) -> dict[str, Any]:
        if len(orjson.dumps(resource)) > 64_000:
            raise FhirError(413, "Observation larger than 64 kB")
        outcome = clinical.record_observation(resource)
        audited("create", principal, resource["subject"]["reference"], [f"Observation/{resource['id']}"])
        return {"id": resource["id"], "outcome": outcome}

    @router.get("/Observation", tags=["news2"])
    def search_scores(last_updated: str | None = Query(None, alias="_lastUpdated", max_length=40,
                                                       pattern=r"^gt\d{4}-\d{2}-\d{2}T[0-9:.+\-Z]+$"),
                      count: int = Query(500, alias="_count", ge=1, le=1000),
                      principal: Principal = Depends(auth.require("observation.read"))) -> dict[str, Any]:
        """NEWS2 scores issued after `_lastUpdated=gt<instant>`, oldest first: one call keeps a ward's
        scores and trends current (a per-patient /news2 read per bed would be N calls)."""
        query = select(store.scores.c.resource).order_by(store.scores.c.issued).limit(count)
        if last_updated:
            try:
                since = datetime.datetime.fromisoformat(last_updated[2:].replace("Z", "+00:00"))
            except ValueError:
                raise FhirError(400, "_lastUpdated must be gt<ISO 8601 instant>", code="invalid") from None
            if since.tzinfo is None:
                raise FhirError(400, "_lastUpdated needs a time zone", code="invalid")
            query = query.where(store.scores.c.issued > since.timestamp())
        with db.connect() as conn:
            found = [r.resource for r in conn.execute(query)]
        audited("search-type", principal, None, [f"Observation/{o['id']}" for o in found][:50])
        return searchset(found)

    @router.get("/news2", tags=["news2"])
    def latest_news2(patient: str = Query(..., pattern=r"^Patient/[A-Za-z0-9\-.]{1,64}$"),
                     principal: Principal = Depends(auth.require("observation.read"))) -> dict[str, Any]:
        scored = latest_score(patient)
        if scored is None:
            raise FhirError(404, f"no NEWS2 for {patient}")
        audited("read", principal, patient, [f"Observation/{scored['id']}"])
        return scored

    def latest_score(patient: str) -> dict[str, Any] | None:
        with db.connect() as conn:
            row = conn.execute(select(store.scores.c.resource).where(store.scores.c.patient == patient)
                               .order_by(store.scores.c.issued.desc()).limit(1)).first()
        return row.resource if row else None

    @router.get("/cds-services", tags=["cds-hooks"],
                dependencies=[public("CDS Hooks 2.0 discovery: service descriptions only, no patient data")])
    def discovery() -> dict[str, Any]:
        return {"services": cds.SERVICES}

    @router.post("/cds-services/{service_id}", tags=["cds-hooks"])
    def hook(service_id: str, request: cds.HookRequest,
             principal: Principal = Depends(cds_clients.require())) -> dict[str, Any]:
        if service_id not in cds.HOOK_OF:
            raise FhirError(404, f"no CDS service {service_id}")
        if request.hook != cds.HOOK_OF[service_id]:
            raise FhirError(400, f"service {service_id} answers hook {cds.HOOK_OF[service_id]}, not {request.hook}")
        if request.hook == "encounter-start" and not request.context.encounter_id:
            raise FhirError(400, "encounter-start context needs encounterId (CDS Hooks hook definition)")
        patient = f"Patient/{request.context.patient_id}"
        now = datetime.datetime.now(datetime.timezone.utc)
        scale = 2 if patient in settings.spo2_scale_2_patients else 1
        found = cds.from_prefetch((request.prefetch or {}).get("vitals") or {}, patient, now, policy, scale)
        incomplete = found if isinstance(found, news2.Incomplete) else None
        scored = found if isinstance(found, dict) else None
        if found is None:  # nothing prefetched: this site's latest score, if it is recent enough
            stored = latest_score(patient)
            if stored and (now - datetime.datetime.fromisoformat(stored["issued"])).total_seconds() \
                    <= policy.device_max_age_s:
                scored = stored
        # BALP: the EHR user the hook speaks for is the requestor; the authenticated CDS client (iss) too
        event = balp_event("read", source=NAME, agent=principal.subject, patient=patient, purpose="TREAT",
                           entities=[f"Observation/{scored['id']}"] if scored else [])
        event["agent"][0]["requestor"] = False
        event["agent"].append({"type": {"coding": [{"system": HUMAN_USER[0], "code": HUMAN_USER[1]}]},
                               "who": {"reference": request.context.user_id}, "requestor": True})
        audit.record(event)
        worker.wake()
        return {"cards": [cds.card_for(scored, incomplete)]}

    def health() -> dict[str, Any]:
        counters = clinical.counters
        # The MQTT intake (set by main()): without the broker no device data arrives, so not ready.
        subscriber = getattr(app.state, "subscriber", None)
        broker = {} if subscriber is None else {
            "broker": "connected" if subscriber.client.is_connected() else "disconnected",
            "ready": subscriber.client.is_connected()}
        return {**broker, "database": db.dialect.name, "resumedWorkflows": resumed, "resumeSeconds": resume_s, "openWorkflows": len(engine.open),
                "messages": counters.messages, "duplicates": counters.duplicates, "refused": counters.refused,
                "unassigned": counters.unassigned, "scores": counters.scores, "incomplete": counters.incomplete,
                "lastRefusal": counters.last_refusal, "lastIncomplete": counters.last_incomplete,
                "forwarded": worker.forwarded, "withheld": worker.withheld}

    app = create_app(NAME, __doc__.strip().splitlines()[0], router, health)
    app.state.engine, app.state.clinical, app.state.worker, app.state.audit = engine, clinical, worker, audit
    app.state.auth, app.state.settings = auth, settings
    app.state.router, app.state.public_routes = router, PUBLIC_ROUTES
    return app, settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    publisher = Publisher(settings.broker_url, settings.client_id + "-out", ca=settings.broker_ca,
                          password_file=settings.broker_password_file)
    app, settings = build(settings, publisher)
    subscriber = Subscriber(settings, app.state.clinical)
    app.state.subscriber = subscriber
    app.state.worker.start()
    subscriber.start()
    try:
        serve(app, settings)
    finally:
        subscriber.stop()
        app.state.worker.stop()
        app.state.audit.close()
        publisher.close()
