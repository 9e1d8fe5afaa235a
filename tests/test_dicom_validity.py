"""Valid output: PS3.15 actions resolved per the attribute's Type in the IOD, UN elements decoded
with the dictionary before de-identification, a Part 10 header matching the encoding.

Oracle: dciodvfy from David Clunie's dicom3tools (Debian `dicom3tools`), run over the inputs
and the outputs of every test file bundled with pydicom and pydicom-data: de-identification
must not add a single error."""
from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from medplat.workloads.dicom_anonymizer import generate_iod_types
from medplat.workloads.dicom_anonymizer.deid import Keys, new_uid
from medplat.workloads.dicom_anonymizer.policy import Policy
from medplat.workloads.dicom_anonymizer.run import anonymize_tree

KEYS = Keys(project=b"p" * 32, patient=b"q" * 32)
# Everything released (no quarantine rules), so every readable file is validated.
OPEN = Policy.model_validate({"name": "validity", "intendedUse": "tests", "patientIdDomain": "tests",
                              "quarantine": {"burnedInAnnotation": False, "secondaryCapture": False,
                                             "modalities": []}})


def _errors(path: Path) -> set[str]:
    """dciodvfy's error lines with element values blanked (UIDs change on purpose)."""
    found = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
    lines = (found.stdout + found.stderr).splitlines()
    return {re.sub(r"=\s*<[^>]*>", "=<>", " ".join(line.split())) for line in lines if line.startswith("Error")}


def _run(tmp_path: Path, files: dict[str, Path | Dataset], policy: Policy = OPEN) -> tuple[Path, dict]:
    source = tmp_path / "in"
    source.mkdir(exist_ok=True)
    for name, item in files.items():
        if isinstance(item, Dataset):
            item.save_as(source / name, enforce_file_format=False)
        else:
            shutil.copy(item, source / name)
    return source, anonymize_tree(source, tmp_path / "out", policy, KEYS)


@pytest.mark.slow
def test_dciodvfy_finds_no_new_error_in_any_output(tmp_path):
    files = [Path(f) for f in get_testdata_files("*.dcm")]
    assert len(files) > 100, "pydicom-data supplies the larger test files"

    def baseline(source: Path) -> set[str]:
        """dciodvfy cannot read a deflated file: its baseline is the same dataset inflated."""
        ds = dcmread(source, force=True)
        if getattr(ds, "file_meta", {}).get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return _errors(source)
        inflated = tmp_path / f"{source.stem}-inflated.dcm"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(inflated)
        return _errors(inflated)

    def new_errors(source: Path) -> tuple[str, str, set[str]]:
        # One run per file: many test files share one SOP Instance UID (one image in several
        # transfer syntaxes), which in one run would be one released instance.
        report = anonymize_tree(source, tmp_path / source.stem, OPEN, KEYS)
        result = report["results"][0]
        if result["status"] != "anonymized":
            return source.name, result["reason"], set()
        return source.name, "", _errors(Path(result["output"])) - baseline(source)

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(new_errors, files))
    released = [name for name, reason, _ in outcomes if not reason]
    assert len(released) >= 130, [(name, reason) for name, reason, _ in outcomes if reason]
    assert {name: errors for name, _, errors in outcomes if errors} == {}


def test_enhanced_mr_keeps_type_1_device_serial_as_a_dummy_and_ct_drops_type_3(tmp_path):
    # DeviceSerialNumber is Type 1 in the Enhanced General Equipment module (Enhanced MR) and
    # Type 3 in General Equipment (CT Image); PS3.15 code X/Z/D resolves by that Type.
    mr = dcmread(get_testdata_file("emri_small.dcm"))
    mr.DeviceSerialNumber = "SN-4711-ROOM7"
    ct = dcmread(get_testdata_file("CT_small.dcm"))
    ct.DeviceSerialNumber = "SN-4711-ROOM7"
    _, report = _run(tmp_path, {"mr.dcm": mr, "ct.dcm": ct})
    outputs = {r["path"]: dcmread(r["output"]) for r in report["results"]}
    assert outputs["mr.dcm"].DeviceSerialNumber not in ("", "SN-4711-ROOM7")
    assert "DeviceSerialNumber" not in outputs["ct.dcm"]


LONG_HEADER_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}


def _with_un_sequence(ds: Dataset, keyword: str) -> bytes:
    """The dataset in explicit VR little endian with one sequence re-encoded as VR UN holding
    implicit little endian content, as a system that does not know the attribute forwards it
    (PS3.5 6.2.2). pydicom converts UN on write, so the element is spliced in by hand."""
    element = ds[keyword]
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    holder = Dataset()
    holder.add(element)
    write_dataset(buffer, holder)
    content = buffer.getvalue()[8:]
    del ds[keyword]
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True)
    raw = out.getvalue()
    reread = dcmread(io.BytesIO(raw))
    following = reread.get_item(min(tag for tag in reread.keys() if tag > element.tag))
    position = following.value_tell - (12 if following.VR in LONG_HEADER_VRS else 8)
    header = struct.pack("<HH2sHI", element.tag.group, element.tag.element, b"UN", 0, len(content))
    return raw[:position] + header + content + raw[position:]


def test_sequence_arriving_as_un_is_decoded_and_its_uid_remapped(tmp_path):
    dose = dcmread(get_testdata_file("rtdose.dcm"))
    plan_uid = dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID
    raw = _with_un_sequence(dose, "ReferencedRTPlanSequence")
    assert struct.pack("<HH", 0x300C, 0x0002) + b"UN" in raw and plan_uid.encode() in raw
    (tmp_path / "dose.dcm").write_bytes(raw)
    _, report = _run(tmp_path, {"dose.dcm": tmp_path / "dose.dcm"})
    output = Path(report["results"][0]["output"])
    assert plan_uid.encode() not in output.read_bytes()
    released = dcmread(output)
    assert released.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == new_uid(KEYS.project, plan_uid)


def test_file_without_meta_header_gets_one_that_declares_its_encoding(tmp_path):
    _, report = _run(tmp_path, {"big.dcm": Path(get_testdata_file("ExplVR_BigEndNoMeta.dcm")),
                                "implicit.dcm": Path(get_testdata_file("rtplan.dcm"))})
    for result in report["results"]:
        raw = Path(result["output"]).read_bytes()
        assert raw[128:132] == b"DICM", result["path"]
        released = dcmread(io.BytesIO(raw))  # no force: a valid Part 10 file
        implicit, little = released.original_encoding
        syntax = released.file_meta.TransferSyntaxUID
        assert (syntax.is_implicit_VR, syntax.is_little_endian) == (implicit, little)
        assert released.file_meta.MediaStorageSOPInstanceUID == released.SOPInstanceUID


def test_iod_type_table_is_current(tmp_path):
    output = tmp_path / "iod-types.json"
    assert generate_iod_types.main([str(output)]) == 0
    assert output.read_text() == generate_iod_types.OUTPUT.read_text(), "regenerate iod-types.json"
