"""Free text (issue 15: "Dr Thaddeus Grimsby at Oakhaven Clinic", a phone number and a first
name in comments survived because only the file's own identifying values were looked for).
Every planted identifier below appears in no identifying attribute of the file. The UK phone
numbers are from Ofcom's ranges reserved for drama (01632 960xxx, 020 7946 0xxx)."""
from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file

from medplat.workloads.dicom_anonymizer.deid import Keys, Outcome, leaks
from medplat.workloads.dicom_anonymizer.freetext import find
from medplat.workloads.dicom_anonymizer.policy import Policy
from medplat.workloads.dicom_anonymizer.run import anonymize_tree

KEYS = Keys(project=b"p" * 32, patient=b"q" * 32)
PLANTED = ["Grimsby", "Thaddeus", "Oakhaven", "Maria", "7946", "960018", "Elm Street", "03/04/2021", "48151623",
           "grimsby@oakhaven"]
NOTE = ("Reviewed by Dr Thaddeus Grimsby at Oakhaven Clinic, tel +44 20 7946 0958 or 01632 960018, "
        "12 Elm Street; seen 03/04/2021, MRN 48151623, grimsby@oakhaven.example")


def _policy(**extra) -> Policy:
    return Policy.model_validate({"name": "text", "intendedUse": "tests", "patientIdDomain": "tests",
                                  "options": ["clean-descriptors"],
                                  "freeText": {"allowWords": ["CT", "CHEST", "WITH", "CONTRAST", "AXIAL"]}, **extra})


def _run(tmp_path: Path, ds, chosen: Policy) -> dict:
    source = tmp_path / "in"
    source.mkdir(exist_ok=True)
    ds.save_as(source / "ct.dcm")
    return anonymize_tree(source, tmp_path / "out", chosen, KEYS)


def _ct():
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID = "Doe^John", "P-1"
    ds.StudyDescription = "CT CHEST WITH CONTRAST"
    ds.SeriesDescription = "AXIAL 5 mm for Dr Grimsby"
    ds.ImageComments = "ask Maria about the 12 Elm Street referral"
    ds.AdditionalPatientHistory = NOTE
    return ds


def test_descriptors_are_removed_unless_allow_listed(tmp_path):
    report = _run(tmp_path, _ct(), _policy())
    assert report["anonymized"] == 1, report["results"]
    output = Path(report["results"][0]["output"])
    released = dcmread(output)
    assert released.StudyDescription == "CT CHEST WITH CONTRAST"  # allow-listed descriptor kept
    assert "SeriesDescription" not in released and "ImageComments" not in released  # Type 3: removed
    raw = output.read_bytes().decode("latin-1")
    assert [word for word in PLANTED if word in raw] == []
    assert "113105" in [item.CodeValue for item in released.DeidentificationMethodCodeSequence]


def test_text_the_policy_keeps_goes_through_the_pattern_pass(tmp_path):
    # The policy keeps Additional Patient History and Image Comments on purpose (override K):
    # titled names, phones, addresses, e-mail, dates and record numbers are still scrubbed.
    report = _run(tmp_path, _ct(), _policy(overrides={"0010,21b0": "K", "0020,4000": "K"}))
    released = dcmread(report["results"][0]["output"])
    history = str(released.AdditionalPatientHistory)
    assert [word for word in PLANTED if word in history] == [] and "Reviewed by" in history
    assert find(history) == []
    # An untitled first name in prose is beyond patterns: why descriptors are removed by default.
    assert "Maria" in released.ImageComments and "Elm Street" not in released.ImageComments


def test_leak_scan_finds_patterns_not_only_the_files_own_values():
    ds = _ct()
    ds.PatientName = "Doe^John"
    found = leaks(ds, Outcome(identifying={"Doe^John"}))  # the dictionary knows none of the planted text
    assert any("(0010,21B0) holds a titled name" in hit for hit in found)
    assert any("holds a phone" in hit for hit in found) and any("street address" in hit for hit in found)


def test_ordinary_descriptors_are_not_taken_for_identifiers():
    for text in ("MR BRAIN W/O CONTRAST", "T1 AX 5mm", "CT CHEST 1.25 mm", "SOFTWARE V3.1.2", "Series 3 of 4",
                 "DR CHEST PA"):
        assert find(text) == [], text


def test_unlisted_text_attributes_lose_the_patients_own_name(tmp_path):
    # Found by a fresh-eyes run (fresh15) on pydicom's CT_small.dcm: short text attributes
    # that Table E.1-1 does not list (Window Center & Width Explanation, LUT Explanation) are
    # kept, and were neither scrubbed of the file's identifying values nor leak-scanned, so the
    # patient's surname and given name (upper case as PN values are, or any case) were released.
    ds = _ct()
    ds.PatientName, ds.PatientID = "GRIMSBY^THADDEUS", "MRN4471923"
    ds.WindowCenterWidthExplanation = "GRIMSBY window"
    ds.add_new((0x0028, 0x3003), "LO", "thaddeus lut")  # LUT Explanation
    report = _run(tmp_path, ds, _policy())
    assert report["anonymized"] == 1, report["results"]
    raw = Path(report["results"][0]["output"]).read_bytes().decode("latin-1").lower()
    assert "grimsby" not in raw and "thaddeus" not in raw
    released = dcmread(report["results"][0]["output"])
    assert "window" in str(released.WindowCenterWidthExplanation).lower()  # the rest of the text is kept


def test_file_meta_carries_no_station_ae_title_or_private_information(tmp_path):
    # Found by a fresh-eyes run (fresh15): the Part 10 header's Source AE Title (PS3.10 Table
    # 7.1-1, 0002,0016 — the sending station, which Table E.1-1 removes as Station AE Title in
    # the dataset) and the header's Private Information (0002,0102) were written out unchanged
    # under a policy that removes device identity and private data.
    ds = _ct()
    ds.file_meta.SourceApplicationEntityTitle = "AE_ROOM_MORTIMER"
    ds.file_meta.SendingApplicationEntityTitle = "OAKHAVEN_PACS"
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
    ds.file_meta.PrivateInformation = b"GRIMSBY THADDEUS"
    report = _run(tmp_path, ds, _policy())
    assert report["anonymized"] == 1, report["results"]
    raw = Path(report["results"][0]["output"]).read_bytes()
    assert b"MORTIMER" not in raw and b"OAKHAVEN" not in raw and b"GRIMSBY" not in raw
    (tmp_path / "device").mkdir()
    kept = _run(tmp_path / "device", ds, _policy(options=["clean-descriptors", "retain-device-identity"],
                                                 deviceIdentity={"retain": True, "rationale": "the reader needs the device for tests"}))
    assert b"AE_ROOM_MORTIMER" in Path(kept["results"][0]["output"]).read_bytes()  # the option keeps it


def test_no_person_name_attribute_of_the_dictionary_survives(tmp_path):
    # Found by a fresh-eyes run (fresh15): PN attributes Table E.1-1 does not list (Secondary
    # Reviewer Name 0014,0104, Evaluator Name 0014,2006, Document Author Trial 0040,A067) were
    # kept verbatim: a staff member's name in the output. Vector: every PN attribute of pydicom's
    # copy of the PS3.6 data dictionary, each with its own name, planted into CT_small.dcm.
    from pydicom.datadict import DicomDictionary
    ds = _ct()
    planted = {}
    for tag, (vr, _vm, _name, _retired, keyword) in DicomDictionary.items():
        if vr == "PN" and keyword not in ("PatientName",):
            planted[keyword] = f"Zq{len(planted)}name^Hermione"
            ds.add_new(tag, "PN", planted[keyword])
    report = _run(tmp_path, ds, _policy())
    assert report["anonymized"] == 1, report["results"]
    raw = Path(report["results"][0]["output"]).read_bytes().decode("latin-1")
    assert [keyword for keyword, name in planted.items() if name.split("^")[0] in raw] == []


def test_prose_in_comments_the_table_does_not_list_is_removed_under_clean_descriptors(tmp_path):
    # Found by a fresh-eyes run (fresh15), planting a token in every text attribute of pydicom's
    # data dictionary: long-text comments Table E.1-1 does not list (Comments on the Scheduled
    # Procedure Step 0040,0400 LT, Dose Comment's kin, Assertion Comments 0044,0106 UT) were kept
    # with only the pattern pass, so an untitled first name in prose was released, though the
    # README promises removal by default for exactly that case.
    ds = _ct()
    ds.CommentsOnTheScheduledProcedureStep = "ask Maria before the scan"
    ds.add_new((0x0044, 0x0106), "UT", "confirmed with Maria on the ward")
    report = _run(tmp_path, ds, _policy())
    assert report["anonymized"] == 1, report["results"]
    assert b"Maria" not in Path(report["results"][0]["output"]).read_bytes()
    (tmp_path / "allowed").mkdir()
    kept = _run(tmp_path / "allowed", ds, _policy(overrides={"0040,0400": "K"}))  # kept on purpose: kept
    assert "ask Maria" in str(dcmread(kept["results"][0]["output"]).CommentsOnTheScheduledProcedureStep)


def test_overlay_bitmaps_are_not_released_unread_under_clean_graphics(tmp_path):
    # Found by a fresh-eyes run (fresh15): with the Clean Graphics option (research-export), an
    # overlay plane (60xx,3000) holding the patient's name and ID, rendered with Pillow into
    # CT_small.dcm, was released unchanged (Tesseract read "QUIMBY 4471923" back from the output's
    # overlay) while the output declared Clean Graphics (113103). Nothing reads overlay bitmaps,
    # so the overlay goes, as in the basic profile; the instance stays valid.
    import shutil
    import subprocess

    import numpy as np
    from PIL import Image, ImageDraw
    from pydicom.pixels import pack_bits
    ds = _ct()
    ds.PatientName, ds.PatientID = "QUIMBY^ROSALIND", "4471923"
    bitmap = Image.new("1", (ds.Columns, ds.Rows), 0)
    ImageDraw.Draw(bitmap).text((2, 10), "QUIMBY 4471923", fill=1)
    for element, vr, value in ((0x0010, "US", ds.Rows), (0x0011, "US", ds.Columns), (0x0040, "CS", "G"),
                               (0x0050, "SS", [1, 1]), (0x0100, "US", 1), (0x0102, "US", 0),
                               (0x3000, "OW", pack_bits(np.array(bitmap, dtype=np.uint8)))):
        ds.add_new(0x60000000 | element, vr, value)
    report = _run(tmp_path, ds, _policy(options=["clean-descriptors", "clean-graphics"]))
    assert report["anonymized"] == 1, report["results"]
    output = Path(report["results"][0]["output"])
    released = dcmread(output)
    assert not [tag for tag in released.keys() if tag.group == 0x6000]  # the whole overlay plane
    assert "113103" in [item.CodeValue for item in released.DeidentificationMethodCodeSequence]
    checked = subprocess.run([shutil.which("dciodvfy"), str(output)], capture_output=True, text=True)
    assert "Overlay" not in checked.stderr + checked.stdout
