"""Store-and-forward publishing to the site broker for the device adapters.

`submit` commits messages to a bounded SQLite outbox (WAL, synchronous=FULL) before it returns;
a sender thread publishes them in order with QoS 1 and deletes a message only after the broker's
PUBACK. While the broker is unreachable the outbox fills (the adapter reports not-ready); when it
is full `submit` raises `OutboxFull` and the refusal is counted - never a silent drop. Delivery
is at least once: a message whose PUBACK was lost is sent again, so consumers dedupe by the
envelope id.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import REAL, Column, Integer, LargeBinary, MetaData, Table, Text

from medplat.service.migrations import migrate_sqlite_file
from medplat.service.mqtt import make_client
from medplat.service.settings import private_file

log = logging.getLogger("medplat.durable-publisher")
MIGRATIONS = Path(__file__).parent / "publisher_migrations"  # Alembic revisions of the queue
metadata = MetaData()
Table("outbox", metadata,
      # INTEGER PRIMARY KEY is SQLite's rowid (never NULL); declared as the pre-migration DDL wrote it
      Column("seq", Integer, primary_key=True, autoincrement=True, nullable=True),
      Column("topic", Text, nullable=False),
      Column("payload", LargeBinary, nullable=False),
      Column("queued_at", REAL, nullable=False),
      sqlite_autoincrement=True)


def migrate_queue(path: Path) -> str:
    """Schema through Alembic (the foundation's `migrate`); the queue itself then runs on plain sqlite3."""
    return migrate_sqlite_file(path, "durable-publisher", MIGRATIONS, metadata)


class OutboxFull(RuntimeError):
    """The outbox holds `max_messages`: the producer must keep or refuse the message itself."""


class DurablePublisher:
    def __init__(self, url: str, client_id: str, path: Path, *, max_messages: int = 1_000_000,
                 batch: int = 500, ack_timeout_s: float = 10.0, ready_backlog: int = 10_000,
                 ca: Path | None = None, password_file: Path | None = None) -> None:
        private_file(path)  # queued messages are PHI: 0600 in a 0700 folder
        self.max_messages, self.batch, self.ack_timeout_s = max_messages, batch, ack_timeout_s
        self.ready_backlog = ready_backlog
        self.refused = self.published = 0
        migrate_queue(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.Lock()
        self._backlog = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        self._wake, self._stop = threading.Event(), threading.Event()
        self.client, host, port = make_client(url, client_id, ca=ca, password_file=password_file)
        self.client.max_inflight_messages_set(batch)
        self.client.reconnect_delay_set(1, 10)
        self.client.connect_async(host, port)
        self.client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="durable-publisher", daemon=True)
        self._sender.start()

    # -- producer side ---------------------------------------------------------------------
    def submit(self, topic: str, payload: bytes) -> None:
        self.submit_many([(topic, payload)])

    def submit_many(self, messages: Iterable[tuple[str, bytes]]) -> None:
        """Commit all messages in one transaction (all or none), then wake the sender."""
        rows = [(topic, payload, time.time()) for topic, payload in messages]
        if not rows:
            return
        with self._lock:
            if self._backlog + len(rows) > self.max_messages:
                self.refused += len(rows)
                raise OutboxFull(f"outbox holds {self._backlog} of {self.max_messages} messages")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO outbox (topic, payload, queued_at) VALUES (?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._backlog += len(rows)
        self._wake.set()

    # -- sender side ---------------------------------------------------------------------------
    def _pending(self) -> list[tuple[int, str, bytes]]:
        with self._lock:
            return self._db.execute("SELECT seq, topic, payload FROM outbox ORDER BY seq LIMIT ?",
                                    (self.batch,)).fetchall()

    def _acknowledged(self, seqs: list[int]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            self._db.execute("COMMIT")
            self._backlog -= len(seqs)
        self.published += len(seqs)

    def _publish_batch(self, rows: list[tuple[int, str, bytes]]) -> list[int]:
        """Publish in order; the acknowledged prefix is returned (the rest is sent again later)."""
        sent = [(seq, self.client.publish(topic, payload, qos=1)) for seq, topic, payload in rows]
        done = []
        deadline = time.monotonic() + self.ack_timeout_s
        for seq, info in sent:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):  # not queued: the connection dropped
                break
            if not info.is_published():
                break
            done.append(seq)
        return done

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            if not self.client.is_connected():
                self._stop.wait(0.2)
                continue
            rows = self._pending()
            if not rows:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            done = self._publish_batch(rows)
            if done:
                self._acknowledged(done)
            if len(done) < len(rows):
                self._stop.wait(0.5)  # broker gone or slow: the unacknowledged rest stays queued

    # -- status ----------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    @property
    def backlog(self) -> int:
        return self._backlog

    @property
    def ready(self) -> bool:
        """Not ready while the broker is unreachable or the backlog is above its mark."""
        return self.connected and self._backlog <= self.ready_backlog

    def oldest_age_s(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT min(queued_at) FROM outbox").fetchone()
        return round(time.time() - row[0], 3) if row and row[0] else 0.0

    def status(self) -> dict:
        return {"brokerConnected": self.connected, "backlog": self._backlog, "oldestQueuedS": self.oldest_age_s(),
                "published": self.published, "refused": self.refused, "maxMessages": self.max_messages}

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (tests, graceful shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._backlog and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        return self._backlog == 0

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._sender.join(timeout=self.ack_timeout_s + 1)
        self.client.disconnect()
        self.client.loop_stop()
        with self._lock:
            self._db.close()
