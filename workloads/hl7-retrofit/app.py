"""hl7-retrofit service: MLLP listener for ORU^R01 (IHE PCD-01) from legacy monitors; each message
becomes one validated FHIR message Bundle published to the site broker (QoS 1) as an
edge-forwarder envelope, and is acknowledged AA only after the broker's PUBACK.

A connection is pipelined: frames are read, mapped and published while earlier ones still wait
for their PUBACK, and the ACKs go back in order. A batch (FHS/BHS) is answered with a batch of one
ACK per message. NAKs carry an ERR segment with the HL7 Table 0357 code of the real cause: AE for
errors in the content (100-103, 207), AR for messages that fail acceptance (200-203) or that the
receiver cannot store now (207, broker unreachable: the sender decides when to resend).
Nothing of a message is published unless all of it mapped and validated.
"""
from __future__ import annotations

import asyncio
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import paho.mqtt.client as mqtt
import uvicorn
from fastapi import APIRouter, Depends
from opentelemetry.trace import SpanKind

from medplat.service.app import create_app
from medplat.service.auth import Authenticator
from medplat.service.mqtt import Publisher
from medplat.service.settings import ServiceSettings, service_config
from medplat.service.tracing import annotate, tracer
from medplat.workloads.hl7_retrofit import acks
from medplat.workloads.hl7_retrofit.errors import Hl7Error
from medplat.workloads.hl7_retrofit.mapping import SiteRules, decode, to_bundle

NAME = "hl7-retrofit"
log = logging.getLogger("medplat.hl7-retrofit")
END = acks.FS + acks.CR
BIG_FRAME = 256 * 1024  # mapped in a worker thread so other connections keep being served


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    port: int = 8080  # health and OpenAPI
    mllp_port: int = 2575
    max_message_bytes: int = 4 << 20
    broker_url: str = "mqtt://127.0.0.1:1883"
    topic_prefix: str = "medplat/devices"
    client_id: str = "medplat-hl7-retrofit"
    publish_timeout_s: float = 10
    # Site conventions the standard leaves open (documented in the README).
    site_timezone: str = "Europe/Berlin"  # a DTM/TS without offset is local time here
    default_charset: str = "ASCII"  # MSH-18 empty: HL7's default; set "8859/1" for senders that omit it
    hl7_versions: list[str] = ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6"]
    max_in_flight: int = 512  # frames per connection awaiting their PUBACK
    max_in_flight_bytes: int = 16 << 20  # unanswered bytes per connection (bounds memory)


class PubAcks:
    """QoS 1 publishes whose PUBACK resolves an asyncio future (paho's on_publish callback), so a
    connection can have many messages in flight instead of waiting for each in turn. PUBACKs are
    handed to the event loop in bunches (one wake-up for all that arrived meanwhile), and one
    sweeper fails the publishes the broker has not acknowledged in time."""

    def __init__(self, publisher: Publisher, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.client, self.loop, self.timeout = publisher.client, loop, timeout
        self.pending: dict[int, tuple[asyncio.Future, float]] = {}  # mid -> (future, deadline)
        self.early: set[int] = set()  # PUBACKs that beat the registration of their mid
        self.acked: list[asyncio.Future] = []
        self.wake_scheduled = False
        self.lock = threading.Lock()  # never held while calling into paho (its callbacks take it)
        self.previous = self.client.on_publish
        self.client.on_publish = self._on_publish
        self.sweeper = loop.create_task(self._sweep())

    def publish(self, topic: str, payload: bytes) -> asyncio.Future:
        if not self.client.is_connected():
            raise ConnectionError("site broker not connected")
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish failed: {mqtt.error_string(info.rc)}")
        future = self.loop.create_future()
        with self.lock:
            if info.mid in self.early:
                self.early.discard(info.mid)
                future.set_result(None)
            else:
                self.pending[info.mid] = (future, self.loop.time() + self.timeout)
        return future

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        if self.previous:
            self.previous(client, userdata, mid, reason_code, properties)
        with self.lock:
            waiting = self.pending.pop(mid, None)
            if waiting is None:
                self.early.add(mid)
                return
            self.acked.append(waiting[0])
            if self.wake_scheduled:
                return
            self.wake_scheduled = True
        self.loop.call_soon_threadsafe(self._resolve_acked)

    def _resolve_acked(self) -> None:
        with self.lock:
            acked, self.acked, self.wake_scheduled = self.acked, [], False
        for future in acked:
            if not future.done():
                future.set_result(None)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.timeout))
            now = self.loop.time()
            with self.lock:
                overdue = [mid for mid, (_, deadline) in self.pending.items() if deadline <= now]
                futures = [self.pending.pop(mid)[0] for mid in overdue]
            for future in futures:
                if not future.done():
                    future.set_exception(TimeoutError("the site broker did not acknowledge the publish"))


@dataclass
class Prepared:
    raw: bytes
    codec: str = "ascii"
    topic: str = ""
    payload: bytes = b""
    error: Hl7Error | None = None


class Listener:
    def __init__(self, settings: Settings, publisher: Publisher | None) -> None:
        self.settings, self.publisher = settings, publisher
        self.rules = SiteRules(ZoneInfo(settings.site_timezone), settings.default_charset,
                               frozenset(settings.hl7_versions), settings.client_id)
        self.counts: dict[str, int] = {"AA": 0, "AE": 0, "AR": 0}
        self.discarded_bytes = 0
        self.pubacks: PubAcks | None = None

    def prepare(self, raw: bytes) -> Prepared:
        """Decode and map one message; never raises (an unexpected fault becomes AE 207)."""
        prepared = Prepared(raw)
        try:
            decoded = decode(raw, self.rules)
            prepared.codec = decoded.codec
            bundle = to_bundle(decoded, self.rules)
        except Hl7Error as exc:
            prepared.error = exc
            return prepared
        except Exception as exc:  # a bug must cost one message an AE, not the connection
            log.exception("mapping failed")
            prepared.error = Hl7Error(207, f"internal error while mapping: {type(exc).__name__}")
            return prepared
        observation = bundle["entry"][1]["resource"]
        device = (observation.get("device") or {}).get("identifier", {}).get("value") or \
            bundle["entry"][0]["resource"]["source"]["name"]
        prepared.topic = f"{self.settings.topic_prefix}/{topic_level(device)}/oru"
        prepared.payload = orjson.dumps({"id": bundle["id"], "device": device, "dataClass": "phi", "resource": bundle})
        return prepared

    async def answer(self, block: bytes, in_order: asyncio.Lock | None = None) -> bytes:
        """One MLLP block -> its reply: map every message, publish, wait for the PUBACKs, ACK.
        `in_order` (one per connection) keeps a connection's publishes in arrival order even when a
        large frame is mapped in a worker thread; the PUBACK waits happen outside it."""
        with tracer().start_as_current_span("mllp block", kind=SpanKind.CONSUMER) as span:
            span.set_attributes({"messaging.system": "mqtt", "messaging.operation.type": "publish",
                                 "messaging.destination.template": f"{self.settings.topic_prefix}/+/oru"})
            async with in_order or asyncio.Lock():
                mapped = await self._map_and_publish(block)
            if isinstance(mapped, bytes):
                annotate(span, outcome="unusable-frame")
                return mapped  # the frame itself was unusable
            frame, prepared, started = mapped
            replies = [await self._outcome(p, puback, error) for p, puback, error in started]
            annotate(span, count=len(started))
        if frame.headers:
            return acks.encode(acks.batch_ack(frame.headers, replies))
        return acks.encode(replies[0] if replies else self._ack(b"", Hl7Error(100, "empty MLLP block", reject=True)),
                           prepared[0].codec if prepared else "ascii")

    async def _map_and_publish(self, block: bytes) -> bytes | tuple[acks.Frame, list[Prepared], list]:
        try:
            frame = acks.unframe(block)
        except Hl7Error as exc:
            return acks.encode(self._ack(b"", exc))
        if frame.discarded:
            self.discarded_bytes += frame.discarded
            log.warning("discarded %d stray bytes before an MLLP start block", frame.discarded)
        if len(block) > BIG_FRAME:
            prepared = await asyncio.get_running_loop().run_in_executor(None, self._prepare_all, frame.messages)
        else:
            prepared = self._prepare_all(frame.messages)
        return frame, prepared, [self._publish(p) for p in prepared]  # all leave before the first wait

    def _prepare_all(self, messages: list[bytes]) -> list[Prepared]:
        return [self.prepare(raw) for raw in messages]

    def _publish(self, prepared: Prepared) -> tuple[Prepared, asyncio.Future | None, Hl7Error | None]:
        """Start the publish now (keeps the order); the outcome is awaited later."""
        if prepared.error:
            return prepared, None, prepared.error
        try:
            if self.pubacks is None:
                if self.publisher is None:
                    raise ConnectionError("no site broker configured")
                self.pubacks = PubAcks(self.publisher, asyncio.get_running_loop(), self.settings.publish_timeout_s)
            return prepared, self.pubacks.publish(prepared.topic, prepared.payload), None
        except (ConnectionError, RuntimeError) as exc:
            return prepared, None, Hl7Error(207, f"not stored, send again: {exc}", reject=True)

    async def _outcome(self, prepared: Prepared, puback: asyncio.Future | None, error: Hl7Error | None) -> list[str]:
        if puback is not None:
            try:
                await puback
            except TimeoutError as exc:
                error = Hl7Error(207, f"not stored, send again: {exc}", reject=True)
        return self._ack(prepared.raw, error)

    def _ack(self, raw: bytes, error: Hl7Error | None) -> list[str]:
        code = error.ack if error else "AA"
        self.counts[code] += 1
        if error:
            log.warning("%s %s: %s", code, error.code, error)
        return acks.ack(raw, code, error)

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Reads frames as they come and writes the replies in order as their PUBACKs arrive. A
        connection holds at most `max_in_flight` frames and `max_in_flight_bytes` unanswered bytes
        (beyond that it stops reading until replies went out)."""
        replies: asyncio.Queue = asyncio.Queue(self.settings.max_in_flight)
        budget, in_order = _Budget(self.settings.max_in_flight_bytes), asyncio.Lock()
        sender = asyncio.ensure_future(self._write_replies(replies, writer, budget))
        try:
            while True:
                block = await self._read_frame(reader)
                if block is None:
                    break
                size = len(block) if isinstance(block, bytes) else 0
                await replies.put((asyncio.ensure_future(self._answer_block(block, in_order)), size))
                await budget.take(size)
        finally:
            await replies.put(None)
            await sender
            writer.close()

    async def _answer_block(self, block: bytes | Hl7Error, in_order: asyncio.Lock) -> bytes:
        if isinstance(block, Hl7Error):
            return acks.encode(self._ack(b"", block))
        return await self.answer(block, in_order)

    async def _write_replies(self, replies: asyncio.Queue, writer: asyncio.StreamWriter, budget: _Budget) -> None:
        """Writes replies in order; replies that are ready together leave in one write."""
        carry = None
        while True:
            item = carry if carry is not None else await replies.get()
            carry, closing = None, item is None
            if closing:
                return
            chunks, sizes = [await self._reply(item[0])], item[1]
            while not replies.empty():
                following = replies.get_nowait()
                if following is None or not following[0].done():
                    carry, closing = following, following is None
                    break
                chunks.append(await self._reply(following[0]))
                sizes += following[1]
            try:
                writer.write(b"".join(acks.VT + chunk + END for chunk in chunks))
                await writer.drain()
            except (ConnectionError, OSError):
                pass  # the sender left; it resends what it has no ACK for
            budget.give(sizes)
            if closing:
                return

    async def _reply(self, task: asyncio.Future) -> bytes:
        try:
            return await task
        except Exception:  # a bug must cost one frame an AE, not the connection
            log.exception("answering a frame failed")
            return acks.encode(self._ack(b"", Hl7Error(207, "internal error while answering")))

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes | Hl7Error | None:
        try:
            return (await reader.readuntil(END))[:-2]
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)
            while True:  # skip the rest of the oversize frame
                try:
                    await reader.readuntil(END)
                    break
                except asyncio.LimitOverrunError as more:
                    await reader.readexactly(more.consumed)
            return Hl7Error(104, f"message exceeds {self.settings.max_message_bytes} bytes", reject=True)
        except ConnectionError:
            return None


class _Budget:
    """Unanswered bytes of one connection; the reader waits while they exceed the limit."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self.freed = limit, 0, asyncio.Event()

    async def take(self, size: int) -> None:
        self.used += size
        while self.used > self.limit:
            self.freed.clear()
            await self.freed.wait()

    def give(self, size: int) -> None:
        self.used -= size
        self.freed.set()


def topic_level(name: str) -> str:
    """A sender or equipment name as one MQTT topic level (3.1.1 section 4.7): `/` would add levels
    outside the broker ACL's `+/oru`, `+` and `#` are wildcards a topic name may not hold, NUL is
    forbidden. The envelope keeps the name as sent."""
    return re.sub(r"[/+#\x00]", "_", name) or "unknown-sender"


def build(settings: Settings | None = None, publisher: Publisher | None = None):
    settings = settings or Settings()
    listener = Listener(settings, publisher)
    router = APIRouter()

    auth = Authenticator(NAME, settings)

    @router.get("/counts", tags=["status"], dependencies=[Depends(auth.require("hl7.read"))])
    def counts() -> dict[str, Any]:
        return {"acks": listener.counts, "discardedBytes": listener.discarded_bytes}

    def health() -> dict[str, Any]:
        connected = listener.publisher is not None and listener.publisher.client.is_connected()
        return {"mllpPort": settings.mllp_port, "brokerConnected": connected, "acks": listener.counts}

    app = create_app(NAME, __doc__.strip().splitlines()[0], router, health)
    app.state.listener = listener
    return app, settings


# Maps one message before the port opens: fhir.resources builds its validators on first use
# (~0.5 s), which would otherwise land on the first real message.
WARM_UP = (b"MSH|^~\\&|WARM-UP||||20260101000000+0000||ORU^R01^ORU_R01|W1|P|2.6\rOBR|1\r"
           b"OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.1.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||F\r")


async def run(app, settings: Settings) -> None:
    listener: Listener = app.state.listener
    if listener.prepare(WARM_UP).error:
        raise RuntimeError("hl7-retrofit cannot map its own warm-up message")
    server = await asyncio.start_server(listener.serve_client, host=settings.host, port=settings.mllp_port,
                                        limit=settings.max_message_bytes)
    web = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                        access_log=False))
    async with server:
        await asyncio.gather(server.serve_forever(), web.serve())


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    publisher = Publisher.for_service(settings)
    app, settings = build(settings, publisher)
    try:
        asyncio.run(run(app, settings))
    finally:
        publisher.close()
