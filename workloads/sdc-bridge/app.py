"""sdc-bridge service: SDC providers -> FHIR R4 on the site broker, with the alarm workflow.

Providers come from `PROVIDERS` (xaddrs; the k3s pod network carries no multicast, so sites
list their monitors' addresses) and, where multicast works, WS-Discovery on
`DISCOVERY_INTERFACE`. Every produced resource is validated with fhir.resources (R4B) - an
Observation once per metric and shape, later ones of that shape only have their values checked - before
it is committed to a durable outbox and published from it (QoS 1, deleted after PUBACK); an invalid one
is refused with its OperationOutcome logged. /healthz says not-ready while the broker is unreachable.
Alarm rules: `ALARM_RULES` (YAML file); acknowledge with POST /alarms/{id}/acknowledge.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from fastapi import APIRouter, Depends, Query
from fhir.resources.R4B import get_fhir_model_class
from pydantic import Field, ValidationError

from medplat.service.app import create_app
from medplat.service.auth import Authenticator, Principal
from medplat.service.audit import AuditClient, balp_event
from medplat.service.fhir import FhirError, operation_outcome
from medplat.service.durable_publisher import DurablePublisher, OutboxFull
from medplat.service.settings import ServiceSettings, service_config
from medplat.workloads.sdc_bridge.alarms import AlarmRouter, Rules
from medplat.workloads.sdc_bridge.bridge import Bridge

NAME = "sdc-bridge"
log = logging.getLogger("medplat.sdc-bridge")
DEFAULT_RULES = {"rules": [{"name": "all-to-unit", "priorities": ["Hi", "Me", "Lo"], "location": "*",
                            "recipients": ["PractitionerRole/unit-nurse"], "escalateAfterSeconds": 60,
                            "escalateTo": ["PractitionerRole/charge-nurse"]}]}


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    port: int = 8080
    providers: list[str] = []
    discovery_interface: str | None = None
    location: str = "unknown"
    alarm_rules: Path | None = None
    broker_url: str = "mqtt://127.0.0.1:1883"
    topic_prefix: str = "medplat/devices"
    client_id: str = "medplat-sdc-bridge"
    check_interval_s: float = 2.0
    renew_interval_s: int = Field(5, ge=1, le=300)  # subscription renewals: detect a silently dead provider
    # The durable outbox (data_dir/outbox.sqlite) holds what the broker has not acknowledged yet.
    outbox_max_messages: int = Field(1_000_000, gt=0)
    # With TLS configured (tls_folder), providers are used over https only: a discovered or
    # configured http:// xaddr is refused (no downgrade).
    # Folder with userkey.pem, usercert.pem and cacert.pem (sdc11073's layout) for providers
    # that offer TLS (https xaddrs); the certificates come from PlatformPki.
    tls_folder: Path | None = None


class Output:
    """Validate, wrap in an edge-forwarder envelope, commit to the durable outbox.

    Invalid resources are refused with their OperationOutcome logged and counted; a full outbox
    is counted as refused and logged (never a silent drop) and makes the bridge not ready."""

    def __init__(self, publisher: DurablePublisher | None, prefix: str) -> None:
        self.publisher, self.prefix = publisher, prefix
        self.queued = self.invalid = self.failed = 0
        self._lock = threading.Lock()
        self._validated: set[tuple] = set()

    def __call__(self, device: str, resource: dict[str, Any]) -> None:
        self.many([(device, resource)])

    def _shape(self, resource: dict[str, Any]) -> tuple | None:
        """Observations of one metric differ only in typed values (sdc11073 parsed them: Decimal,
        enum, float seconds) and ids: full validation once per metric and shape keeps the bridge
        near a bare consumer's speed (fhir.resources takes ~1 ms per Observation)."""
        if resource.get("resourceType") != "Observation":
            return None
        quantity = resource.get("valueQuantity")
        if quantity is not None and not math.isfinite(quantity.get("value", 0.0)):
            raise ValueError("valueQuantity.value must be a finite number")
        if "valueString" in resource and not str(resource["valueString"]).strip():
            raise ValueError("valueString must not be empty")
        return (resource["device"]["reference"], resource["status"], tuple(sorted(resource)),
                tuple(sorted(quantity)) if quantity else None)

    def _envelope(self, device: str, resource: dict[str, Any]) -> tuple[str, bytes] | None:
        try:
            shape = self._shape(resource)
            if shape is None or shape not in self._validated:
                get_fhir_model_class(resource["resourceType"]).model_validate(resource)
                if shape is not None and len(self._validated) < 100_000:
                    self._validated.add(shape)
        except (ValidationError, KeyError, ValueError) as exc:
            with self._lock:
                self.invalid += 1
            log.error("invalid FHIR refused: %s", orjson.dumps(operation_outcome(422, str(exc)[:500])).decode())
            return None
        # Resources are updated in place (a DetectedIssue's status follows its alarm): the message
        # id names the version, the resource id stays.
        version = resource.get("status", "")
        envelope = {"id": f"{resource['resourceType']}-{resource['id']}{'-' + version if version else ''}",
                    "device": device, "dataClass": "phi", "resource": resource}
        return f"{self.prefix}/{device}/{resource['resourceType'].lower()}", orjson.dumps(envelope)

    def many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        messages = [m for m in (self._envelope(d, r) for d, r in items) if m is not None]
        if not messages:
            return
        try:
            if self.publisher is None:
                raise OutboxFull("no site broker configured")
            self.publisher.submit_many(messages)
            with self._lock:
                self.queued += len(messages)
        except (OutboxFull, sqlite3.Error) as exc:
            with self._lock:
                self.failed += len(messages)
            log.error("REFUSED %d resources (%s): the outbox cannot take them", len(messages), exc)


def build(settings: Settings | None = None, publisher: DurablePublisher | None = None):
    settings = settings or Settings()
    if publisher is None:
        publisher = DurablePublisher(settings.broker_url, settings.client_id, settings.data_dir / "outbox.sqlite",
                                     max_messages=settings.outbox_max_messages,
                                     ca=getattr(settings, "broker_ca", None),
                                     password_file=getattr(settings, "broker_password_file", None))
    rules = Rules.load(settings.alarm_rules) if settings.alarm_rules else Rules.model_validate(DEFAULT_RULES)
    audit = AuditClient.for_service(settings)
    output = Output(publisher, settings.topic_prefix)

    def record(decision: dict[str, Any]) -> None:
        audit.record(balp_event("execute", source=NAME, agent=decision.get("by", NAME),
                                description=f"alarm {decision['alarm']} {decision['decision']}: "
                                            f"{decision['condition']} on {decision['device']}"))

    router = AlarmRouter(rules, emit=output, record=record, state_path=settings.data_dir / "active-alarms.json")
    ssl_context = None
    if settings.tls_folder:
        from sdc11073.certloader import mk_ssl_contexts_from_folder

        ssl_context = mk_ssl_contexts_from_folder(settings.tls_folder)
    bridge = Bridge(settings.providers, output, router, location=settings.location,
                    discovery_interface=settings.discovery_interface, check_interval_s=settings.check_interval_s,
                    ssl_context=ssl_context, renew_interval_s=settings.renew_interval_s)
    auth = Authenticator(NAME, settings)
    reader = Depends(auth.require("alarms.read"))
    api = APIRouter()

    @api.get("/alarms", tags=["alarms"], dependencies=[reader])
    def alarms() -> dict[str, Any]:
        return {"active": [{"id": a.id, "device": a.device, "condition": a.condition, "priority": a.priority,
                            "acknowledged": a.acknowledged, "escalated": a.escalated, "repeats": a.repeats}
                           for a in router.active.values()]}

    @api.post("/alarms/{alarm_id}/acknowledge", tags=["alarms"])
    def acknowledge(alarm_id: str, caller: Principal = Depends(auth.require("alarms.acknowledge"))) -> dict[str, Any]:
        # who acknowledged is the authenticated caller, never a name the request chooses
        if not router.acknowledge(alarm_id, caller.subject):
            raise FhirError(404, f"no active alarm {alarm_id}")
        return {"acknowledged": alarm_id}

    @api.get("/alarms/decisions", tags=["alarms"], dependencies=[reader])
    def decisions(limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        return {"decisions": router.decisions[-limit:]}

    def health() -> dict[str, Any]:
        ready = publisher.ready  # broker connected and the backlog below its mark
        return {"status": "ok" if ready else "not-ready", "ready": ready, **bridge.status(),
                "outbox": publisher.status(), "queued": output.queued, "invalid": output.invalid,
                "refused": output.failed}

    app = create_app(NAME, __doc__.strip().splitlines()[0], api, health)
    app.state.bridge, app.state.router, app.state.output, app.state.audit = bridge, router, output, audit
    app.state.publisher = publisher
    return app, settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app, settings = build(settings)
    app.state.bridge.start()
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    finally:
        app.state.bridge.stop()
        app.state.publisher.close()
        app.state.audit.close()
