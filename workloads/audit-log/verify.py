"""Offline verification of an exported log (or slice) against its signed checkpoints.

Whole log: every leaf hash is recomputed from the entry bytes, the tree is rebuilt with
pymerkle and its root at each checkpoint's size must equal the signed root; indices must
run 1..N without gaps. A slice (start > 1) carries an inclusion proof per entry against the
slice's last checkpoint. Extra trusted checkpoints (e.g. the last one the witness
countersigned) must also be reproduced, which catches a log rolled back behind them.

Only entries covered by a reproduced signed checkpoint are verified: entries after the last
one (a tail whose checkpoint is missing or was deleted) are reported as unverified, never
counted as checked.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
import hashlib

from pymerkle import verify_inclusion
from pymerkle.proof import InclusionProof, InvalidProof

from medplat.workloads.audit_log.note import Checkpoint, NoteError, Verifier
from medplat.workloads.audit_log.tree import LeafListTree

ENTRY = b',"entry":'


@dataclass
class Report:
    entries: int = 0
    first: int = 0
    checkpoints: int = 0
    cosignatures: int = 0
    verified_size: int = 0  # the largest signed checkpoint size the entries reproduced
    problems: list[str] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.first + self.entries - 1 if self.entries else 0

    @property
    def unverified(self) -> tuple[int, int] | None:
        """(first, last) index of entries no reproduced signed checkpoint covers, if any."""
        start = max(self.verified_size + 1, self.first)
        return (start, self.last) if self.entries and start <= self.last else None

    @property
    def ok(self) -> bool:
        return not self.problems and self.checkpoints > 0


def _check_note(note: str, origin: str | None, log_key: Verifier, witness_key: Verifier | None,
                report: Report) -> Checkpoint | None:
    try:
        checkpoint = Checkpoint.parse(note)
        log_key.verify(note)
    except NoteError as exc:
        report.problems.append(f"checkpoint: {exc}")
        return None
    if origin and checkpoint.origin != origin:
        report.problems.append(f"checkpoint of {checkpoint.origin!r}, expected {origin!r}")
        return None
    if witness_key is not None:
        try:
            witness_key.verify(note)
            report.cosignatures += 1
        except NoteError:
            pass
    return checkpoint


def _checkpoint_line(line: bytes, number: int, tree: LeafListTree, expected_index: int | None,
                     pending: list, report: Report, origin, log_key, witness_key) -> None:
    try:
        note = orjson.loads(line)["checkpoint"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        report.problems.append(f"line {number}: malformed checkpoint line")
        return
    checkpoint = _check_note(note, origin, log_key, witness_key, report)
    if checkpoint is None:
        return
    report.checkpoints += 1
    if report.first in (0, 1) and expected_index is not None:
        size = tree.get_size()
        if checkpoint.size != size:
            report.problems.append(f"checkpoint for size {checkpoint.size} where the log has {size} entries")
        elif tree.get_root(size) != checkpoint.root:
            report.problems.append(f"root at size {size} differs from its signed checkpoint: "
                                   "an entry was changed, removed, inserted or reordered")
        else:
            report.verified_size = max(report.verified_size, size)
    else:
        pending.append((checkpoint, number))


def verify_lines(lines: Iterable[bytes], log_key: Verifier, *, witness_key: Verifier | None = None,
                 trusted: Iterable[str] = (), origin: str | None = None, require_cosigned: bool = False) -> Report:
    report = Report()
    tree = LeafListTree()
    expected_index: int | None = None
    pending: list[tuple[Checkpoint, int]] = []  # slice mode: (checkpoint, position of the line)
    slice_proofs: list[tuple[int, bytes, dict]] = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        if line.startswith(b'{"checkpoint"'):
            _checkpoint_line(line, number, tree, expected_index, pending, report, origin, log_key, witness_key)
            continue
        split = line.find(ENTRY)
        if not line.startswith(b'{"index":') or split < 0 or not line.endswith(b"}"):
            report.problems.append(f"line {number}: not an entry line as exported "
                                   '(leaves are hashed over the exact bytes: {"index":N,"entry":{...}})')
            continue
        try:
            head = orjson.loads(line[:split] + b"}")
            index = head["index"]
        except (orjson.JSONDecodeError, KeyError):
            report.problems.append(f"line {number}: malformed entry line")
            continue
        if expected_index is None:
            report.first = expected_index = index
        if index != expected_index:
            report.problems.append(f"entry {index} where {expected_index} was expected (gap or reorder)")
            expected_index = index
        leaf = hashlib.sha256(b"\x00" + line[split + len(ENTRY):-1]).digest()  # the exact stored bytes
        if report.first == 1:
            tree._store_leaf(None, leaf)
        else:
            slice_proofs.append((index, leaf, head.get("proof") or {}))
        report.entries += 1
        expected_index += 1
    if report.first > 1:
        _verify_slice(slice_proofs, pending, report)
    size = tree.get_size() if report.first == 1 else (expected_index or 1) - 1
    for note in trusted:
        checkpoint = _check_note(note, origin, log_key, witness_key, report)
        if checkpoint is None:
            continue
        if checkpoint.size > size:
            report.problems.append(f"trusted checkpoint at size {checkpoint.size} but the log has {size} "
                                   "entries: rolled back")
        elif report.first == 1 and checkpoint.size and tree.get_root(checkpoint.size) != checkpoint.root:
            report.problems.append(f"trusted checkpoint at size {checkpoint.size} is not reproduced: history changed")
        elif report.first == 1:
            report.verified_size = max(report.verified_size, checkpoint.size)
    if require_cosigned and report.cosignatures == 0:
        report.problems.append("no checkpoint carries the witness's cosignature")
    if report.checkpoints == 0 and not report.problems:
        report.problems.append("no signed checkpoint covers the entries")
    return report


def _verify_slice(proofs: list[tuple[int, bytes, dict]], pending: list[tuple[Checkpoint, int]], report: Report) -> None:
    if not pending:
        return
    last = max((c for c, _ in pending), key=lambda c: c.size)
    failed = False
    for index, leaf, proof in proofs:
        if index > last.size:
            continue  # beyond the checkpoint: reported as the unverified tail
        try:
            verify_inclusion(leaf, last.root, InclusionProof.deserialize(proof), index=index, size=last.size)
        except (InvalidProof, KeyError, TypeError, ValueError) as exc:
            report.problems.append(f"entry {index}: not included in checkpoint {last.size} ({exc})")
            failed = True
    if not failed:
        report.verified_size = last.size


def verify_search(response: dict, log_key: Verifier, *, patient: str | None = None, agent: str | None = None,
                  origin: str | None = None) -> list[str]:
    """Problems with a search response (empty when every result is proven): the checkpoint is
    signed, each entry is included in it, and each entry's own fields match the query."""
    from medplat.workloads.audit_log.log import canonical, indexed

    report = Report()
    checkpoint = _check_note(response.get("checkpoint", ""), origin, log_key, None, report)
    if checkpoint is None:
        return report.problems
    for item in response.get("entries") or []:
        index, event = item.get("index"), item.get("event") or {}
        leaf = hashlib.sha256(b"\x00" + canonical(event)).digest()
        try:
            verify_inclusion(leaf, checkpoint.root, InclusionProof.deserialize(item.get("proof") or {}),
                             index=index, size=checkpoint.size)
        except (InvalidProof, KeyError, TypeError, ValueError) as exc:
            report.problems.append(f"entry {index}: not included in checkpoint {checkpoint.size} ({exc})")
            continue
        fields = indexed(event)
        if patient and fields["patient"] != patient or agent and fields["agent"] != agent:
            report.problems.append(f"entry {index}: its logged content does not match the query")
    return report.problems
