"""edge-forwarder service: site broker -> durable outbox -> EU ingest over mutual TLS.

Intake is the site's MQTT broker (persistent session, QoS 1, acknowledged after the outbox
commit) and, for adapters without MQTT, `POST /messages` (answered after the commit).
`/healthz` and `/metrics` report queue depth, age of the oldest message, send rate and the
disk state (ok, alarm, full). At the size limit the default (`on_full=refuse`) refuses new
messages loudly (ERROR log, `refused` record, HTTP 507, metric) and never drops queued
ones; `on_full=backpressure` stops acknowledging instead, leaving messages with the broker.
"""
from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import Field, field_validator

from medplat.service.access import Peers, either
from medplat.service.app import create_app
from medplat.service.auth import Authenticator
from medplat.service.fhir import FhirError
from medplat.service.settings import ServiceSettings, service_config
from medplat.service.backoff import Backoff
from medplat.service.tls import client_context, serve
from medplat.workloads.edge_forwarder.intake import Capacity, Intake
from medplat.workloads.edge_forwarder.mqtt import MqttIntake
from medplat.workloads.edge_forwarder.outbox import Outbox
from medplat.workloads.edge_forwarder.sender import Sender
from medplat.workloads.edge_forwarder.site_policy import PolicySource

NAME = "edge-forwarder"
log = logging.getLogger("medplat.edge-forwarder")


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    outbox: Path | None = None  # default: <data_dir>/outbox.sqlite
    broker_url: str | None = None  # mqtt://host:1883; unset = HTTP intake only
    topic: str = "medplat/devices/#"
    client_id: str = "medplat-edge-forwarder"  # the broker keeps this session's queue
    cloud_url: str | None = None
    cloud_url_file: Path | None = None  # the `cloud-endpoint` key of the site-policy ConfigMap
    cloud_ca: Path | None = None
    client_cert: Path | None = None  # mTLS client certificate issued by PlatformPki
    client_key: Path | None = None
    site_policy: Path | None = None  # site-policy.json pushed from the EU zone
    # Bytes, or "N%" of the outbox volume's capacity (deployed: the PVC EdgeSite sizes per site).
    max_bytes: int | str = 1 << 30
    alarm_ratio: float = Field(0.8, gt=0, lt=1)
    min_free_bytes: int = Field(64 << 20, ge=0)
    on_full: Literal["refuse", "backpressure"] = "refuse"
    batch_size: int = Field(1000, ge=1, le=5000)
    commit_max: int = Field(5000, ge=1)
    commit_linger_ms: float = Field(10, ge=0)
    backoff_base_s: float = Field(0.2, gt=0)
    backoff_cap_s: float = Field(30, gt=0)


    @field_validator("max_bytes")
    @classmethod
    def _limit(cls, value: int | str) -> int | str:
        text = str(value).strip()
        if text.endswith("%") and text[:-1].isdigit() and 0 < int(text[:-1]) < 100:
            return text
        if text.isdigit() and int(text) >= 1 << 16:
            return int(text)
        raise ValueError("must be a byte count >= 65536 or a percentage of the volume such as '90%'")


def limit_bytes(value: int | str, folder: Path) -> int:
    if isinstance(value, str):
        folder.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(folder).total * int(value[:-1]) // 100
    return value


class Forwarder:
    """Wires outbox, intake (MQTT + HTTP) and sender; `start()`/`stop()` run the threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        outbox_path = settings.outbox or settings.data_dir / "outbox.sqlite"
        self.outbox = Outbox(outbox_path)
        self.policy = PolicySource(settings.site_policy)
        self.capacity = Capacity(limit_bytes(settings.max_bytes, outbox_path.parent), settings.alarm_ratio, settings.min_free_bytes)
        self.intake = Intake(self.outbox, self.policy, self.capacity, on_full=settings.on_full,
                             commit_max=settings.commit_max, linger_s=settings.commit_linger_ms / 1000)
        context = client_context(settings.cloud_ca, settings.client_cert, settings.client_key)
        self.sender = Sender(self.outbox, self.policy, self.cloud_url, context, batch_size=settings.batch_size,
                             backoff=Backoff(settings.backoff_base_s, settings.backoff_cap_s))
        self.mqtt = (MqttIntake(settings.broker_url, settings.topic, settings.client_id, self.intake,
                                ca=settings.broker_ca, password_file=settings.broker_password_file)
                     if settings.broker_url else None)

    def cloud_url(self) -> str | None:
        if self.settings.cloud_url:
            return self.settings.cloud_url
        if self.settings.cloud_url_file:
            try:
                return self.settings.cloud_url_file.read_text(encoding="utf-8").strip() or None
            except OSError:
                return None
        return None

    def start(self) -> None:
        self.intake.start()
        self.sender.start()
        if self.mqtt:
            self.mqtt.start()

    def stop(self) -> None:
        if self.mqtt:
            self.mqtt.stop()
        self.intake.stop()
        self.sender.stop()
        self.outbox.close()

    def status(self) -> dict[str, Any]:
        stats = self.outbox.stats()
        return {
            "status": self.capacity.update(self.outbox), "queueDepth": stats.depth, "oldestAgeSeconds": stats.oldest_age_seconds,
            "usedBytes": stats.used_bytes, "maxBytes": self.capacity.max_bytes, "sent": stats.sent,
            "sendRate": self.sender.send_rate(), "refused": stats.refused, "cloudConnected": self.sender.connected,
            "brokerConnected": self.mqtt.connected if self.mqtt else None, "lastError": self.sender.last_error,
            "onFull": self.settings.on_full,
        }


class _Metrics:
    """Prometheus collector reading the outbox at scrape time."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder

    def collect(self):
        status = self.forwarder.status()
        yield GaugeMetricFamily("medplat_outbox_depth", "Messages waiting in the outbox", value=status["queueDepth"])
        yield GaugeMetricFamily("medplat_outbox_oldest_age_seconds", "Age of the oldest queued message",
                                value=status["oldestAgeSeconds"])
        yield GaugeMetricFamily("medplat_outbox_used_bytes", "Outbox bytes in use", value=status["usedBytes"])
        yield GaugeMetricFamily("medplat_outbox_limit_bytes", "Outbox size limit", value=status["maxBytes"])
        yield GaugeMetricFamily("medplat_outbox_alarm", "1 when the outbox is at the alarm level or full",
                                value=0 if status["status"] == "ok" else 1)
        yield GaugeMetricFamily("medplat_forwarder_send_rate", "Messages/s confirmed by the cloud (10 s window)",
                                value=status["sendRate"])
        yield CounterMetricFamily("medplat_forwarder_sent", "Messages confirmed by the cloud", value=status["sent"])
        refused = CounterMetricFamily("medplat_forwarder_refused", "Messages refused, by reason", labels=["reason"])
        for reason, count in sorted(status["refused"].items()):
            refused.add_metric([reason], count)
        yield refused


def build(settings: Settings | None = None):
    settings = settings or Settings()
    forwarder = Forwarder(settings)
    peers, auth = Peers(settings), Authenticator(NAME, settings)
    producer = either(peers.require(kind="workload"), auth.require("forwarder.submit"))
    reader = auth.require("forwarder.read")
    router = APIRouter()

    @router.post("/messages", status_code=202, tags=["intake"], dependencies=[Depends(producer)])
    async def post_messages(request: Request) -> dict[str, Any]:
        """Durably queue one envelope or a JSON array of them; answered after the commit."""
        try:
            doc = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise FhirError(400, f"body is not JSON: {exc}") from None
        items = doc if isinstance(doc, list) else [doc]
        if not items:
            raise FhirError(400, "no messages")
        return await _settle(forwarder, [orjson.dumps(item) for item in items])

    @router.get("/status", tags=["status"], dependencies=[Depends(reader)])
    def status() -> dict[str, Any]:
        return forwarder.status()

    @router.get("/refusals", tags=["status"], dependencies=[Depends(reader)])
    def refusals(limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        return {"refusals": forwarder.outbox.refusals(limit)}

    app = create_app(NAME, __doc__.strip().splitlines()[0], router, forwarder.status, settings=settings,
                     collectors=[_Metrics(forwarder)])
    app.state.forwarder = forwarder
    return app, settings


async def _settle(forwarder: Forwarder, raws: list[bytes]) -> dict[str, Any]:
    import asyncio

    loop = asyncio.get_running_loop()
    outcomes: list[tuple[str, str] | None] = [None] * len(raws)
    remaining = len(raws)
    done = asyncio.Event()
    lock = threading.Lock()

    def settle_at(index: int):
        def settle(outcome: str, reason: str) -> None:
            nonlocal remaining
            with lock:
                if outcomes[index] is None:
                    remaining -= 1
                outcomes[index] = (outcome, reason)
                if remaining == 0 or outcome == "held":
                    loop.call_soon_threadsafe(done.set)
        return settle

    for index, raw in enumerate(raws):
        forwarder.intake.submit(raw, settle_at(index))
    try:
        await asyncio.wait_for(done.wait(), timeout=30)
    except TimeoutError:
        raise FhirError(503, "outbox did not commit in time; retry (message ids make retries safe)") from None
    if any(o is not None and o[0] == "held" for o in outcomes):
        raise FhirError(503, "outbox full: intake is holding back; retry later", code="transient")
    refused = [{"index": i, "reason": o[1]} for i, o in enumerate(outcomes) if o and o[0] == "refused"]
    if refused and all("outbox full" in r["reason"] for r in refused) and len(refused) == len(raws):
        raise FhirError(507, f"outbox full: {len(raws)} messages refused; nothing queued was dropped",
                        code="too-costly")
    return {"stored": len(raws) - len(refused), "refused": refused}


def main() -> None:
    app, settings = build()
    forwarder: Forwarder = app.state.forwarder
    forwarder.start()
    try:
        serve(app, settings)
    finally:
        forwarder.stop()
