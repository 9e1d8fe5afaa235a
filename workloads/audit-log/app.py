"""audit-log service: append FHIR AuditEvents, signed checkpoints, proofs, search, witness.

Every site runs one (origin `<site>.medplat/audit`); the EU zone's instance also witnesses
the edge logs: it mirrors their entries, recomputes their checkpoints and countersigns them
(C2SP tlog-cosignature). Edge instances ship to it when `WITNESS_URL` is set.

Access: appending needs a service identity (a workload's client certificate over mutual TLS,
or the bearer scope `audit.write`); reading, searching, proofs and export need `audit.read`
(auditors); witnessing needs an edge site's certificate or `audit.witness`. Public: the
signed checkpoint and the verifier keys, which exist to be gossiped. One event may be at
most `MAX_EVENT_BYTES` (1 MiB) of JSON, a request `MAX_BODY_BYTES` (10 MiB).
"""
from __future__ import annotations

import datetime
import logging
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field

from medplat.service.access import Peers, either, public
from medplat.service.app import create_app
from medplat.service.auth import Authenticator
from medplat.service.db import make_engine
from medplat.service.migrations import migrate
from medplat.service.fhir import FhirError
from medplat.service.settings import ServiceSettings, service_config
from medplat.service.backoff import Backoff
from medplat.service.tls import client_context, serve
from medplat.workloads.audit_log.log import AuditLog, LogError, Witness
from medplat.workloads.audit_log.note import Signer, Verifier
from medplat.workloads.audit_log.tree import metadata

NAME = "audit-log"
log = logging.getLogger("medplat.audit-log")


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    port: int = 8090
    origin: str = "medplat.local/audit"
    signing_key: Path | None = None  # PRIVATE+KEY+... file; default: generated in data_dir
    trusted_logs: dict[str, str] = {}  # witness: origin -> verifier key of each edge log
    witness_url: str | None = None  # edge: the EU audit log to ship to
    witness_key: str | None = None  # edge: the witness's verifier key, to check its cosignatures
    ship_interval_s: float = Field(5.0, gt=0)
    cloud_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    # One event's JSON at most; a batch audit record names up to a batch's worth of entities (ingest: 5,000).
    max_event_bytes: int = Field(1024 * 1024, ge=1024)


class AppendRequest(BaseModel):
    events: list[dict[str, Any]] = Field(min_length=1, max_length=10_000)


class WitnessRequest(BaseModel):
    note: str
    start: int = Field(ge=1)
    entries: list[str]


def load_signer(settings: Settings) -> Signer:
    path = settings.signing_key or settings.data_dir / "audit-log.key"
    if path.exists():
        return Signer.from_text(path.read_text(encoding="utf-8"))
    if settings.signing_key:
        raise SystemExit(f"medplat: error: signing key {path} does not exist")
    signer = Signer.generate(settings.origin.replace("/", "-"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(signer.private_text() + "\n")
    return signer


def _first_null(value: Any, where: str) -> str | None:
    """FHIR JSON never carries null (R4 JSON representation: absent elements are omitted)."""
    if value is None:
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _first_null(item, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]")
        if found:
            return found
    return None


def _check_event(event: Any, index: int, max_bytes: int) -> None:
    where = f"events[{index}]"
    try:
        size = len(orjson.dumps(event))
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        raise FhirError(422, f"{where}: {exc}", code="invalid", expression=[where]) from None
    if size > max_bytes:
        raise FhirError(413, f"{where} exceeds {max_bytes} bytes", code="too-costly", expression=[where])
    null = _first_null(event, where)
    if null:
        raise FhirError(422, f"{null}: null is not allowed in FHIR JSON", code="invalid", expression=[null])


def _fail(exc: LogError) -> FhirError:
    return FhirError(exc.status, str(exc), code=exc.code, expression=[exc.where] if exc.where else None)


class Shipper:
    """Edge side: ship new entries and the latest checkpoint to the witness, keep its cosignature."""

    def __init__(self, audit: AuditLog, settings: Settings) -> None:
        self.audit, self.url = audit, settings.witness_url.rstrip("/")
        self.witness = Verifier.from_text(settings.witness_key) if settings.witness_key else None
        context = client_context(settings.cloud_ca, settings.client_cert, settings.client_key)
        self.client = httpx.Client(verify=context, timeout=60)
        self.backoff, self.interval = Backoff(1, 60), settings.ship_interval_s
        self._stop = threading.Event()
        self.last_error = ""

    def ship_once(self) -> bool:
        latest = self.audit.latest_checkpoint()
        witnessed = self._witnessed_size()
        if latest["size"] <= witnessed:
            return True
        shipped = self.audit.entry_texts(witnessed + 1, latest["size"])
        response = self.client.post(f"{self.url}/witness", json={"note": latest["note"], "start": witnessed + 1,
                                                                 "entries": shipped})
        if response.status_code != 200:
            self.last_error = f"witness answered {response.status_code}: {response.text[:300]}"
            log.error(self.last_error)
            return False
        cosigned = response.json()["cosigned"]
        if self.witness is not None:
            self.witness.verify(cosigned)
        self.audit.record_cosignature(latest["size"], cosigned)
        self.last_error = ""
        return True

    def _witnessed_size(self) -> int:
        from sqlalchemy import func, select

        from medplat.workloads.audit_log.log import checkpoints

        with self.audit.engine.connect() as connection:
            return connection.execute(select(func.coalesce(func.max(checkpoints.c.size), 0)).where(
                checkpoints.c.log == self.audit.log, checkpoints.c.cosigned.is_not(None))).scalar_one()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self.ship_once()
            except (httpx.HTTPError, ValueError) as exc:
                ok, self.last_error = False, f"witness unreachable: {exc}"
            self._stop.wait(self.interval if ok else self.backoff.next_delay())
            if ok:
                self.backoff.reset()

    def start(self) -> None:
        threading.Thread(target=self.run, name="audit-shipper", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def build(settings: Settings | None = None):
    settings = settings or Settings()
    engine = make_engine(settings.resolved_database_url("audit_log"))
    migrate(engine, NAME, Path(__file__).parent / "migrations", metadata)
    signer = load_signer(settings)
    audit = AuditLog(engine, settings.origin, signer)
    witness = Witness(engine, signer, {origin: Verifier.from_text(key) for origin, key in settings.trusted_logs.items()})
    peers, auth = Peers(settings), Authenticator(NAME, settings)
    writer = either(peers.require(kind="workload"), auth.require("audit.write"))
    auditor = auth.require("audit.read")
    gossip = public("signed checkpoints and verifier keys exist to be gossiped; no PHI")
    router = APIRouter()

    @router.post("/entries", tags=["log"], dependencies=[Depends(writer)])
    def append(body: AppendRequest) -> dict[str, Any]:
        """Append a batch of AuditEvents (all or nothing) and return the new signed checkpoint."""
        for index, event in enumerate(body.events):
            _check_event(event, index, settings.max_event_bytes)
        try:
            first, size, note = audit.append(body.events)
        except LogError as exc:
            raise _fail(exc) from None
        return {"first": first, "size": size, "checkpoint": note}

    @router.get("/entries/{index}", tags=["log"], dependencies=[Depends(auditor)])
    def get_entry(index: int) -> dict[str, Any]:
        try:
            return audit.entry(index)
        except LogError as exc:
            raise _fail(exc) from None

    @router.get("/entries", tags=["log"], dependencies=[Depends(auditor)])
    def search(patient: str | None = None, agent: str | None = None, since: datetime.datetime | None = None,
               until: datetime.datetime | None = None, limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        return audit.search_proven(patient, agent, since, until, limit)

    @router.get("/proofs/inclusion", tags=["proofs"], dependencies=[Depends(auditor)])
    def inclusion(index: int, size: int | None = None) -> dict[str, Any]:
        try:
            return audit.inclusion(index, size)
        except LogError as exc:
            raise _fail(exc) from None

    @router.get("/proofs/consistency", tags=["proofs"], dependencies=[Depends(auditor)])
    def consistency(prior: int = Query(alias="from"), later: int | None = Query(None, alias="to")) -> dict[str, Any]:
        try:
            return audit.consistency(prior, later)
        except LogError as exc:
            raise _fail(exc) from None

    @router.get("/checkpoint", tags=["log"], dependencies=[gossip])
    def checkpoint() -> dict[str, Any]:
        return audit.latest_checkpoint()

    @router.get("/verifier", tags=["log"], response_class=PlainTextResponse, dependencies=[gossip])
    def verifier() -> str:
        return signer.verifier().text() + "\n"

    @router.get("/witness/verifier", tags=["witness"], response_class=PlainTextResponse, dependencies=[gossip])
    def witness_verifier() -> str:
        return Verifier(signer.name, signer.public, kind=0x04).text() + "\n"

    @router.get("/export", tags=["log"], dependencies=[Depends(auditor)])
    def export(start: int = Query(1, ge=1), end: int | None = Query(None, ge=1)) -> StreamingResponse:
        """The log (or a slice) as JSON lines with its checkpoints, for `medplat audit verify`."""
        return StreamingResponse(audit.export(start, end), media_type="application/x-ndjson")

    @router.post("/witness", tags=["witness"],
                 dependencies=[Depends(either(peers.require(kind="site"), auth.require("audit.witness")))])
    def witness_endpoint(body: WitnessRequest, request: Request) -> dict[str, Any]:
        """Mirror an edge log's new entries and countersign its checkpoint if they reproduce it."""
        try:
            return {"cosigned": witness.witness(body.note, body.start, body.entries)}
        except LogError as exc:
            raise _fail(exc) from None

    def health() -> dict[str, Any]:
        return {"origin": settings.origin, "size": audit.size, "database": engine.dialect.name}

    app = create_app(NAME, __doc__.strip().splitlines()[0], router, health, settings=settings)
    app.state.audit, app.state.witness, app.state.settings, app.state.auth = audit, witness, settings, auth
    app.state.shipper = Shipper(audit, settings) if settings.witness_url else None
    return app, settings


def main() -> None:
    app, settings = build()
    if app.state.shipper:
        app.state.shipper.start()
    serve(app, settings)
