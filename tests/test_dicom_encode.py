"""The fast write path of the DICOM anonymizer (issue 15, speed): elements de-identification did
not touch are written back as they were read, Pixel Data included, and nothing else changes.

Oracles: pydicom's own writer (`dcmwrite`) over pydicom's and pydicom-data's test files (public
sample data shipped with pydicom), and the same de-identification with every element decoded
first (the path the shortcuts skip)."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files

from medplat.workloads.dicom_anonymizer import run
from medplat.workloads.dicom_anonymizer.deid import Keys, leaks
from medplat.workloads.dicom_anonymizer.encode import PIXEL_DATA, encode
from medplat.workloads.dicom_anonymizer.policy import Policy, load_policy

KEYS = Keys(project=b"p" * 32, patient=b"q" * 32)
BASIC = Policy.model_validate({"name": "basic", "intendedUse": "tests", "patientIdDomain": "tests",
                               "quarantine": {"secondaryCapture": False, "modalities": []}})
RULES_ONLY = Policy.model_validate({"name": "rules", "intendedUse": "tests", "patientIdDomain": "tests",
                                    "pixels": {"enabled": True, "ocr": False}})


def _pydicom_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _readable_test_files() -> list[str]:
    found = []
    for path in sorted(get_testdata_files("*")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path)
                ds.ensure_file_meta()
                _pydicom_bytes(ds)
        except Exception:  # files pydicom itself cannot read or write back (deliberately broken ones)
            continue
        found.append(path)
    return found


@pytest.fixture(scope="module")
def test_files() -> list[str]:
    files = _readable_test_files()
    assert len(files) > 100  # pydicom's and pydicom-data's files: all syntaxes, charsets, sequences
    return files


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_encoding_is_byte_identical_to_pydicoms_writer(test_files):
    for path in test_files:
        expected = dcmread(path)
        expected.ensure_file_meta()
        mine = dcmread(path)
        mine.ensure_file_meta()
        assert b"".join(encode(mine)) == _pydicom_bytes(expected), path


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("policy", ["research-export", "teleradiology"])
def test_deidentified_files_encode_exactly_as_pydicom_writes_them(test_files, policy):
    chosen = load_policy(policy)
    compared = 0
    for path in test_files:
        datasets = []
        try:
            for _ in range(2):
                ds = run.read_instance(Path(path))
                run._deidentifier(chosen, KEYS).apply(ds)
                run.complete_file_meta(ds, chosen)
                datasets.append(ds)
            expected = _pydicom_bytes(datasets[1])
        except Exception:  # refused or quarantined by the anonymizer (no SOP class, truncated, ...)
            continue
        assert b"".join(encode(datasets[0])) == expected, path
        compared += 1
    assert compared > 100


def _sample(name: str) -> bytes:
    """The file as an instance (some of pydicom's samples lack the SOP Class and Instance UIDs:
    given CT Image's and a fixed one)."""
    found = get_testdata_file(name) or next(iter(get_charset_files(name)), None)
    assert found, name
    ds = dcmread(found, force=True)
    ds.SOPClassUID = ds.get("SOPClassUID") or "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.get("SOPInstanceUID") or "1.2.826.0.1.3680043.8.498.1"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _decoded_everywhere(ds) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _decoded_everywhere(item)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["rtplan.dcm", "CT_small.dcm", "MR_small.dcm", "ExplVR_BigEnd.dcm", "rtstruct.dcm",
                                  "nested_priv_SQ.dcm", "chrGerm.dcm", "chrX1.dcm", "chrRuss.dcm", "chrSQEncoding.dcm"])
@pytest.mark.parametrize("policy", ["research-export", "teleradiology"])
def test_leaving_elements_undecoded_changes_nothing_in_the_result(name, policy):
    """Implicit VR elements typed from the dictionary, descriptors left raw when nothing in them
    needs scrubbing, raw codes in the leak scan: same output values, same leak findings, as when
    pydicom has decoded every element first."""
    chosen, sample = load_policy(policy), _sample(name)
    results = []
    for decode_first in (False, True):
        ds = run.read_instance(io.BytesIO(sample))
        if decode_first:
            _decoded_everywhere(ds)
        outcome = run._deidentifier(chosen, KEYS).apply(ds)
        found = leaks(ds, outcome)
        run.complete_file_meta(ds, chosen)
        results.append((dcmread(io.BytesIO(b"".join(encode(ds)))), sorted(found), sorted(outcome.identifying)))
    (fast, fast_leaks, fast_identifying), (decoded, decoded_leaks, decoded_identifying) = results
    assert fast_leaks == decoded_leaks and fast_identifying == decoded_identifying
    assert fast == decoded
    assert fast.file_meta == decoded.file_meta


def _ct_slice(folder: Path, rows: int = 512) -> tuple[Path, bytes]:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = rows
    ds.PixelData = np.random.default_rng(7).integers(0, 4096, (rows, rows), dtype=np.uint16).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "slice.dcm")
    return folder / "slice.dcm", ds.PixelData


def _spy_on_encode(monkeypatch) -> list[tuple]:
    seen = []

    def spy(ds):
        chunks = encode(ds)
        seen.append((ds.get_item(PIXEL_DATA), chunks))
        return chunks

    monkeypatch.setattr(run, "encode", spy)
    return seen


def test_untouched_pixel_data_goes_out_as_the_bytes_read(tmp_path, monkeypatch):
    source, pixels = _ct_slice(tmp_path / "in")
    seen = _spy_on_encode(monkeypatch)
    report = run.anonymize_tree(source.parent, tmp_path / "out", BASIC, KEYS)
    assert report["results"][0]["status"] == "anonymized", report["results"][0]["reason"]
    raw, chunks = seen[0]
    # Never decoded, and handed to the file as the very buffer read (no re-encoding, no copy).
    assert getattr(raw, "is_raw", False) and any(chunk is raw.value for chunk in chunks)
    released = dcmread(report["results"][0]["output"])
    assert released.PixelData == pixels and released.PatientName != "CompressedSamples^CT1"
    assert Path(report["results"][0]["output"]).read_bytes() == _pydicom_bytes(released)


def test_cleaned_pixel_data_is_re_encoded_not_copied(tmp_path, monkeypatch):
    ds = dcmread(get_testdata_file("US1_UNCR.dcm"))  # GE LOGIQ 700, 640 x 480: a curated CTP rule applies
    original = ds.PixelData
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "us.dcm")
    seen = _spy_on_encode(monkeypatch)
    report = run.anonymize_tree(tmp_path / "in", tmp_path / "out", RULES_ONLY, KEYS)
    result = report["results"][0]
    assert (result["status"], result["pixels"]) == ("anonymized", "cleaned"), result["reason"]
    pixel_element, chunks = seen[0]
    assert not getattr(pixel_element, "is_raw", False)
    assert all(chunk is not original for chunk in chunks)
    released = dcmread(result["output"])
    assert released.PixelData != original and not released.pixel_array[:108].any()
    assert released.pixel_array[200:300].any()  # the image below the rule's rectangles is kept
