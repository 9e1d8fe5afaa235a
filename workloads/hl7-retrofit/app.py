"""hl7-retrofit service: MLLP listener (python-hl7's asyncio MLLP streams) for ORU^R01 from
legacy monitors; each message becomes one validated FHIR message Bundle published to the site
broker (QoS 1) as an edge-forwarder envelope, and only then acknowledged.

ACK codes: AA once the broker confirmed the publish; AE when the content cannot be mapped
(bad OBX values, unsupported value types) or the broker is unreachable (resend later); AR for
malformed framing, unparseable or unsupported messages and messages over the size limit.
Nothing is published unless the whole message mapped and validated.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from typing import Any

import orjson
import uvicorn
from fastapi import APIRouter, Depends
from hl7.mllp import InvalidBlockError, start_hl7_server

from medplat.service.app import create_app
from medplat.service.auth import Authenticator
from medplat.service.mqtt import Publisher
from medplat.service.settings import ServiceSettings, service_config
from medplat.workloads.hl7_retrofit.mapping import Rejected, message_type, parse, to_bundle

NAME = "hl7-retrofit"
log = logging.getLogger("medplat.hl7-retrofit")
ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "~": "\\R\\", "&": "\\T\\", "\r": " "}


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    port: int = 8080  # health and OpenAPI
    mllp_port: int = 2575
    max_message_bytes: int = 1 << 20
    broker_url: str = "mqtt://127.0.0.1:1883"
    topic_prefix: str = "medplat/devices"
    client_id: str = "medplat-hl7-retrofit"
    publish_timeout_s: float = 10


def ack(original: bytes, code: str, text: str = "") -> bytes:
    """An ACK for `original` (its MSH fields swapped), or a minimal one when it has no MSH."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S")
    fields = original.split(b"\r", 1)[0].decode("utf-8", "replace").split("|") if original.startswith(b"MSH|") else []

    def field(index: int) -> str:
        return fields[index] if len(fields) > index else ""

    control = field(9)
    version = field(11) or "2.6"
    segments = [f"MSH|^~\\&|{field(4) or 'MEDPLAT'}|{field(5) or 'MEDPLAT'}|{field(2)}|{field(3)}|{now}||ACK^R01^ACK|"
                f"{uuid.uuid4().hex[:20]}|P|{version}", f"MSA|{code}|{control}"]
    if code != "AA":
        clean = "".join(ESCAPES.get(c, c) for c in text)  # HL7 escape sequences
        segments.append(f"ERR|||{'207' if code == 'AE' else '200'}^{'Application internal error' if code == 'AE' else 'Unsupported message type'}^HL70357|E||||{clean[:400]}")
    return ("\r".join(segments) + "\r").encode()


class Listener:
    def __init__(self, settings: Settings, publisher: Publisher | None) -> None:
        self.settings, self.publisher = settings, publisher
        self.counts: dict[str, int] = {"AA": 0, "AE": 0, "AR": 0}

    def handle(self, block: bytes) -> bytes:
        """One framed message -> its ACK; publishes only a fully mapped, validated Bundle."""
        try:
            message = parse(block.decode("utf-8"))
            bundle = to_bundle(message, source=self.settings.client_id)
        except UnicodeDecodeError:
            return self._answer(block, "AR", "message is not UTF-8")
        except Rejected as exc:
            return self._answer(block, exc.code, str(exc))
        observation = bundle["entry"][1]["resource"]
        device = (observation.get("device") or {}).get("identifier", {}).get("value") or \
            bundle["entry"][0]["resource"]["source"]["name"]
        envelope = {"id": bundle["id"], "device": device, "dataClass": "phi", "resource": bundle}
        try:
            if self.publisher is None:
                raise ConnectionError("no site broker configured")
            self.publisher.publish(f"{self.settings.topic_prefix}/{device}/oru", orjson.dumps(envelope),
                                   self.settings.publish_timeout_s)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            return self._answer(block, "AE", f"not stored, send again: {exc}")
        log.info("%s %s -> %s", message_type(message), bundle["id"], device)
        return self._answer(block, "AA")

    def _answer(self, block: bytes, code: str, reason: str = "") -> bytes:
        self.counts[code] += 1
        if code != "AA":
            # The OperationOutcome-equivalent for HL7 senders is the ERR segment; it is logged too.
            log.warning("%s: %s", code, reason)
        return ack(block, code, reason)

    async def serve_client(self, reader, writer) -> None:
        try:
            while not reader.at_eof():
                try:
                    block = await reader.readblock()
                except InvalidBlockError:
                    writer.writeblock(self._answer(b"", "AR", "malformed MLLP framing: no start block <VT>"))
                    await writer.drain()
                    continue
                except ValueError:
                    writer.writeblock(self._answer(b"", "AR", f"message exceeds {self.settings.max_message_bytes} bytes"))
                    await writer.drain()
                    continue
                except asyncio.IncompleteReadError:
                    break
                reply = await asyncio.get_running_loop().run_in_executor(None, self.handle, block)
                writer.writeblock(reply)
                await writer.drain()
        finally:
            writer.close()


def build(settings: Settings | None = None, publisher: Publisher | None = None):
    settings = settings or Settings()
    listener = Listener(settings, publisher)
    router = APIRouter()

    auth = Authenticator(NAME, settings)

    @router.get("/counts", tags=["status"], dependencies=[Depends(auth.require("hl7.read"))])
    def counts() -> dict[str, Any]:
        return {"acks": listener.counts}

    def health() -> dict[str, Any]:
        connected = listener.publisher is not None and listener.publisher.client.is_connected()
        return {"mllpPort": settings.mllp_port, "brokerConnected": connected, "acks": listener.counts}

    app = create_app(NAME, __doc__.strip().splitlines()[0], router, health)
    app.state.listener = listener
    return app, settings


async def run(app, settings: Settings) -> None:
    listener: Listener = app.state.listener
    server = await start_hl7_server(listener.serve_client, host=settings.host, port=settings.mllp_port,
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
