"""dicom-anonymizer service, attacked as in issue 13: policies only by configured name, bounded
uploads and archives (zip bomb, member count), work off the event loop, truncated input is a
4xx, temporary files removed, every run audited."""
from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from medplat.service.auth import mint_local_token
from medplat.workloads.dicom_anonymizer.app import Settings, build


def _client(tmp_path: Path, **overrides):
    app, settings = build(Settings(data_dir=tmp_path / "svc", policy="teleradiology", batch_root=tmp_path / "root",
                                   **overrides))
    token = mint_local_token(settings.data_dir, "dicom-anonymizer", ["anonymize.run"], "tester")
    return TestClient(app, headers={"authorization": f"Bearer {token}"}), app, settings


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def _scratch_left(settings) -> list[Path]:
    return [p for p in settings.data_dir.iterdir() if p.name.startswith("deid-")]


def test_a_policy_is_chosen_by_configured_name_never_by_path(tmp_path):
    client, _, settings = _client(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / "evil.yaml").write_text("name: evil\nintendedUse: x\npatientIdDomain: x\noverrides: {'00100010': K}\n")
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    for chosen in (str(root / "evil.yaml"), "../root/evil", "evil", "/etc/passwd", "research-export-nope"):
        refused = client.post("/instances", params={"policy": chosen}, content=ct)
        assert refused.status_code == 422, chosen
        text = refused.json()["issue"][0]["diagnostics"]
        assert "unknown policy" in text and chosen not in text and "exist" not in text
    assert client.post("/instances", params={"policy": "teleradiology"}, content=ct).status_code == 200


def test_upload_limit_is_enforced_while_streaming(tmp_path):
    client, _, settings = _client(tmp_path, max_upload=64 * 1024)
    chunks = (b"\0" * 16384 for _ in range(100))  # no Content-Length: counted as it streams
    refused = client.post("/instances", content=chunks)
    assert refused.status_code == 413 and refused.json()["resourceType"] == "OperationOutcome"
    assert _scratch_left(settings) == []


def test_zip_bomb_and_member_flood_are_refused_and_health_stays_responsive(tmp_path):
    client, app, settings = _client(tmp_path, max_extracted=50 << 20, max_members=100)
    bomb = _zip({"zeros.dcm": b"\0" * (200 << 20)})  # ~200 KB compressed, 200 MB inflated
    assert len(bomb) < 1 << 20
    timings: list[float] = []

    def probe() -> None:
        for _ in range(5):
            started = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            timings.append(time.perf_counter() - started)

    prober = threading.Thread(target=probe)
    prober.start()
    refused = client.post("/archives", content=bomb)
    prober.join()
    assert refused.status_code == 413, refused.text
    assert max(timings) < 1.0
    flood = client.post("/archives", content=_zip({f"f{i}.dcm": b"x" for i in range(101)}))
    assert flood.status_code == 413 and "more than 100 files" in flood.json()["issue"][0]["diagnostics"]
    assert _scratch_left(settings) == []


def test_truncated_instance_is_a_4xx_and_a_batch_still_releases_the_rest(tmp_path):
    client, _, settings = _client(tmp_path)
    truncated = Path(get_testdata_file("MR_truncated.dcm")).read_bytes()
    answer = client.post("/instances", content=truncated)
    assert answer.status_code == 400 and answer.json()["resourceType"] == "OperationOutcome"
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    zipped = client.post("/archives", content=_zip({"p1/first.dcm": truncated, "p1/second.dcm": ct}))
    assert zipped.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    assert len([n for n in names if n.startswith("released/")]) == 1


def test_every_run_is_audited_with_the_caller(tmp_path):
    client, app, settings = _client(tmp_path)
    client.post("/instances", content=Path(get_testdata_file("CT_small.dcm")).read_bytes())
    spool, events = settings.data_dir / "audit-spool.jsonl", []
    for _ in range(50):  # the client's own thread spools every 0.5 s (no audit log in this test)
        events = [json.loads(line) for line in spool.read_text().splitlines()] if spool.exists() else []
        if events:
            break
        time.sleep(0.1)
    assert events and events[-1]["agent"][0]["who"]["identifier"]["value"] == "tester"
    assert "DICOM de-identification" in events[-1]["outcomeDesc"] and "1 released" in events[-1]["outcomeDesc"]


def test_jobs_do_not_reveal_whether_a_path_exists(tmp_path):
    client, _, settings = _client(tmp_path)
    (tmp_path / "root" / "exists").mkdir(parents=True)
    answers = [client.post("/jobs", json={"source": name, "output": "out"}) for name in ("exists-not", "../../etc")]
    assert answers[0].status_code == 202 and answers[1].status_code == 400
    assert "etc" not in answers[1].text
    with pytest.raises(Exception):
        client.post("/jobs", json={"source": "exists", "output": "out", "policy": "/etc/x.yaml"}).raise_for_status()


def _patients(first: int, count: int) -> bytes:
    """`count` one-file patients made from pydicom's CT_small.dcm (same quasi-identifiers)."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid
    members = {}
    for number in range(first, first + count):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientID, ds.PatientName = f"P{number}", f"Patient^{number}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        members[f"p{number}.dcm"] = buffer.getvalue()
    return _zip(members)


def test_files_held_back_for_one_caller_are_never_sent_to_another(tmp_path):
    # Found by a fresh-eyes run (fresh15): the cohort state was one per policy for every caller,
    # so the 3 patients caller A's archive held back (k = 5) were released into caller B's
    # answer (B sent 3 patients and received 6), and A never received them.
    client, _app, settings = _client(tmp_path)
    other = mint_local_token(settings.data_dir, "dicom-anonymizer", ["anonymize.run"], "other-department")
    first = client.post("/archives", params={"policy": "research-export"}, content=_patients(0, 3))
    assert first.status_code == 200
    assert not [n for n in zipfile.ZipFile(io.BytesIO(first.content)).namelist() if n.startswith("released/")]
    second = client.post("/archives", params={"policy": "research-export"}, content=_patients(10, 3),
                         headers={"authorization": f"Bearer {other}"})
    released = [n for n in zipfile.ZipFile(io.BytesIO(second.content)).namelist() if n.startswith("released/")]
    assert released == []  # B's 3 patients wait for B's next batch; A's are not B's
    third = client.post("/archives", params={"policy": "research-export"}, content=_patients(20, 2))
    report = json.loads(zipfile.ZipFile(io.BytesIO(third.content)).read("anonymization-report.json"))
    assert report["kAnonymity"]["releasedPatients"] == 5  # A's own 3 + 2, released to A


def test_the_archive_answer_names_no_server_path(tmp_path):
    # Found by a fresh-eyes run (fresh15): the run report in the answer gave each output as the
    # service's absolute scratch path (issue 13: errors and answers never reveal internal paths).
    client, _app, settings = _client(tmp_path)
    answer = client.post("/archives", content=_zip({"ct.dcm": Path(get_testdata_file("CT_small.dcm")).read_bytes()}))
    assert answer.status_code == 200
    bundle = zipfile.ZipFile(io.BytesIO(answer.content))
    report = json.loads(bundle.read("anonymization-report.json"))
    assert str(settings.data_dir) not in json.dumps(report) and "deid-" not in json.dumps(report)
    assert report["results"][0]["output"] in bundle.namelist()  # relative to the answer's root
