"""The one way workloads write audit records: FHIR AuditEvents (IHE BALP patterns) sent in
batches to the site's audit-log service.

Events are queued and posted by a background thread; while the audit log is unreachable
(or answers 5xx, 401, 403, 429) they wait in a local spool file (JSON lines, fsync'd, 0600)
and are sent first when it is back, so an outage delays audit records but never loses them.
An event the log refuses as invalid (400, 413, 422) is never retried: it goes to the
dead-letter file beside the spool, is logged at ERROR and counted
(`medplat_audit_dead_lettered_total`), and delivery of the rest continues.
The client authenticates with the workload's client certificate (mutual TLS) or a bearer
token file (`AUDIT_TOKEN_FILE`, re-read per batch).
"""
from __future__ import annotations

import datetime
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from medplat.service.settings import private_dir

log = logging.getLogger("medplat.audit")
DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL = "http://terminology.hl7.org/CodeSystem/restful-interaction"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
ACTIONS = {"create": "C", "read": "R", "update": "U", "delete": "D", "search-type": "E", "execute": "E"}


def balp_event(interaction: str, *, source: str, agent: str, patient: str | None = None,
               entities: list[str] = (), outcome: str = "0", purpose: str | None = None,
               description: str | None = None, recorded: datetime.datetime | None = None) -> dict[str, Any]:
    """An AuditEvent in the shape of IHE BALP's basic RESTful patterns (Create, Read, ...)."""
    if interaction not in ACTIONS:
        raise ValueError(f"unknown interaction {interaction!r}; one of {sorted(ACTIONS)}")
    recorded = recorded or datetime.datetime.now(datetime.timezone.utc)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "Restful Operation"},
        "subtype": [{"system": RESTFUL, "code": interaction}],
        "action": ACTIONS[interaction],
        "recorded": recorded.isoformat(),
        "outcome": outcome,
        "agent": [{"type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
                   "who": {"identifier": {"value": agent}}, "requestor": True}],
        "source": {"observer": {"display": source},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}]},
        "entity": [{"what": {"reference": ref}, "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                                          "code": "2"}} for ref in entities],
    }
    if patient:
        event["entity"].append({"what": {"reference": patient},
                                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                         "code": "1"},
                                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}})
    if purpose:
        event["purposeOfEvent"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                                "code": purpose}]}]
    if description:
        event["outcomeDesc"] = description
    if not event["entity"]:
        del event["entity"]
    return event


INVALID = {400, 413, 422}  # the log's verdict on the event itself: retrying cannot help


class AuditClient:
    def __init__(self, url: str | None, spool: Path, *, verify: Any = True, flush_s: float = 0.5,
                 batch: int = 500, token_file: Path | None = None) -> None:
        self.url = url.rstrip("/") if url else None
        self.spool, self.flush_s, self.batch, self.token_file = spool, flush_s, batch, token_file
        self.dead_letters = spool.with_name(spool.stem + "-dead-letter.jsonl")
        self.dead_lettered = 0
        self._client = httpx.Client(verify=verify, timeout=30) if url else None
        self._queue: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-client", daemon=True)
        self.sent = 0
        private_dir(self.spool.parent)
        self._thread.start()

    @classmethod
    def for_service(cls, settings, **options: Any) -> AuditClient:
        """The client a workload uses: its settings' audit log and credentials, its data folder's spool
        (`options`: flush_s, batch)."""
        verify: Any = True
        if settings.audit_url and settings.audit_url.startswith("https://"):
            from medplat.service.tls import client_context

            verify = client_context(settings.audit_ca, settings.audit_client_cert, settings.audit_client_key)
        return cls(settings.audit_url, settings.data_dir / "audit-spool.jsonl", verify=verify,
                   token_file=settings.audit_token_file, **options)

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token_file.read_text().strip()}"} if self.token_file else {}

    def _post(self, events: list[dict[str, Any]]) -> httpx.Response:
        return self._client.post(f"{self.url}/entries", json={"events": events}, headers=self._headers())

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        """Send one batch; an invalid batch is retried event by event so only the invalid ones are set aside."""
        response = self._post(events)
        if response.status_code in INVALID:
            if len(events) == 1:
                self._dead_letter(events[0], response)
                return
            for event in events:
                self._deliver([event])
            return
        response.raise_for_status()
        self.sent += len(events)

    def _dead_letter(self, event: dict[str, Any], response: httpx.Response) -> None:
        reason = response.text[:300]
        fd = os.open(self.dead_letters, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as handle:
            handle.write(orjson.dumps({"status": response.status_code, "reason": reason, "event": event}) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.dead_lettered += 1
        log.error("audit log refused event %s with %d; dead-lettered to %s", event.get("id"), response.status_code,
                  self.dead_letters)

    def collector(self):
        """Prometheus collector: events sent, dead-lettered, waiting in the spool."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        client = self

        class _Collector:
            def collect(self):
                yield CounterMetricFamily("medplat_audit_sent", "Audit events delivered", value=client.sent)
                yield CounterMetricFamily("medplat_audit_dead_lettered", "Audit events the log refused as invalid",
                                          value=client.dead_lettered)
                yield GaugeMetricFamily("medplat_audit_pending", "Audit events queued or spooled",
                                        value=client.pending())
        return _Collector()

    def pending(self) -> int:
        spooled = self.spool.read_bytes().count(b"\n") if self.spool.exists() else 0
        return spooled + len(self._queue)

    def record(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._queue.append(event)
        if len(self._queue) >= self.batch:
            self._wake.set()

    def flush(self) -> bool:
        """Send (or spool) everything queued; True when nothing is left waiting."""
        with self._flushing:  # one flush at a time: two would both send the spool (duplicates)
            return self._flush()

    def _flush(self) -> bool:
        with self._lock:
            events, self._queue = self._queue, []
        if self._client is None:  # no audit log configured: the spool only grows, so append to it
            if events:            # (rewriting it all each round made every flush slower than the last)
                self._append_spool(events)
            return not events and (not self.spool.exists() or self.spool.stat().st_size == 0)
        spooled = self._read_spool()
        pending = spooled + events
        if not pending:
            return True
        if self._client is not None:
            offset = 0
            try:
                for offset in range(0, len(pending), self.batch):
                    self._deliver(pending[offset:offset + self.batch])
                self._write_spool([])
                return True
            except httpx.HTTPError as exc:
                log.warning("audit log unreachable (%s); spooling %d events", exc, len(pending) - offset)
                pending = pending[offset:]
        self._write_spool(pending)
        return False

    def _read_spool(self) -> list[dict[str, Any]]:
        if not self.spool.exists():
            return []
        return [orjson.loads(line) for line in self.spool.read_bytes().splitlines() if line.strip()]

    def _append_spool(self, events: list[dict[str, Any]]) -> None:
        fd = os.open(self.spool, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as handle:
            handle.write(b"".join(orjson.dumps(e) + b"\n" for e in events))
            handle.flush()
            os.fsync(handle.fileno())

    def _write_spool(self, events: list[dict[str, Any]]) -> None:
        temporary = self.spool.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"".join(orjson.dumps(e) + b"\n" for e in events))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.spool)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # never let auditing kill the service thread; the spool keeps the events
                log.exception("audit flush failed")

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()
        if self._client is not None:
            self._client.close()


def balp_consent_decision(*, decision: str, patient: str, consents: list[str], actors: list[str], purpose: str,
                          source: str, requester: str) -> dict[str, Any]:
    """IHE BALP AuthZconsent: Security Alert (DCM 110113), subtype AuthZ-Consent."""
    event = balp_event("execute", source=source, agent=requester, patient=patient, purpose=purpose,
                       entities=consents, description=f"consent decision: {decision}")
    event["type"] = {"system": DCM, "code": "110113", "display": "Security Alert"}
    event["subtype"] = [{"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType",
                         "code": "AuthZ-Consent", "display": "Authorization Decision using Roles and Consent"}]
    event["agent"] += [{"type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
                        "who": {"reference": actor}, "requestor": False} for actor in actors]
    return event
