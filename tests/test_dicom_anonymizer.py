"""dicom-anonymizer on the DICOM files bundled with pydicom: the profile table, every option
against the table, UID references, date intervals, the leak scan, quarantine, corrupt input,
the CLI and the service."""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from typer.testing import CliRunner

from medplat.cli import app as cli
from medplat.service.auth import mint_local_token
from medplat.workloads.dicom_anonymizer import generate_profile
from medplat.workloads.dicom_anonymizer.deid import Keys, new_uid
from medplat.workloads.dicom_anonymizer.policy import Policy, load_policy
from medplat.workloads.dicom_anonymizer.profile import CID_7050, OPTIONS, RESOLVED, load_profile
from medplat.workloads.dicom_anonymizer.run import anonymize_tree

SHARED = next(p / "shared" / "data" for p in Path(__file__).resolve().parents
              if (p / "shared" / "data").is_dir()) / "dicom-ps315" / "confidentiality_profile_attributes.json"
KEYS = Keys(project=b"p" * 32, patient=b"q" * 32)


def sample(name: str) -> Path:
    return Path(get_testdata_file(name))


def policy(*options: str, **extra) -> Policy:
    return Policy.model_validate({"name": "test", "intendedUse": "tests", "options": list(options),
                                  "patientIdDomain": "tests", **extra})


def run(tmp_path: Path, files: dict[str, Path | Dataset], chosen: Policy, name: str = "run") -> tuple[Path, dict]:
    source, out = tmp_path / f"{name}-in", tmp_path / f"{name}-out"
    for relative, item in files.items():
        target = source / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(item, Dataset):
            item.save_as(target, enforce_file_format=False)
        else:
            shutil.copy(item, target)
    return out, anonymize_tree(source, out, chosen, KEYS)


def test_generated_table_is_current_and_cites_the_revision(tmp_path):
    output = tmp_path / "table.json"
    assert generate_profile.main([str(SHARED), str(output)]) == 0
    shipped = Path(generate_profile.OUTPUT).read_text()
    assert output.read_text() == shipped, "regenerate ps3.15-table-e1-1.json from the shared table"
    table = json.loads(shipped)
    assert table["source"].startswith("DICOM PS3.15 2024b") and len(table["attributes"]) + len(table["patterns"]) == 620


def test_every_option_resolves_as_the_table_says():
    rows = json.loads(SHARED.read_text())
    profile = load_profile()
    keys = {v: k for k, v in generate_profile.OPTIONS.items()}
    checked = 0
    for row in rows:
        if "GGGG" in row["tag"] or "X" in row["tag"].upper()[1:5] + row["tag"].upper()[6:10]:
            continue
        tag = int(row["tag"].strip("()").replace(",", ""), 16)
        basic = row["basicProfile"]
        expected = RESOLVED.get(basic, basic) if row["stdCompIOD"] == "Y" or basic not in RESOLVED else "X"
        assert profile.action(tag, frozenset())[0] == expected, row["tag"]
        for option in OPTIONS:
            if keys[option] in row:
                assert profile.action(tag, frozenset({option})) == (row[keys[option]], option), (row["tag"], option)
                checked += 1
    assert checked > 500


def test_basic_profile_and_each_option_on_a_ct(tmp_path):
    original = dcmread(sample("CT_small.dcm"))
    outputs = {}
    for options in [(), ("retain-longitudinal-full-dates",), ("retain-longitudinal-modified-dates",),
                    ("retain-device-identity",), ("retain-institution-identity",), ("retain-patient-characteristics",),
                    ("retain-uids",), ("clean-descriptors",)]:
        out, report = run(tmp_path, {"ct.dcm": sample("CT_small.dcm")}, policy(*options), "-".join(options) or "basic")
        assert report["anonymized"] == 1, report["results"]
        outputs[options] = dcmread(out / "ct.dcm")
    basic = outputs[()]
    assert basic.PatientIdentityRemoved == "YES" and basic.LongitudinalTemporalInformationModified == "REMOVED"
    assert basic.PatientID != original.PatientID and basic.PatientName == basic.PatientID
    assert not basic.get("StudyDate") and basic.InstitutionName == "ANONYMIZED"  # X/Z/D -> D (dummy)
    assert basic.SOPInstanceUID == new_uid(KEYS.project, original.SOPInstanceUID)
    assert basic.file_meta.MediaStorageSOPInstanceUID == basic.SOPInstanceUID
    assert [i.CodeValue for i in basic.DeidentificationMethodCodeSequence] == ["113100"]
    assert outputs[("retain-longitudinal-full-dates",)].StudyDate == original.StudyDate
    modified = outputs[("retain-longitudinal-modified-dates",)]
    assert modified.StudyDate not in ("", original.StudyDate) and modified.LongitudinalTemporalInformationModified == \
        "MODIFIED"
    assert outputs[("retain-device-identity",)].StationName == original.StationName != basic.StationName
    assert outputs[("retain-institution-identity",)].InstitutionName == original.InstitutionName
    kept = outputs[("retain-patient-characteristics",)]
    assert kept.PatientSex == original.PatientSex and not basic.get("PatientSex")
    assert outputs[("retain-uids",)].SOPInstanceUID == original.SOPInstanceUID
    assert [i.CodeValue for i in outputs[("retain-uids",)].DeidentificationMethodCodeSequence] == \
        ["113100", CID_7050["retain-uids"][0]]


def _series(study_uid: str, patient: str, date: str, sop: str, referenced: str | None = None) -> Dataset:
    ds = dcmread(sample("CT_small.dcm"))
    ds.PatientID, ds.PatientName, ds.StudyDate, ds.SeriesDate = patient, f"Doe^{patient}", date, date
    ds.StudyInstanceUID, ds.SOPInstanceUID = study_uid, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    if referenced:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, referenced
        ds.ReferencedImageSequence = Sequence([item])
    return ds


def test_uid_references_stay_linked_across_batches_and_intervals_are_kept(tmp_path):
    chosen = policy("retain-longitudinal-modified-dates")
    out1, _ = run(tmp_path, {"p1/a.dcm": _series("1.2.3.4", "P1", "20200101", "1.2.3.4.1")}, chosen, "batch1")
    out2, _ = run(tmp_path, {"p1/b.dcm": _series("1.2.3.4", "P1", "20200111", "1.2.3.4.2", referenced="1.2.3.4.1"),
                             "p2/c.dcm": _series("1.2.3.5", "P2", "20200101", "1.2.3.5.1")}, chosen, "batch2")
    a, b, c = dcmread(out1 / "p1/a.dcm"), dcmread(out2 / "p1/b.dcm"), dcmread(out2 / "p2/c.dcm")
    assert a.StudyInstanceUID == b.StudyInstanceUID != "1.2.3.4"
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    day = lambda value: datetime.date(int(value[:4]), int(value[4:6]), int(value[6:]))  # noqa: E731
    assert (day(b.StudyDate) - day(a.StudyDate)).days == 10, "interval kept for one patient"
    assert a.PatientID == b.PatientID != c.PatientID
    assert c.StudyDate != a.StudyDate, "each patient has its own shift"


def test_rt_plan_reference_to_its_structure_set_follows_the_remapping(tmp_path):
    plan = dcmread(sample("rtplan.dcm"))
    structure = dcmread(sample("rtstruct.dcm"), force=True)
    structure.SOPInstanceUID = plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID
    structure.PatientName = plan.PatientName  # one patient (the sample's name also appears in its labels)
    out, report = run(tmp_path, {"plan.dcm": plan, "struct.dcm": structure}, policy("clean-structured-content"))
    assert report["anonymized"] == 2, report["results"]
    new_plan, new_structure = dcmread(out / "plan.dcm"), dcmread(out / "struct.dcm", force=True)
    assert new_plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == new_structure.SOPInstanceUID
    assert new_structure.SOPInstanceUID != structure.SOPInstanceUID


def test_leak_scan_catches_phi_planted_in_a_kept_private_sequence(tmp_path):
    ds = dcmread(sample("CT_small.dcm"))
    block = ds.private_block(0x0011, "ACME 1.0", create=True)
    inner = Dataset()
    inner.private_block(0x0011, "ACME 1.0", create=True).add_new(0x01, "LO", f"note about {ds.PatientName}")
    block.add_new(0x10, "SQ", Sequence([inner]))
    keep = policy("retain-safe-private", keepPrivate=["acme 1.0,0011,10"])
    out, report = run(tmp_path, {"ct.dcm": ds}, keep, "kept")
    assert report["quarantined"] == 1 and "leak scan" in report["results"][0]["reason"]
    assert "compressedsamples" in report["results"][0]["reason"]
    assert not (out / "ct.dcm").exists() and (out / "quarantine" / "ct.dcm").exists()
    out, report = run(tmp_path, {"ct.dcm": ds}, policy(), "dropped")
    assert report["anonymized"] == 1 and (0x0011, 0x1010) not in dcmread(out / "ct.dcm")


def test_burned_in_annotation_and_secondary_capture_are_quarantined(tmp_path):
    ds = dcmread(sample("CT_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    out, report = run(tmp_path, {"burned.dcm": ds, "sc.dcm": sample("SC_rgb_rle.dcm")}, policy())
    reasons = {r["path"]: r["reason"] for r in report["results"]}
    assert "BurnedInAnnotation" in reasons["burned.dcm"] and "Secondary Capture" in reasons["sc.dcm"]
    assert json.loads((out / "quarantine" / "burned.dcm.reason.json").read_text())["reason"] == reasons["burned.dcm"]


def test_corrupt_and_truncated_files_are_reported_without_partial_output(tmp_path):
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 100)
    files = {"ok.dcm": sample("MR_small.dcm"), "truncated.dcm": sample("MR_truncated.dcm"),
             "plan-truncated.dcm": sample("rtplan_truncated.dcm"), "garbage.dcm": garbage}
    out, report = run(tmp_path, files, policy())
    statuses = {r["path"]: r["status"] for r in report["results"]}
    assert statuses["ok.dcm"] == "anonymized"
    for bad in ("truncated.dcm", "plan-truncated.dcm", "garbage.dcm"):
        assert statuses[bad] == "quarantined" and not (out / bad).exists()
    assert not list(out.rglob("*.partial"))


def test_other_character_sets_are_pseudonymized_without_leaks(tmp_path):
    files = {Path(f).name: Path(f) for f in get_charset_files() if f.endswith(".dcm")}
    lenient = policy("clean-descriptors", quarantine={"secondaryCapture": False, "modalities": []})
    out, report = run(tmp_path, files, lenient)
    assert report["anonymized"] >= 10, [r for r in report["results"] if r["status"] != "anonymized"]
    japanese = dcmread(out / "chrH31.dcm")
    assert "ﾔﾏﾀﾞ" not in str(japanese.PatientName) and "山田" not in str(japanese.PatientName)


def test_input_is_untouched_unless_in_place(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(sample("CT_small.dcm"), source / "ct.dcm")
    digest = hashlib.sha256((source / "ct.dcm").read_bytes()).hexdigest()
    anonymize_tree(source, tmp_path / "out", policy(), KEYS)
    assert hashlib.sha256((source / "ct.dcm").read_bytes()).hexdigest() == digest
    anonymize_tree(source, tmp_path / "out2", policy(), KEYS, in_place=True)
    assert dcmread(source / "ct.dcm").PatientIdentityRemoved == "YES"


def test_cli_runs_with_workers_and_refuses_a_bad_policy(tmp_path):
    source = tmp_path / "in" / "nested" / "deeper"
    source.mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(sample(name), source / name)
    runner = CliRunner()
    result = runner.invoke(cli, ["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--policy",
                                 "teleradiology", "--workers", "2", "--keys", str(tmp_path / "keys")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "nested" / "deeper" / "CT_small.dcm").exists()
    report = json.loads((tmp_path / "out" / "anonymization-report.json").read_text())
    assert report["anonymized"] == 2 and report["policy"] == "teleradiology"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nintendedUse: y\npatientIdDomain: z\noptions: [retain-everything]\n")
    refused = runner.invoke(cli, ["anonymize", str(tmp_path / "in"), str(tmp_path / "o2"), "--policy", str(bad)])
    assert refused.exit_code == 2 and "unknown option" in refused.stderr


def test_shipped_policies_load():
    research, teleradiology = load_policy("research-export"), load_policy("teleradiology")
    assert research.k_anonymity.k == 5 and "retain-longitudinal-modified-dates" in research.options
    assert teleradiology.k_anonymity.k == 1
    with pytest.raises(ValueError, match="one of the two"):
        policy("retain-longitudinal-full-dates", "retain-longitudinal-modified-dates")


def test_service_anonymizes_an_instance_and_a_zip(tmp_path):
    from medplat.workloads.dicom_anonymizer.app import Settings, build

    app, settings = build(Settings(data_dir=tmp_path / "svc", policy="teleradiology", batch_root=tmp_path))
    token = mint_local_token(settings.data_dir, "dicom-anonymizer", ["anonymize.run"], "tester")
    client = TestClient(app, headers={"authorization": f"Bearer {token}"})
    response = client.post("/instances", content=sample("CT_small.dcm").read_bytes(),
                           headers={"content-type": "application/dicom"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
    assert dcmread(io.BytesIO(response.content)).PatientIdentityRemoved == "YES"
    burned = dcmread(sample("CT_small.dcm"))
    burned.BurnedInAnnotation = "YES"
    buffer = io.BytesIO()
    burned.save_as(buffer)
    refused = client.post("/instances", content=buffer.getvalue())
    assert refused.status_code == 422 and "BurnedInAnnotation" in refused.json()["issue"][0]["diagnostics"]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(sample("MR_small.dcm"), "study/mr.dcm")
    zipped = client.post("/archives", content=archive.getvalue(), headers={"content-type": "application/zip"})
    names = zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    assert "study/mr.dcm" in names and "anonymization-report.json" in names
    assert TestClient(app).post("/instances", content=b"x").status_code == 401


def test_shards_split_top_level_folders_and_cover_everything_once(tmp_path):
    source = tmp_path / "in"
    for study in range(5):
        (source / f"study-{study}").mkdir(parents=True)
        shutil.copy(sample("CT_small.dcm"), source / f"study-{study}" / "ct.dcm")
    runner = CliRunner()
    seen = []
    for index in range(2):
        result = runner.invoke(cli, ["anonymize", str(source), str(tmp_path / "out"), "--policy", "teleradiology",
                                     "--keys", str(tmp_path / "keys"), "--shards", "2"],
                               env={"JOB_COMPLETION_INDEX": str(index)})
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / "out" / f"anonymization-report-shard-{index}-of-2.json").read_text())
        seen += [r["path"] for r in report["results"]]
    assert sorted(seen) == sorted(f"study-{i}/ct.dcm" for i in range(5))
    missing = runner.invoke(cli, ["anonymize", str(source), str(tmp_path / "o"), "--policy", "teleradiology",
                                  "--shards", "2"], env={"JOB_COMPLETION_INDEX": ""})
    assert missing.exit_code == 2 and "JOB_COMPLETION_INDEX" in missing.stderr
