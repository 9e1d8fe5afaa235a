"""The audit log: FHIR AuditEvents appended in batches, signed checkpoints, proofs, search,
and the witness side that mirrors edge logs and countersigns their checkpoints."""
from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
from fhir.resources.R4B.auditevent import AuditEvent
from pydantic import ValidationError
from sqlalchemy import BigInteger, Column, DateTime, Engine, String, Table, Text, insert, select

from medplat.workloads.audit_log.note import Checkpoint, NoteError, Signer, Verifier
from medplat.workloads.audit_log.tree import SqlTree, entries, metadata

checkpoints = Table(
    "audit_checkpoints", metadata,
    Column("log", String(200), primary_key=True),
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("note", Text, nullable=False),
    Column("cosigned", Text),  # the witness's countersigned note, once it answered
    Column("created", DateTime(timezone=True), nullable=False),
)
LOCAL = "local"


class LogError(ValueError):
    """A request the log must refuse; `status` is the HTTP status, `where` the FHIRPath."""

    def __init__(self, status: int, message: str, where: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.where, self.code = status, where, code


def canonical(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def search_fields(event: dict[str, Any]) -> dict[str, Any]:
    """Patient (BALP: an entity whose what is a Patient reference), requesting agent, time."""
    patient = next((e["what"]["reference"] for e in event.get("entity", [])
                    if str(e.get("what", {}).get("reference", "")).startswith("Patient/")), None)
    agents = event.get("agent", [])
    who = next((a.get("who", {}) for a in agents if a.get("requestor")), agents[0].get("who", {}) if agents else {})
    agent = who.get("reference") or who.get("identifier", {}).get("value")
    recorded = datetime.datetime.fromisoformat(event["recorded"].replace("Z", "+00:00"))
    return {"patient": patient, "agent": agent, "recorded": recorded}


def indexed(event: dict[str, Any]) -> dict[str, Any]:
    """The search fields as JSON (what a client compares against its query)."""
    fields = search_fields(event)
    return {**fields, "recorded": fields["recorded"].isoformat()}


def validate_events(events: list[Any]) -> list[dict[str, Any]]:
    if not events:
        raise LogError(400, "no events")
    for index, event in enumerate(events):
        if not isinstance(event, dict) or event.get("resourceType") != "AuditEvent":
            raise LogError(422, f"events[{index}]: not an AuditEvent", f"events[{index}].resourceType", "invalid")
        try:
            AuditEvent.model_validate(event)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise LogError(422, f"events[{index}].{field}: {first['msg']}", f"events[{index}].{field}",
                           "invalid") from None
    return events


@dataclass
class AuditLog:
    engine: Engine
    origin: str
    signer: Signer
    log: str = LOCAL

    def __post_init__(self) -> None:
        self.tree = SqlTree(self.engine, self.log)
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.tree.get_size()

    def append(self, events: list[dict[str, Any]]) -> tuple[int, int, str]:
        """Append a validated batch; returns (first index, new size, signed checkpoint)."""
        validate_events(events)
        rows = [{"entry": canonical(event), **search_fields(event)} for event in events]
        with self._lock:
            first = self.size + 1
            size = self.tree.append_rows(rows)
            note = self.checkpoint(size)
        return first, size, note

    def checkpoint(self, size: int | None = None) -> str:
        size = self.size if size is None else size
        with self.engine.connect() as connection:
            existing = connection.execute(select(checkpoints.c.note).where(
                checkpoints.c.log == self.log, checkpoints.c.size == size)).scalar_one_or_none()
        if existing:
            return existing
        root = self.tree.get_root(size) if size else self.tree.hash_empty()
        note = self.signer.sign_note(Checkpoint(self.origin, size, root).text())
        with self.engine.begin() as connection:
            connection.execute(insert(checkpoints).values(log=self.log, size=size, note=note,
                                                          created=datetime.datetime.now(datetime.timezone.utc)))
        return note

    def latest_checkpoint(self) -> dict[str, Any]:
        with self.engine.connect() as connection:
            row = connection.execute(select(checkpoints).where(checkpoints.c.log == self.log)
                                     .order_by(checkpoints.c.size.desc()).limit(1)).mappings().first()
        if row is None:
            return {"size": 0, "note": self.checkpoint(0), "cosigned": None}
        return {"size": row["size"], "note": row["note"], "cosigned": row["cosigned"]}

    def record_cosignature(self, size: int, cosigned: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(checkpoints.update().where(checkpoints.c.log == self.log, checkpoints.c.size == size)
                               .values(cosigned=cosigned))

    def entry(self, index: int) -> dict[str, Any]:
        with self.engine.connect() as connection:
            row = connection.execute(select(entries.c.idx, entries.c.entry, entries.c.leaf_hash).where(
                entries.c.log == self.log, entries.c.idx == index)).first()
        if row is None:
            raise LogError(404, f"no entry {index} (log size {self.size})")
        return {"index": row.idx, "leafHash": row.leaf_hash.hex(), "event": orjson.loads(row.entry)}

    def search(self, patient: str | None, agent: str | None, since: datetime.datetime | None,
               until: datetime.datetime | None, limit: int) -> list[dict[str, Any]]:
        query = select(entries.c.idx, entries.c.entry).where(entries.c.log == self.log)
        if patient:
            query = query.where(entries.c.patient == patient)
        if agent:
            query = query.where(entries.c.agent == agent)
        if since:
            query = query.where(entries.c.recorded >= since)
        if until:
            query = query.where(entries.c.recorded < until)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(entries.c.idx).limit(limit)).all()
        return [{"index": row.idx, "event": orjson.loads(row.entry)} for row in rows]

    def search_proven(self, patient: str | None, agent: str | None, since: datetime.datetime | None,
                      until: datetime.datetime | None, limit: int) -> dict[str, Any]:
        """Search results a client can check: each entry with its inclusion proof against the
        signed checkpoint returned alongside, and the indexed fields recomputed from the logged
        entry itself (the search columns are derived from it, and it is what the tree covers).
        Completeness is not proven here: `medplat audit search` over a verified export is."""
        with self._lock:
            note = self.checkpoint()
            size = Checkpoint.parse(note).size
            found = [e for e in self.search(patient, agent, since, until, limit) if e["index"] <= size]
            for item in found:
                item["indexed"] = indexed(item["event"])
                item["proof"] = self.tree.prove_inclusion(item["index"], size).serialize()
        return {"entries": found, "checkpoint": note, "size": size}

    def inclusion(self, index: int, size: int | None) -> dict[str, Any]:
        size = size or self.size
        if not 0 < index <= size <= self.size:
            raise LogError(400, f"need 0 < index <= size <= {self.size}")
        return self.tree.prove_inclusion(index, size).serialize()

    def consistency(self, prior: int, later: int | None) -> dict[str, Any]:
        later = later or self.size
        if not 0 < prior <= later <= self.size:
            raise LogError(400, f"need 0 < from <= to <= {self.size}")
        return self.tree.prove_consistency(prior, later).serialize()

    def entry_texts(self, start: int, end: int) -> list[str]:
        """The exact entry bytes (as text) of indices start..end, for shipping to the witness."""
        with self.engine.connect() as connection:
            return [row.entry.decode() for row in connection.execute(
                select(entries.c.entry).where(entries.c.log == self.log, entries.c.idx >= start,
                                              entries.c.idx <= end).order_by(entries.c.idx))]

    def export(self, start: int = 1, end: int | None = None):
        """JSON lines: {"index", ["proof",] "entry": <the event>} in order, each signed checkpoint
        ({"checkpoint": note}) right after the entry at its size."""
        whole = end is None
        end = end or self.size
        with self.engine.connect() as connection:
            # The whole log carries every checkpoint, including any past the last stored entry
            # (entries lost or deleted): the verifier must see them to notice.
            bound = checkpoints.c.size >= start if whole else (checkpoints.c.size >= start) & (checkpoints.c.size <= end)
            stored = connection.execute(select(checkpoints.c.size, checkpoints.c.cosigned, checkpoints.c.note).where(
                checkpoints.c.log == self.log, bound)).all()
            notes = {row.size: row.cosigned or row.note for row in stored}  # a cosigned note keeps the log's line
            proof_size = max(notes) if start > 1 and notes else None
            if start > 1:  # a slice: inclusion proofs against its last checkpoint replace the prefix
                end = proof_size or start - 1
            result = connection.execution_options(yield_per=10_000).execute(
                select(entries.c.idx, entries.c.entry).where(entries.c.log == self.log, entries.c.idx >= start,
                                                             entries.c.idx <= end).order_by(entries.c.idx))
            for row in result:
                # The entry's exact bytes are spliced in (they are canonical JSON): the
                # verifier hashes them as they stand, without parsing or re-encoding.
                head = {"index": row.idx}
                if proof_size:
                    head["proof"] = self.tree.prove_inclusion(row.idx, proof_size).serialize()
                yield orjson.dumps(head)[:-1] + b',"entry":' + row.entry + b"}\n"
                if row.idx in notes:
                    yield orjson.dumps({"checkpoint": notes.pop(row.idx)}) + b"\n"
            for size in sorted(notes):  # checkpoints past the last stored entry: the log lost entries
                yield orjson.dumps({"checkpoint": notes[size]}) + b"\n"


class Witness:
    """EU side: mirror each trusted edge log and countersign checkpoints it can reproduce.

    The edge ships the entries after what the mirror holds plus its signed checkpoint; the
    witness appends them to the origin's mirror, recomputes the root at the checkpoint size
    and cosigns only if it matches. A checkpoint smaller than the last witnessed one (roll
    back) or with a different root (rewritten history) is refused and never cosigned.
    """

    def __init__(self, engine: Engine, signer: Signer, trusted: dict[str, Verifier]) -> None:
        self.engine, self.signer, self.trusted = engine, signer, trusted
        self._mirrors: dict[str, SqlTree] = {}
        self._lock = threading.Lock()

    def mirror(self, origin: str) -> SqlTree:
        if origin not in self._mirrors:
            self._mirrors[origin] = SqlTree(self.engine, f"mirror:{origin}")
        return self._mirrors[origin]

    def witness(self, note: str, start: int, shipped: list[str]) -> str:
        try:
            checkpoint = Checkpoint.parse(note)
        except NoteError as exc:
            raise LogError(400, f"checkpoint: {exc}") from None
        verifier = self.trusted.get(checkpoint.origin)
        if verifier is None:
            raise LogError(403, f"origin {checkpoint.origin!r} is not a trusted log", code="forbidden")
        try:
            verifier.verify(note)
        except NoteError as exc:
            raise LogError(403, f"checkpoint signature: {exc}", code="security") from None
        with self._lock:
            mirror = self.mirror(checkpoint.origin)
            if checkpoint.size < mirror.get_size():
                raise LogError(409, f"roll-back: checkpoint size {checkpoint.size} is below the "
                                    f"{mirror.get_size()} entries already witnessed", code="conflict")
            if start != mirror.get_size() + 1:
                raise LogError(409, f"entries must start at {mirror.get_size() + 1}", code="conflict")
            if mirror.get_size() + len(shipped) != checkpoint.size:
                raise LogError(400, f"{len(shipped)} entries do not reach checkpoint size {checkpoint.size}")
            rows = [{"entry": entry.encode(), **search_fields(orjson.loads(entry))} for entry in shipped]
            previous = mirror.get_size()
            if rows:
                mirror.append_rows(rows)
            root = mirror.get_root(checkpoint.size) if checkpoint.size else mirror.hash_empty()
            if root != checkpoint.root:
                mirror.truncate(previous)  # what was shipped is not the history that was signed
                raise LogError(409, f"inconsistent: the entries do not produce the root of checkpoint "
                                    f"{checkpoint.size}; the log's history changed", code="conflict")
        return self.signer.cosign(note, int(time.time()))
