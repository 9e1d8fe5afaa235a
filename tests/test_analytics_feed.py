"""The analytics feed end to end on real servers: device Observations posted to the ingest
(PostgreSQL), consent decided by the consent service, pseudonyms from the pseudonymizer,
de-identified and written as Parquet to a real S3-protocol server (OpenStack Swift's s3api with
Keystone EC2 credentials: the session's OpenStack fixture, tests/openstack_services.py) with SSE, read back with pyarrow and queried with DuckDB."""
from __future__ import annotations

import datetime
import json
import secrets
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from securesystemslib.signer import SSlibKey

from medplat.deid.release import ReleasePolicy, ReleaseRefused
from medplat.deid.telemetry import TelemetryPolicy
from medplat.evidence.signing import verify
from medplat.service.audit import AuditClient
from medplat.service.auth import mint_local_token
from medplat.service.clients import ServiceClient
from medplat.service.db import make_engine
from medplat.service.localpki import Ca
from medplat.workloads.analytics_feed.feed import FeedSettings
from medplat.workloads.analytics_feed.job import run
from medplat.workloads.consent.app import Settings as ConsentSettings
from medplat.workloads.consent.app import build as build_consent
from medplat.workloads.ingest.app import Settings as IngestSettings
from medplat.workloads.ingest.app import build as build_ingest
from medplat.workloads.pseudonymizer.app import Settings as PseudoSettings
from medplat.workloads.pseudonymizer.app import build as build_pseudonymizer
from identities import INGRESS, forwarded_cert

T0 = datetime.datetime(2026, 3, 14, 9, 0, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
SURNAMES = ["Albrecht", "Brandtner", "Czerny", "Dietrichs", "Eisenhut", "Feuerstein", "Grunewaldt", "Hartlieb",
            "Isenberg", "Jungblut", "Kesselring", "Lautenschlag"]
CONSENTED = 10  # the first ten patients permit research use, the last two deny it


def patient(i: int) -> dict:
    return {"resourceType": "Patient", "id": f"pat-{SURNAMES[i]}-{i:03d}",
            "identifier": [{"system": "urn:oid:1.2.276.0.76.4.8", "value": f"MRN-{900100 + i}"}],
            "name": [{"family": SURNAMES[i], "given": ["Testperson"]}], "gender": "female" if i % 2 else "male",
            "birthDate": f"{1950 + i * 3}-0{1 + i % 9}-1{i % 10}",
            "telecom": [{"system": "phone", "value": f"+49 351 555 01{i:02d}"}]}


def vital(i: int, second: int, code: str, value: float) -> dict:
    return {"resourceType": "Observation", "id": f"obs-{i}-{code}-{second}", "status": "final",
            "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": code}]},
            "subject": {"reference": f"Patient/pat-{SURNAMES[i]}-{i:03d}"},
            "device": {"reference": f"Device/monitor-SN{4400 + i}", "display": f"Bett {i} Station Sonnenblume"},
            "effectiveDateTime": (T0 + datetime.timedelta(seconds=second)).isoformat(),
            "valueQuantity": {"value": value, "unit": "%" if code == "150456" else "/min",
                              "system": "http://unitsofmeasure.org", "code": "%" if code == "150456" else "/min"}}


def ecg(i: int) -> dict:
    return {"resourceType": "Observation", "id": f"ecg-{i}", "status": "final",
            "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "131329"}]},
            "subject": {"reference": f"Patient/pat-{SURNAMES[i]}-{i:03d}"},
            "device": {"reference": f"Device/monitor-SN{4400 + i}"}, "effectiveDateTime": T0.isoformat(),
            "valueSampledData": {"origin": {"value": 0, "unit": "mV", "system": "http://unitsofmeasure.org",
                                            "code": "mV"}, "period": 2, "dimensions": 1,
                                 "data": " ".join(str((n * 7 + i) % 23) for n in range(200))}}


def consent(i: int, kind: str) -> dict:
    return {"resourceType": "Consent", "id": f"c-{i}", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
            "patient": {"reference": f"Patient/pat-{SURNAMES[i]}-{i:03d}"},
            "provision": {"type": kind, "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                                     "code": "HRESCH"}]}}


def phi_strings() -> list[str]:
    strings = [*SURNAMES, "Testperson", "Sonnenblume", "2026-03-14"]
    for i in range(len(SURNAMES)):
        strings += [f"pat-{SURNAMES[i]}-{i:03d}", f"MRN-{900100 + i}", f"monitor-SN{4400 + i}",
                    patient(i)["birthDate"], f"555 01{i:02d}"]
    return strings


def authed(app, settings, audience, scopes):
    token = mint_local_token(settings.data_dir, audience, scopes, "analytics-feed")
    return TestClient(app, headers={"authorization": f"Bearer {token}"})


@pytest.fixture
def swift(swift_s3):
    return swift_s3


@pytest.fixture
def zone(tmp_path, postgres_url):
    """Ingest on PostgreSQL holding the device data, consent and pseudonymizer services."""
    consent_app, consent_settings = build_consent(ConsentSettings(data_dir=tmp_path / "consent"))
    pseudo_app, pseudo_settings = build_pseudonymizer(PseudoSettings(data_dir=tmp_path / "pseudo"))
    consents = authed(consent_app, consent_settings, "consent", ["consent.write", "consent.decide"])
    pseudo = authed(pseudo_app, pseudo_settings, "pseudonymizer", ["pseudonym.admin", "pseudonym.create"])
    assert pseudo.post("/domains", json={"name": "analytics", "dataClass": "pseudonymized"}).status_code == 201
    for i in range(len(SURNAMES)):
        assert consents.post("/Consent", json=consent(i, "permit" if i < CONSENTED else "deny")).status_code == 201
    ingest_app, _ = build_ingest(IngestSettings(data_dir=tmp_path / "ingest", database_url=postgres_url,
                                                trusted_proxies=INGRESS))
    ingest = TestClient(ingest_app)
    site = forwarded_cert(Ca(tmp_path, "platform"), "edge-dresden")  # the edge-forwarder's mTLS identity
    messages, seq = [], 0
    for i in range(len(SURNAMES)):
        resources = [patient(i), ecg(i)] + [vital(i, s, "150456", 93 + (s + i) % 6) for s in range(0, 120, 5)] + \
                    [vital(i, s, "147842", 60 + (s * 3 + i) % 40) for s in range(0, 120, 5)]
        for resource in resources:
            seq += 1
            messages.append({"id": f"m-{seq}", "device": f"monitor-SN{4400 + i}", "seq": seq, "dataClass": "phi",
                             "resource": resource})
    for start in range(0, len(messages), 1000):
        assert ingest.post("/batches", json={"messages": messages[start:start + 1000]},
                           headers=site).status_code == 200
    return {"engine": make_engine(postgres_url), "messages": len(messages),
            "consent": ServiceClient("http://testserver", client=consents, name="consent"),
            "pseudonymizer": ServiceClient("http://testserver", client=pseudo, name="pseudonymizer"),
            "pseudo": pseudo, "tmp": tmp_path}


def settings(bucket: str, **release) -> FeedSettings:
    return FeedSettings(bucket=bucket, domain="analytics", target="swift", sse="AES256",
                        telemetry=TelemetryPolicy("analytics", waveform="aggregate", resample_seconds=60),
                        release=ReleasePolicy(**{"k": 3, **release}))


def download(client, bucket: str, folder: Path) -> dict[str, bytes]:
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            objects[item["Key"]] = body
            (folder / item["Key"]).parent.mkdir(parents=True, exist_ok=True)
            (folder / item["Key"]).write_bytes(body)
    return objects


@pytest.mark.slow
def test_device_observations_reach_the_bucket_as_deidentified_parquet(zone, swift, tmp_path):
    client = swift.client()
    bucket = f"deid-{secrets.token_hex(4)}"     # one Swift account serves the whole session
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": swift.region})
    key, signer = b"k" * 32, Ed25519PrivateKey.generate()
    audit = AuditClient(None, tmp_path / "audit-spool.jsonl")
    feed = settings(bucket)
    result = run(zone["engine"], zone["consent"], zone["pseudonymizer"], client, key, signer, feed, audit)
    assert result["status"] == "released"

    objects = download(client, bucket, tmp_path / "bucket")
    blob = b"".join(objects.values())
    leaked = [s for s in phi_strings() if s.encode() in blob]
    assert leaked == [], "no PHI string in any object of the bucket"

    # Read back: pyarrow over the hive-partitioned folder, DuckDB for the queries Athena would run.
    table = ds.dataset(tmp_path / "bucket" / "telemetry" / "observations", format="parquet",
                       partitioning="hive").to_table()
    assert set(table.column_names) >= {"patient", "device", "code", "statistic", "value", "effective", "day"}
    con = duckdb.connect()
    base = (tmp_path / "bucket" / "telemetry").as_posix()
    rows = con.execute(f"SELECT code, statistic, count(*), avg(value), count(DISTINCT patient) "
                       f"FROM read_parquet('{base}/observations/*/*.parquet', hive_partitioning = true) "
                       f"GROUP BY ALL ORDER BY ALL").fetchall()
    by_code = {(code, statistic): (n, mean, patients) for code, statistic, n, mean, patients in rows}
    # 120 s of vitals every 5 s per patient, resampled to 60 s windows: 2 rows per patient and code.
    assert by_code[("150456", None)][0] == 2 * CONSENTED and by_code[("150456", None)][2] == CONSENTED
    assert 93 <= by_code[("150456", None)][1] <= 98
    assert by_code[("131329", "mean")][0] == CONSENTED, "waveforms leave only as aggregates"
    patients = con.execute(f"SELECT patient, age, sex FROM read_parquet('{base}/patients/*.parquet')").fetchall()
    assert len(patients) == CONSENTED, "denied patients are absent"
    denied = zone["pseudo"].post("/domains/analytics/pseudonymize", json={
        "values": [f"pat-{SURNAMES[i]}-{i:03d}" for i in range(CONSENTED, len(SURNAMES))]}).json()["pseudonyms"]
    assert not set(denied) & {p for p, *_ in patients}
    assert not set(denied) & set(table.column("patient").to_pylist())

    # The signed release record names every file with its digest; it verifies with the public key.
    record = objects[result["record"]].decode()
    statement = verify(record, SSlibKey.from_crypto(signer.public_key()))
    import hashlib
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subjects and all(hashlib.sha256(objects[name]).hexdigest() == digest for name, digest in subjects.items())
    manifest = json.loads(objects[f"telemetry/releases/{result['releaseId']}/manifest.json"])
    assert manifest["report"]["kAchieved"] >= 3 and manifest["report"]["records"] == CONSENTED

    # Swift encrypted the objects at rest (its encryption middleware, which s3api's SSE relies on).
    on_disk = b"".join(p.read_bytes() for p in (swift.folder / "srv").rglob("*.data"))
    assert b"PAR1" not in on_disk and on_disk

    # Idempotent: the same data again is the same release, already out; nothing is written twice.
    again = run(zone["engine"], zone["consent"], zone["pseudonymizer"], client, key, signer, feed, audit)
    assert again == {"releaseId": result["releaseId"], "status": "already released", "record": result["record"]}
    assert set(download(client, bucket, tmp_path / "again")) == set(objects)
    spool = [json.loads(line) for line in (tmp_path / "audit-spool.jsonl").read_text().splitlines()]
    assert [e["entity"][0]["what"]["reference"] for e in spool if e.get("entity")][:1] == \
        [f"s3://{bucket}/{result['record']}"]


@pytest.mark.slow
def test_a_release_violating_k_is_refused_and_nothing_is_written(zone, swift, tmp_path):
    client = swift.client()
    bucket = f"refused-{secrets.token_hex(4)}"
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": swift.region})
    with pytest.raises(ReleaseRefused, match="violates k=11"):
        run(zone["engine"], zone["consent"], zone["pseudonymizer"], client, b"k" * 32,
            Ed25519PrivateKey.generate(), settings(bucket, k=11, on_violation="refuse"),
            AuditClient(None, tmp_path / "spool.jsonl"))
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_device_only_telemetry_without_a_patient_resource_is_refused_with_a_report():
    """Edge adapters send Observations only; with no consented Patient resource the patient
    table is empty: the release is refused with its report (not an opaque hierarchy error)."""
    from medplat.deid.keys import KeyDomain
    from medplat.workloads.analytics_feed.feed import Selection, build_release, config_digest

    settings = FeedSettings(bucket="b", domain="analytics", target="swift", sse="AES256")
    selection = Selection([vital(i, 0, "150456", 97.0) for i in range(3)], {}, ["m1", "m2", "m3"], {})
    keys = KeyDomain(b"k" * 32, lambda domain, values: [f"pseudo-{v}" for v in values])
    with pytest.raises(ReleaseRefused) as refused:
        build_release(selection, settings, keys, config_digest(settings))
    assert refused.value.report["decision"] == "refused" and refused.value.report["records"] == 0
