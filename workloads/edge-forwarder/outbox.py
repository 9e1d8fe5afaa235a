"""The durable outbox: SQLite in WAL mode with full sync, one transaction per intake batch.

A message is acknowledged to its producer only after the transaction holding it committed,
and deleted only after the cloud confirmed it committed. `pos` (AUTOINCREMENT, never reused)
is the order of arrival; the forwarder sends in `pos` order, which keeps per-device order.
Refusals (policy, malformed, outbox full, rejected by the cloud) are kept in `refused` so
nothing disappears without a record.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import REAL, Column, Integer, LargeBinary, MetaData, Table, Text

from medplat.service.migrations import migrate_sqlite_file
from medplat.service.settings import private_file

MIGRATIONS = Path(__file__).parent / "migrations"  # Alembic revisions of these tables
metadata = MetaData()
Table("outbox", metadata,
      # INTEGER PRIMARY KEY is SQLite's rowid (never NULL); declared as the pre-migration DDL wrote it
      Column("pos", Integer, primary_key=True, autoincrement=True, nullable=True),
      Column("id", Text, nullable=False, unique=True),
      Column("device", Text, nullable=False),
      Column("data_class", Text, nullable=False),
      Column("body", LargeBinary, nullable=False),
      Column("received_at", REAL, nullable=False),
      sqlite_autoincrement=True)  # positions are never reused: they are the per-site sequence
Table("refused", metadata,
      Column("seq", Integer, primary_key=True, autoincrement=True, nullable=True),
      Column("id", Text),
      Column("device", Text),
      Column("data_class", Text),
      Column("reason", Text, nullable=False),
      Column("detail", Text, nullable=False),
      Column("body", LargeBinary),
      Column("at", REAL, nullable=False),
      sqlite_autoincrement=True)
Table("counters", metadata,
      Column("name", Text, primary_key=True, nullable=True),
      Column("value", Integer, nullable=False))


def migrate_outbox(path: Path) -> str:
    """Schema through Alembic (the foundation's `migrate`); the outbox itself then runs on plain sqlite3."""
    return migrate_sqlite_file(path, "edge-forwarder", MIGRATIONS, metadata)


@dataclass(frozen=True)
class Entry:
    pos: int
    id: str
    device: str
    data_class: str
    body: bytes


@dataclass(frozen=True)
class Refusal:
    id: str | None
    device: str | None
    data_class: str | None
    reason: str  # policy | malformed | outbox-full | rejected-by-cloud
    detail: str
    body: bytes | None = None


@dataclass(frozen=True)
class Stats:
    depth: int
    oldest_age_seconds: float
    used_bytes: int
    refused: dict[str, int]
    sent: int


def connect(path: Path) -> sqlite3.Connection:
    private_file(path)  # queued messages are PHI: 0600 in a 0700 folder
    connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
    connection.execute("PRAGMA journal_size_limit=67108864")
    return connection


class Outbox:
    """One writer connection guarded by a lock; intake and sender share it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        private_file(path)
        migrate_outbox(path)
        self._db = connect(path)
        self._lock = threading.Lock()
        self._page_size = self._db.execute("PRAGMA page_size").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _bump(self, name: str, by: int) -> None:
        if by:
            self._db.execute("INSERT INTO counters(name, value) VALUES (?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, by))

    def append(self, entries: list[tuple[str, str, str, bytes]], refusals: list[Refusal]) -> int:
        """Store (id, device, data_class, body) rows and refusal records in one transaction.

        Returns how many rows were new; a message id already in the outbox is ignored (MQTT
        redelivers what was not acknowledged before a crash).
        """
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO outbox(id, device, data_class, body, received_at) VALUES (?, ?, ?, ?, ?)",
                    [(*entry, now) for entry in entries])
                inserted = self._db.total_changes - before
                self._record_refusals(refusals, now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return inserted

    def _record_refusals(self, refusals: list[Refusal], now: float) -> None:
        if not refusals:
            return
        self._db.executemany(
            "INSERT INTO refused(id, device, data_class, reason, detail, body, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(r.id, r.device, r.data_class, r.reason, r.detail, r.body, now) for r in refusals])
        for reason in {r.reason for r in refusals}:
            self._bump(f"refused:{reason}", sum(1 for r in refusals if r.reason == reason))

    def refuse(self, refusals: list[Refusal]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._record_refusals(refusals, time.time())
            self._db.execute("COMMIT")

    def peek(self, limit: int) -> list[Entry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT pos, id, device, data_class, body FROM outbox ORDER BY pos LIMIT ?", (limit,)).fetchall()
        return [Entry(*row) for row in rows]

    def remove(self, positions: list[int], *, sent: int = 0, refusals: list[Refusal] = ()) -> None:
        """Delete rows the cloud committed (or that were moved to `refused`), atomically."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM outbox WHERE pos = ?", [(p,) for p in positions])
                self._record_refusals(list(refusals), time.time())
                self._bump("sent", sent)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def used_bytes(self) -> int:
        """Bytes of live pages: deleted rows free pages that new rows reuse."""
        with self._lock:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self._page_size

    def stats(self) -> Stats:
        with self._lock:
            depth, oldest = self._db.execute("SELECT count(*), min(received_at) FROM outbox").fetchone()
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return Stats(
            depth=depth,
            oldest_age_seconds=round(time.time() - oldest, 3) if oldest else 0.0,
            used_bytes=self.used_bytes(),
            refused={k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("refused:")},
            sent=counters.get("sent", 0),
        )

    def refusals(self, limit: int = 100) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT id, device, data_class, reason, detail, at FROM refused "
                                    "ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [dict(zip(("id", "device", "dataClass", "reason", "detail", "at"), row)) for row in rows]
