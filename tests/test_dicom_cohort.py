"""k-anonymity over what is released (issue 15: a run that quarantined 7 of 8 patients reported
k = 8 while the released set had k = 1). Cross-checked with pycanon, an independent
implementation of k-anonymity and l-diversity (Sáinz-Pardo Díaz & López García, 2022)."""
from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medplat.workloads.dicom_anonymizer.deid import Keys
from medplat.workloads.dicom_anonymizer.policy import Policy
from medplat.workloads.dicom_anonymizer.run import anonymize_tree
from oracles import pycanon_k_l

KEYS = Keys(project=b"p" * 32, patient=b"q" * 32)
QIS = ["PatientSex", "PatientAge"]
POLICY = Policy.model_validate({
    "name": "cohort-test", "intendedUse": "tests", "patientIdDomain": "tests",
    "options": ["retain-patient-characteristics"],
    "kAnonymity": {"k": 3, "suppressionLimit": 0.5, "quasiIdentifiers": QIS,
                   "sensitiveAttribute": "BodyPartExamined", "lDiversity": 2}})


def _patients(folder: Path, patients: list[tuple[str, str, str, str, bool]]) -> Path:
    """(id, sex, age, body part, burned-in) -> one CT per patient."""
    for patient, sex, age, part, burned in patients:
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientAge = patient, f"Doe^{patient}", sex, age
        ds.BodyPartExamined = part
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        if burned:
            ds.BurnedInAnnotation = "YES"  # quarantined: pixel cleaning is off in this policy
        target = folder / patient / "ct.dcm"
        target.parent.mkdir(parents=True)
        ds.save_as(target)
    return folder


def _released_table(*outs: Path) -> list[dict]:
    rows = []
    for out in outs:
        for path in (out / "released").rglob("*.dcm"):
            ds = dcmread(path)
            rows.append({kw: str(ds.get(kw, "")) for kw in [*QIS, "BodyPartExamined", "PatientID"]})
    return rows


def _pycanon(table: list[dict]) -> tuple[int, int]:
    return pycanon_k_l(table, QIS, "BodyPartExamined")


def test_k_is_the_released_sets_and_small_classes_wait_until_they_reach_k_and_l(tmp_path):
    state = tmp_path / "cohort"
    men = [(f"M{i}", "M", f"04{i}Y", ("CHEST", "ABDOMEN")[i % 2], False) for i in range(5)]
    women = [(f"F{i}", "F", f"04{i}Y", "CHEST", i >= 2) for i in range(5)]  # 3 of 5 quarantined
    first = anonymize_tree(_patients(tmp_path / "in1", men + women), tmp_path / "out1", POLICY, KEYS, state=state)
    assert first["quarantined"] == 3 and first["anonymized"] == 5 and first["held"] == 2
    table = _released_table(tmp_path / "out1")
    assert len(table) == 5 and {row["PatientSex"] for row in table} == {"M"}
    assert (first["kAnonymity"]["kAchieved"], first["kAnonymity"]["lAchieved"]) == _pycanon(table) == (5, 2)

    # One more woman: her class reaches k = 3, but all three are CHEST (l = 1): still held.
    second = anonymize_tree(_patients(tmp_path / "in2", [("F9", "F", "043Y", "CHEST", False)]), tmp_path / "out2",
                            POLICY, KEYS, state=state)
    assert second["anonymized"] == 0 and second["kAnonymity"]["heldPatients"] == 3
    # A fourth woman with another body part: the class is k = 4 and l = 2, released whole.
    third = anonymize_tree(_patients(tmp_path / "in3", [("F8", "F", "044Y", "ABDOMEN", False)]), tmp_path / "out3",
                           POLICY, KEYS, state=state)
    assert third["kAnonymity"]["releasedThisRun"] == 4 and third["kAnonymity"]["heldPatients"] == 0
    table = _released_table(tmp_path / "out1", tmp_path / "out2", tmp_path / "out3")
    assert len(table) == 9 and len({row["PatientID"] for row in table}) == 9
    assert (third["kAnonymity"]["kAchieved"], third["kAnonymity"]["lAchieved"]) == _pycanon(table) == (4, 2)
    assert third["kAnonymity"]["risk"]["prosecutor_max"] == 0.25
    assert not list(state.rglob("*.dcm")), "released files leave the held area"
