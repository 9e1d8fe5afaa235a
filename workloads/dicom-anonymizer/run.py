"""Anonymize a folder tree: one worker per file, nothing lost or half-written.

- The input is never modified (unless `in_place`); output mirrors the input tree.
- Writes go to a temporary file in the target folder, then `os.replace`.
- A file that cannot be parsed, may hold burned-in text (BurnedInAnnotation YES, Secondary
  Capture, quarantine modalities), is suppressed by k-anonymity, or fails the leak scan goes
  to `<out>/quarantine/<same path>` (the original bytes, never a partial output) with
  `<name>.reason.json`.
- A per-run JSON report lists every file's outcome, the profile and options, and the
  k-anonymity summary.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import (PYDICOM_IMPLEMENTATION_UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)

from medplat.workloads.dicom_anonymizer.cohort import CohortPlan, generalize, plan_cohort, read_quasi_identifiers
from medplat.workloads.dicom_anonymizer.deid import Deidentifier, Keys, leaks
from medplat.workloads.dicom_anonymizer.policy import Policy
from medplat.workloads.dicom_anonymizer.profile import load_profile

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class FileResult:
    path: str
    status: str  # anonymized | quarantined
    reason: str = ""
    output: str = ""


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    try:
        write(Path(temporary))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read(path: Path):
    try:
        dataset = dcmread(path)
    except InvalidDicomError:
        dataset = dcmread(path, force=True)  # no preamble / file meta: checked below like any other
    _check_complete(dataset, path.stat().st_size)
    if "SOPClassUID" not in dataset and "DirectoryRecordSequence" not in dataset:
        raise InvalidDicomError("no SOP Class UID: not a DICOM instance or DICOMDIR")
    return dataset


def _check_complete(dataset, size: int) -> None:
    """pydicom reads a truncated file without complaint; a declared length past the end gives it away.
    (Offsets of a deflated dataset are in the inflated stream: the check does not apply.)"""
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag)
        length, start = getattr(raw, "length", None), getattr(raw, "value_tell", None)
        if length is not None and start is not None and length != 0xFFFFFFFF and start + length > size:
            raise InvalidDicomError(f"truncated: {tag} declares {length} bytes at offset {start}, the file has {size}")


MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"


def _complete_file_meta(ds) -> None:
    """A Part 10 header that matches the dataset: the transfer syntax it was read in (a file
    without a header keeps its encoding, declared instead of mixed), and the new UIDs."""
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or MEDIA_DIRECTORY
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDPLAT_DEID"
    meta.FileMetaInformationVersion = b"\x00\x01"


def _quarantine_reason(ds, policy: Policy) -> str | None:
    rules = policy.quarantine
    if rules.burned_in_annotation and str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "BurnedInAnnotation is YES: pixel data holds burned-in text"
    if rules.secondary_capture and str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE):
        return "Secondary Capture: pixel data may hold burned-in text"
    modality = str(ds.get("Modality", "")).upper()
    if modality in rules.modalities:
        return f"modality {modality} commonly carries burned-in text"
    return None


def process_file(source: Path, relative: str, out: Path, policy: Policy, keys: Keys, plan: CohortPlan | None,
                 in_place: bool = False) -> FileResult:
    try:
        ds = _read(source)
        ds.ensure_file_meta()
    except Exception as exc:  # corrupt, truncated, not DICOM: reported, never crashes the run
        return _quarantine(source, relative, out, f"cannot be read as DICOM: {type(exc).__name__}: {exc}")
    reason = _quarantine_reason(ds, policy)
    if reason is None and plan is not None:
        reason = plan.suppressed.get(str(ds.get("PatientID", "")))
    if reason:
        return _quarantine(source, relative, out, reason)
    try:
        patient_id = str(ds.get("PatientID", "") or "")
        outcome = Deidentifier(load_profile(), policy, keys).apply(ds)
        if plan is not None:
            generalize(ds, plan, patient_id)
        found = leaks(ds, outcome)
        if found:
            return _quarantine(source, relative, out, "leak scan: " + "; ".join(found[:5]))
        target = source if in_place else out / relative
        _complete_file_meta(ds)
        _atomic_write(target, lambda path: ds.save_as(path, enforce_file_format=True))
    except Exception as exc:
        return _quarantine(source, relative, out, f"de-identification failed: {type(exc).__name__}: {exc}")
    return FileResult(relative, "anonymized", output=str(target))


def _quarantine(source: Path, relative: str, out: Path, reason: str) -> FileResult:
    target = out / QUARANTINE / relative
    _atomic_write(target, lambda path: shutil.copyfile(source, path))
    _atomic_write(target.with_name(target.name + ".reason.json"),
                  lambda path: path.write_text(json.dumps({"file": relative, "reason": reason}, indent=2)))
    return FileResult(relative, "quarantined", reason, str(target))


def _files(root: Path, out: Path) -> list[tuple[Path, str]]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            if out != root and out in path.parents:
                continue
            found.append((path, path.relative_to(root).as_posix()))
    return found


def _work(args):
    return process_file(*args)


def shard_of(files: list[tuple[Path, str]], index: int, count: int) -> list[tuple[Path, str]]:
    """Shard `index` of `count`: every count-th top-level entry (a patient or study folder), so
    one study never spans two shards (UIDs and dates are keyed, so shards agree anyway)."""
    tops = sorted({relative.split("/", 1)[0] for _, relative in files})
    mine = {top for position, top in enumerate(tops) if position % count == index}
    return [(path, relative) for path, relative in files if relative.split("/", 1)[0] in mine]


def anonymize_tree(source: Path, out: Path, policy: Policy, keys: Keys, *, workers: int = 1, in_place: bool = False,
                   progress: Callable[[FileResult], None] | None = None,
                   shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """Anonymize every file under `source` into `out` (or in place); returns the run report.

    With `shard=(index, count)` only that shard's studies are processed (Kubernetes Indexed
    Jobs); k-anonymity is then planned over the shard's cohort only."""
    started = time.time()
    source, out = source.resolve(), out.resolve()
    if source.is_file():
        files, source_root = [(source, source.name)], source.parent
    else:
        files, source_root = _files(source, out), source
    if shard is not None:
        files = shard_of(files, *shard)
    plan = plan_cohort(read_quasi_identifiers([f for f, _ in files], policy, keys), policy) \
        if policy.k_anonymity.k > 1 else None
    jobs = [(path, relative, out, policy, keys, plan, in_place) for path, relative in files]
    results: list[FileResult] = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_work, jobs, chunksize=8):
                results.append(result)
                if progress:
                    progress(result)
    else:
        for job in jobs:
            result = _work(job)
            results.append(result)
            if progress:
                progress(result)
    statuses = Counter(r.status for r in results)
    report = {
        "policy": policy.name, "intendedUse": policy.intended_use, "profile": load_profile().source,
        "options": sorted(policy.options), "source": str(source_root), "output": str(out),
        "inPlace": in_place, "files": len(results), "anonymized": statuses["anonymized"],
        "quarantined": statuses["quarantined"], "seconds": round(time.time() - started, 3),
        "kAnonymity": plan.summary() if plan is not None else None,
        "shard": list(shard) if shard else None,
        "results": [r.__dict__ for r in results],
    }
    out.mkdir(parents=True, exist_ok=True)
    name = f"anonymization-report-shard-{shard[0]}-of-{shard[1]}.json" if shard else "anonymization-report.json"
    _atomic_write(out / name, lambda p: p.write_text(json.dumps(report, indent=2)))
    return report
