"""Anonymize a folder tree: one read per file, nothing lost, half-written or released by mistake.

Output folder layout (only `released/` is meant to leave the site):
- `released/<Study UID>/<Series UID>/<SOP Instance UID>.dcm`: paths built from the
  de-identified UIDs (keyed remaps), never from the input's folder or file names.
- `quarantine/<keyed hash>.dcm` with `<keyed hash>.reason.json`: the original bytes of a file
  that cannot be read, may hold burned-in text the pixel stage could not clean, or fails the
  leak scan.
- `anonymization-report.json`: every input file's outcome (input paths stay in this internal
  report, outside the released tree), the profile, options and the k-anonymity summary.
With k > 1 (cohort k-anonymity, see cohort.py) de-identified files are first held in the
project's cohort state folder and move to `released/` when their equivalence class allows.
The input is never modified unless `in_place` (then the file is rewritten where it is, and
k-anonymity hold-back is refused: it needs somewhere to hold).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import (PYDICOM_IMPLEMENTATION_UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian)

from medplat.workloads.dicom_anonymizer.cohort import Candidate, CohortState, generalized
from medplat.workloads.dicom_anonymizer.deid import Deidentifier, Keys, leaks
from medplat.workloads.dicom_anonymizer.encode import encode
from medplat.workloads.dicom_anonymizer.pixels import clean_pixels, header_snapshot
from medplat.workloads.dicom_anonymizer.policy import Policy
from medplat.workloads.dicom_anonymizer.profile import load_profile

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
QUARANTINE, RELEASED, REPORT = "quarantine", "released", "anonymization-report.json"


@dataclass
class FileResult:
    path: str  # input path, relative to the source root (internal report only)
    status: str  # anonymized | quarantined | held
    reason: str = ""
    output: str = ""
    patient: str = ""  # pseudonym, for the cohort
    values: dict[str, str] = field(default_factory=dict)  # quasi-identifiers as de-identified
    pixels: str = ""  # untouched | cleaned (pixel stage)


_FOLDERS: set[Path] = set()  # folders this process has made or seen: one mkdir per folder, not per file


def _temporary_beside(target: Path) -> str:
    """A new empty temporary file in the target's folder (made if missing)."""
    folder = target.parent
    if folder not in _FOLDERS:
        folder.mkdir(parents=True, exist_ok=True)
        if len(_FOLDERS) > 10000:
            _FOLDERS.clear()
        _FOLDERS.add(folder)
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=folder)
    except FileNotFoundError:  # removed since we made it
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=folder)
    os.close(fd)
    return temporary


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    temporary = _temporary_beside(target)
    try:
        write(Path(temporary))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class DuplicateInstance(Exception):
    """Another file with the same SOP Instance UID but different content is already released."""


def _write_new(target: Path, write: Callable[[Path], None]) -> None:
    """Like _atomic_write, but never replaces a different file: two inputs with one SOP Instance
    UID (the same image in two transfer syntaxes, or a clash) must not overwrite each other.
    Writing the same bytes again (a re-run) is fine."""
    temporary = _temporary_beside(target)
    try:
        write(Path(temporary))
        try:
            os.link(temporary, target)
        except FileExistsError:
            if Path(temporary).read_bytes() != target.read_bytes():
                raise DuplicateInstance("another input with the same SOP Instance UID was released") from None
    finally:
        Path(temporary).unlink(missing_ok=True)


def read_instance(source) -> Any:
    """The whole instance, once. Raises InvalidDicomError for anything that is not a complete one."""
    try:
        dataset = dcmread(source)
    except InvalidDicomError:
        if hasattr(source, "seek"):
            source.seek(0)
        dataset = dcmread(source, force=True)  # no preamble / file meta: checked below like any other
    size = source.stat().st_size if isinstance(source, Path) else len(source.getbuffer())
    _check_complete(dataset, size)
    if "SOPClassUID" not in dataset and "DirectoryRecordSequence" not in dataset:
        raise InvalidDicomError("no SOP Class UID: not a DICOM instance or DICOMDIR")
    dataset.ensure_file_meta()
    return dataset


def _check_complete(dataset, size: int) -> None:
    """pydicom reads a truncated file without complaint; a declared length past the end gives it away.
    (Offsets of a deflated dataset are in the inflated stream: the check does not apply.)"""
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return
    for tag, raw in dataset.items():  # raw elements as read, none decoded
        length, start = getattr(raw, "length", None), getattr(raw, "value_tell", None)
        if length is not None and start is not None and length != 0xFFFFFFFF and start + length > size:
            raise InvalidDicomError(f"truncated: {tag} declares {length} bytes at offset {start}, the file has {size}")


# Part 10 header elements naming the stations and network addresses a file passed through
# (Station AE Title's kin) and the header's private data: removed unless device identity is retained.
META_DEVICE_IDENTITY = (0x00020016, 0x00020017, 0x00020018, 0x00020026, 0x00020027, 0x00020028)
META_PRIVATE = (0x00020100, 0x00020102)


def complete_file_meta(ds, policy: Policy) -> None:
    """A Part 10 header that matches the dataset: the transfer syntax it was read in (a file
    without a header keeps its encoding, declared instead of mixed), and the new UIDs."""
    meta = ds.file_meta
    removed = META_PRIVATE if "retain-device-identity" in policy.option_set else META_DEVICE_IDENTITY + META_PRIVATE
    for tag in removed:
        if tag in meta:
            del meta[tag]
    if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian  # written inflated: same content, no re-deflate
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


def burned_in_risk(ds, policy: Policy) -> str | None:
    """Why the pixels may carry burned-in text (PS3.15 E.1.1 Clean Pixel Data), or None."""
    rules = policy.quarantine
    if rules.burned_in_annotation and str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "BurnedInAnnotation is YES: pixel data holds burned-in text"
    if rules.secondary_capture and str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE):
        return "Secondary Capture: pixel data may hold burned-in text"
    modality = str(ds.get("Modality", "")).upper()
    if modality in rules.modalities:
        return f"modality {modality} commonly carries burned-in text"
    return None


def released_path(ds, keys: Keys, relative: str) -> str:
    """From de-identified values only: the remapped Study/Series/SOP Instance UIDs (a keyed
    hash of the input path when an instance has none, e.g. a DICOMDIR)."""
    parts = [str(ds.get(kw, "") or "") for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    if all(part and set(part) <= set("0123456789.") for part in parts):
        return f"{parts[0]}/{parts[1]}/{parts[2]}.dcm"
    return f"other/{_keyed(keys, relative)}.dcm"


def _keyed(keys: Keys, relative: str) -> str:
    return hmac.new(keys.project, b"path|" + relative.encode(), hashlib.sha256).hexdigest()[:32]


def process_file(source: Path, relative: str, out: Path, policy: Policy, keys: Keys, held: Path | None,
                 in_place: bool = False) -> FileResult:
    try:
        ds = read_instance(source)
    except Exception as exc:  # corrupt, truncated, not DICOM: reported, never crashes the run
        return _quarantine(source, relative, out, keys, f"cannot be read as DICOM: {type(exc).__name__}: {exc}")
    risk = burned_in_risk(ds, policy)
    if risk and not policy.pixels.enabled:
        return _quarantine(source, relative, out, keys, risk)
    try:
        header = header_snapshot(ds) if risk else {}  # pixel rules test the header as it came in
        outcome = _deidentifier(policy, keys).apply(ds)
        pixels = "untouched"
        if risk:
            cleaned = clean_pixels(ds, policy.pixels, outcome.identifying, header)
            if cleaned.remaining:
                return _quarantine(source, relative, out, keys, f"{risk}; text remains after cleaning: "
                                   f"{cleaned.remaining}")
            pixels = cleaned.status
        found = leaks(ds, outcome)
        if found:
            return _quarantine(source, relative, out, keys, "leak scan: " + "; ".join(found[:5]))
        complete_file_meta(ds, policy)
        result = FileResult(relative, "anonymized", pixels=pixels, patient=str(ds.get("PatientID", "") or ""))
        if in_place:
            target = source
        elif held is not None:  # cohort k-anonymity decides after the run
            result.status = "held"
            result.values = _cohort_values(ds, policy)
            target = held / result.patient / released_path(ds, keys, relative)
        else:
            target = out / RELEASED / released_path(ds, keys, relative)
        chunks = encode(ds)
        (_atomic_write if in_place else _write_new)(target, lambda path: _write_chunks(path, chunks))
    except DuplicateInstance as exc:
        return _quarantine(source, relative, out, keys, str(exc))
    except Exception as exc:
        return _quarantine(source, relative, out, keys, f"de-identification failed: {type(exc).__name__}: {exc}")
    result.output = str(target)
    return result


def _write_chunks(path: Path, chunks: list[bytes]) -> None:
    with open(path, "wb") as file:
        file.writelines(chunks)


_DEIDENTIFIERS: dict[tuple, Deidentifier] = {}


def _deidentifier(policy: Policy, keys: Keys) -> Deidentifier:
    """One per policy, keys and thread: its per-tag action cache then serves every file. Per
    thread because a Deidentifier holds the current file's patient state while it works (the
    service runs requests in parallel threads)."""
    key = (_policy_key(policy), keys, threading.get_ident())
    found = _DEIDENTIFIERS.get(key)
    if found is None:
        found = _DEIDENTIFIERS[key] = Deidentifier(load_profile(), policy, keys)
    return found


_POLICY_KEYS: dict[int, tuple[Policy, str]] = {}


def _policy_key(policy: Policy) -> str:
    """The policy's JSON, computed once per policy object (a policy is not changed once loaded):
    equal policies share one Deidentifier, and a run does not serialize its policy per file."""
    seen = _POLICY_KEYS.get(id(policy))
    if seen is None or seen[0] is not policy:
        if len(_POLICY_KEYS) > 64:
            _POLICY_KEYS.clear()  # services load a policy per request: keep only recent ones
        seen = _POLICY_KEYS[id(policy)] = (policy, policy.model_dump_json())
    return seen[1]


def _cohort_values(ds, policy: Policy) -> dict[str, str]:
    settings = policy.k_anonymity
    wanted = settings.quasi_identifiers + ([settings.sensitive_attribute] if settings.sensitive_attribute else [])
    return {kw: str(ds.get(kw, "") or "") for kw in wanted}


def _quarantine(source: Path, relative: str, out: Path, keys: Keys, reason: str) -> FileResult:
    target = out / QUARANTINE / f"{_keyed(keys, relative)}.dcm"
    _atomic_write(target, lambda path: shutil.copyfile(source, path))
    _atomic_write(target.with_name(target.stem + ".reason.json"),
                  lambda path: path.write_text(json.dumps({"file": relative, "reason": reason}, indent=2)))
    return FileResult(relative, "quarantined", reason, str(target))


def _files(root: Path, out: Path, skip: list[Path]) -> list[tuple[Path, str]]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            if any(folder != root and folder in path.parents for folder in (out, *skip)):
                continue
            found.append((path, path.relative_to(root).as_posix()))
    return found


_CONTEXT: tuple = ()  # a worker process's (out, policy, keys, held, in_place): sent once, not per file


def _start_worker(context: tuple) -> None:
    global _CONTEXT
    _CONTEXT = context


def _work_in_worker(file: tuple[Path, str]) -> FileResult:
    return process_file(*file, *_CONTEXT)


def shard_of(files: list[tuple[Path, str]], index: int, count: int) -> list[tuple[Path, str]]:
    """Shard `index` of `count`: every count-th top-level entry (a patient or study folder), so
    one study never spans two shards (UIDs and dates are keyed, so shards agree anyway)."""
    tops = sorted({relative.split("/", 1)[0] for _, relative in files})
    mine = {top for position, top in enumerate(tops) if position % count == index}
    return [(path, relative) for path, relative in files if relative.split("/", 1)[0] in mine]


def anonymize_tree(source: Path, out: Path, policy: Policy, keys: Keys, *, workers: int = 1, in_place: bool = False,
                   progress: Callable[[FileResult], None] | None = None,
                   shard: tuple[int, int] | None = None, state: Path | None = None) -> dict[str, Any]:
    """Anonymize every file under `source` into `out` (or in place); returns the run report.

    `state`: the project's cohort state folder for k-anonymity (default `<out>/cohort`), kept
    across runs so small batches accumulate. With `shard=(index, count)` only that shard's
    studies are processed (Kubernetes Indexed Jobs); shards share the locked cohort state."""
    started = time.time()
    source, out = source.resolve(), out.resolve()
    cohort = policy.k_anonymity.k > 1 and bool(policy.k_anonymity.quasi_identifiers)
    if cohort and in_place:
        raise ValueError("k-anonymity hold-back needs an output folder: in-place runs need a policy with k = 1")
    state = (state or out / "cohort").resolve()
    if source.is_file():
        files, source_root = [(source, source.name)], source.parent
    else:
        files, source_root = _files(source, out, [state]), source
    if shard is not None:
        files = shard_of(files, *shard)
    cohort_state = CohortState(state, policy) if cohort else None
    context = (out, policy, keys, cohort_state.held_folder if cohort_state else None, in_place)
    results = _run_jobs(files, context, workers, progress)
    summary = _settle_cohort(cohort_state, results, out, policy) if cohort_state else None
    statuses = Counter(r.status for r in results)
    report = {
        "policy": policy.name, "intendedUse": policy.intended_use, "profile": load_profile().source,
        "options": sorted(policy.options), "inPlace": in_place, "files": len(results),
        "anonymized": statuses["anonymized"], "held": statuses["held"], "quarantined": statuses["quarantined"],
        "pixelsCleaned": sum(r.pixels == "cleaned" for r in results), "seconds": round(time.time() - started, 3),
        "kAnonymity": summary, "shard": list(shard) if shard else None,
        "results": [{k: v for k, v in asdict(r).items() if k not in ("values", "patient")} for r in results],
    }
    out.mkdir(parents=True, exist_ok=True)
    name = f"anonymization-report-shard-{shard[0]}-of-{shard[1]}.json" if shard else REPORT
    _atomic_write(out / name, lambda p: p.write_text(json.dumps(report, indent=2)))
    return report


def _run_jobs(files: list[tuple[Path, str]], context: tuple, workers: int, progress) -> list[FileResult]:
    """Each worker process gets the policy and keys once (its Deidentifier is compiled once) and
    the files in chunks large enough that handing them over costs little."""
    results: list[FileResult] = []
    if workers > 1 and len(files) > 1:
        chunk = max(1, min(64, len(files) // (workers * 8)))
        with ProcessPoolExecutor(max_workers=workers, initializer=_start_worker, initargs=(context,)) as pool:
            for result in pool.map(_work_in_worker, files, chunksize=chunk):
                results.append(result)
                if progress:
                    progress(result)
    else:
        for path, relative in files:
            result = process_file(path, relative, *context)
            results.append(result)
            if progress:
                progress(result)
    return results


def _settle_cohort(state: CohortState, results: list[FileResult], out: Path, policy: Policy) -> dict[str, Any]:
    """Release the patients whose classes reach k (and l), generalized; hold the rest."""
    held_root = state.held_folder
    by_patient: dict[str, Candidate] = {}
    for result in results:
        if result.status == "held":
            candidate = by_patient.setdefault(result.patient, Candidate(result.patient, result.values))
            candidate.files.append(Path(result.output).relative_to(held_root).as_posix())
    with state.locked():
        decision = state.decide(list(by_patient.values()))
        qis = policy.k_anonymity.quasi_identifiers
        released_files: dict[str, str] = {}
        for candidate in decision.release:
            values = generalized(qis, candidate.values, state.data["node"])
            for staged in candidate.files:
                target = out / RELEASED / staged.split("/", 1)[1]
                _release(held_root / staged, target, values)
                released_files[str(held_root / staged)] = str(target)
        state.data["held"] = {c.patient: {"values": c.values, "files": c.files} for c in decision.hold}
        state.save()
        summary = state.summary()
    for result in results:
        if result.status == "held" and result.output in released_files:
            result.status, result.output = "anonymized", released_files[result.output]
    summary["releasedThisRun"] = len(released_files)
    return summary


def _release(staged: Path, target: Path, values: dict[str, str]) -> None:
    """Write the generalized quasi-identifiers ('*' empties the attribute), then drop the held copy."""
    ds = dcmread(staged)
    for keyword, value in values.items():
        if keyword in ds:
            ds.data_element(keyword).value = "" if value == "*" else value
    try:
        _write_new(target, lambda path: ds.save_as(path, enforce_file_format=True))
    except DuplicateInstance:
        return  # stays held; the report of the run that released the first copy names it
    staged.unlink()
