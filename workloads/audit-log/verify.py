"""Offline verification of an exported log (or slice) against its signed checkpoints.

Whole log: every leaf hash is recomputed from the entry bytes, the tree is rebuilt with
pymerkle and its root at each checkpoint's size must equal the signed root; indices must
run 1..N without gaps. A slice (start > 1) carries an inclusion proof per entry against the
slice's last checkpoint. Extra trusted checkpoints (e.g. the last one the witness
countersigned) must also be reproduced, which catches a log rolled back behind them.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
from pymerkle import InmemoryTree, verify_inclusion
from pymerkle.proof import InclusionProof, InvalidProof

from medplat.workloads.audit_log.note import Checkpoint, NoteError, Verifier
from medplat.workloads.audit_log.tree import leaf_hash


@dataclass
class Report:
    entries: int = 0
    first: int = 0
    checkpoints: int = 0
    cosignatures: int = 0
    problems: list[str] = field(default_factory=list)

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


def verify_lines(lines: Iterable[bytes], log_key: Verifier, *, witness_key: Verifier | None = None,
                 trusted: Iterable[str] = (), origin: str | None = None, require_cosigned: bool = False) -> Report:
    report = Report()
    tree = InmemoryTree("sha256")
    expected_index: int | None = None
    pending: list[tuple[Checkpoint, int]] = []  # slice mode: (checkpoint, position of the line)
    slice_proofs: list[tuple[int, bytes, dict]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            report.problems.append(f"line {number}: not JSON")
            continue
        if "checkpoint" in item:
            checkpoint = _check_note(item["checkpoint"], origin, log_key, witness_key, report)
            if checkpoint is None:
                continue
            report.checkpoints += 1
            if report.first in (0, 1) and expected_index is not None:
                size = tree.get_size()
                if checkpoint.size != size:
                    report.problems.append(f"checkpoint for size {checkpoint.size} where the log has {size} entries")
                elif tree.get_root(size) != checkpoint.root:
                    report.problems.append(f"root at size {size} differs from its signed checkpoint: "
                                           "an entry was changed, removed, inserted or reordered")
            else:
                pending.append((checkpoint, number))
            continue
        index, entry = item.get("index"), item.get("entry")
        if not isinstance(index, int) or not isinstance(entry, str):
            report.problems.append(f"line {number}: expected an index and an entry")
            continue
        if expected_index is None:
            report.first = expected_index = index
        if index != expected_index:
            report.problems.append(f"entry {index} where {expected_index} was expected (gap or reorder)")
            expected_index = index
        data = entry.encode()
        if report.first == 1:
            tree.append_entry(data)
        else:
            slice_proofs.append((index, leaf_hash(data), item.get("proof") or {}))
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
    if require_cosigned and report.cosignatures == 0:
        report.problems.append("no checkpoint carries the witness's cosignature")
    if report.checkpoints == 0 and not report.problems:
        report.problems.append("no signed checkpoint covers the entries")
    return report


def _verify_slice(proofs: list[tuple[int, bytes, dict]], pending: list[tuple[Checkpoint, int]], report: Report) -> None:
    if not pending:
        return
    last = max((c for c, _ in pending), key=lambda c: c.size)
    for index, leaf, proof in proofs:
        try:
            verify_inclusion(leaf, last.root, InclusionProof.deserialize(proof), index=index, size=last.size)
        except (InvalidProof, KeyError, TypeError, ValueError) as exc:
            report.problems.append(f"entry {index}: not included in checkpoint {last.size} ({exc})")
