"""The log's Merkle tree: pymerkle's RFC 6962 hashing and proofs over our SQL storage.

pymerkle (leaf = H(0x00 || entry), node = H(0x01 || left || right), SHA-256) computes roots
and inclusion/consistency proofs; this backend stores each leaf hash with its entry bytes in
SQLite or PostgreSQL. Several logs share the table: the site's own ("local") and, in the EU
zone, one mirror per edge origin.
"""
from __future__ import annotations

import hashlib

from pymerkle import BaseMerkleTree
from sqlalchemy import BigInteger, Column, DateTime, Index, LargeBinary, MetaData, String, Table, func, insert, select
from sqlalchemy.engine import Engine

metadata = MetaData()
entries = Table(
    "audit_entries", metadata,
    Column("log", String(200), primary_key=True),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),  # 1-based, as pymerkle counts
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("entry", LargeBinary, nullable=False),  # the exact bytes hashed into the leaf
    Column("patient", String(256)),
    Column("agent", String(256)),
    Column("recorded", DateTime(timezone=True)),
    Index("audit_entries_patient", "log", "patient"),
    Index("audit_entries_agent", "log", "agent"),
    Index("audit_entries_recorded", "log", "recorded"),
)


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


class SqlTree(BaseMerkleTree):
    """Append-only; one writer per log (the service runs one replica per site)."""

    def __init__(self, engine: Engine, log: str = "local") -> None:
        super().__init__("sha256")
        self.engine, self.log = engine, log
        with engine.connect() as connection:
            self._size = connection.execute(
                select(func.coalesce(func.max(entries.c.idx), 0)).where(entries.c.log == log)).scalar_one()

    def append_rows(self, rows: list[dict]) -> int:
        """Append entries (dicts with `entry` bytes and search fields) in one transaction."""
        with self.lock:
            start = self._size
            values = [{**row, "log": self.log, "idx": start + i + 1, "leaf_hash": leaf_hash(row["entry"])}
                      for i, row in enumerate(rows)]
            with self.engine.begin() as connection:
                connection.execute(insert(entries), values)
            self._size = start + len(values)
            return self._size

    def truncate(self, size: int) -> None:
        """Drop entries after `size` (only for a witness refusing an unverified shipment)."""
        with self.lock:
            with self.engine.begin() as connection:
                connection.execute(entries.delete().where(entries.c.log == self.log, entries.c.idx > size))
            self._size = size
            self.cache_clear()  # cached subroots may cover the dropped leaves

    # pymerkle's storage interface -------------------------------------------------------
    def _encode_entry(self, data: bytes) -> bytes:
        return data

    def _store_leaf(self, data: bytes, digest: bytes) -> int:
        return self.append_rows([{"entry": data}])

    def _get_leaf(self, index: int) -> bytes:
        with self.engine.connect() as connection:
            return connection.execute(select(entries.c.leaf_hash).where(
                entries.c.log == self.log, entries.c.idx == index)).scalar_one()

    def _get_leaves(self, offset: int, width: int) -> list[bytes]:
        with self.engine.connect() as connection:
            return list(connection.execute(select(entries.c.leaf_hash).where(
                entries.c.log == self.log, entries.c.idx > offset, entries.c.idx <= offset + width,
            ).order_by(entries.c.idx)).scalars())

    def _get_size(self) -> int:
        return self._size


class LeafListTree(BaseMerkleTree):
    """pymerkle over a plain list of leaf hashes: the offline verifier hashes the entries
    itself (one SHA-256 each) and lets pymerkle compute roots and check proofs."""

    def __init__(self) -> None:
        super().__init__("sha256")
        self.leaves: list[bytes] = []

    def _encode_entry(self, data: bytes) -> bytes:
        return data

    def _store_leaf(self, data, digest: bytes) -> int:
        self.leaves.append(digest)
        return len(self.leaves)

    def _get_leaf(self, index: int) -> bytes:
        return self.leaves[index - 1]

    def _get_leaves(self, offset: int, width: int) -> list[bytes]:
        return self.leaves[offset:offset + width]

    def _get_size(self) -> int:
        return len(self.leaves)
