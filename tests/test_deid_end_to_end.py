"""Issue 16's end-to-end must-show, every hop a real process on loopback: device Observations
published at an edge site's broker (Mosquitto, the project's config and ACL) -> edge-forwarder
(its durable outbox) -> ingest over mutual TLS on real PostgreSQL -> the analytics-feed job run
as the CronJob runs it (`python -m medplat.workloads.analytics_feed.job`), asking the consent
and pseudonymizer services (`medplat serve ...`) -> de-identified Parquet in a real S3-protocol
bucket (OpenStack Swift's s3api) -> read back with pyarrow and queried with DuckDB (Athena's
stand-in). Distinct PHI strings are planted in every place a device feed or an admission
system puts them, and every byte of every object in the bucket is searched for them."""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import httpx
import orjson
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import SSlibKey

from medplat.evidence.signing import verify
from medplat.service.auth import mint_local_token
from services import Mosquitto, Service, free_port
from store_forward import Pki, Publisher, forwarder_headers, forwarder_service, ingest_service, stored_count, wait_until

pytestmark = pytest.mark.slow

T0 = datetime.datetime(2026, 3, 14, 9, 0, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
PEOPLE = [  # (family, given, MRN, street, phone, birth date, device serial): every one a distinct PHI string
    ("Wolkenstein", "Adelheid", "MRN-531001", "Kirschallee 11", "+49 351 7700101", "1949-04-17", "SN-PX7-118201"),
    ("Brennecke", "Bartholomaeus", "MRN-531002", "Lindenhof 22", "+49 351 7700102", "1953-08-02", "SN-PX7-118202"),
    ("Quirrenbach", "Cosima", "MRN-531003", "Ulmenweg 33", "+49 351 7700103", "1958-12-29", "SN-PX7-118203"),
    ("Tannhaeuser", "Dietlinde", "MRN-531004", "Eibenstrasse 44", "+49 351 7700104", "1962-01-05", "SN-PX7-118204"),
    ("Vogelsang", "Eckhart", "MRN-531005", "Ahornring 55", "+49 351 7700105", "1967-06-21", "SN-PX7-118205"),
    ("Zwickelbauer", "Friedemann", "MRN-531006", "Birkenhang 66", "+49 351 7700106", "1971-10-14", "SN-PX7-118206"),
    ("Ostermeier", "Gundula", "MRN-531007", "Eschenplatz 77", "+49 351 7700107", "1975-03-09", "SN-PX7-118207"),
    ("Pfefferkorn", "Hildegard", "MRN-531008", "Fichtengasse 88", "+49 351 7700108", "1980-07-30", "SN-PX7-118208"),
]
CONSENTED = 6  # the first six permit research use, the last two deny it
CITY, NURSE, WARD = "Radebeul-Zitzschewig", "Schwester Mechthild Oberndorfer", "Station Kornblume"
SECONDS, STEP = 180, 10  # three minutes of vitals every 10 s per patient: three 60 s windows
AUDIENCE = "medplat-eu-services"  # one platform audience for the job's token to consent and pseudonymizer


def patient_id(i: int) -> str:
    return f"pat-{PEOPLE[i][0]}-{i}"


def note(i: int) -> str:
    family, given, _, street, phone, *_ = PEOPLE[i]
    return f"Frau/Herr {given} {family}, wohnhaft {street}, {CITY}, Angehoerige unter {phone}"


def patient(i: int) -> dict:
    family, given, mrn, street, phone, birth, _ = PEOPLE[i]
    return {"resourceType": "Patient", "id": patient_id(i),
            "identifier": [{"system": "urn:oid:1.2.276.0.76.4.8", "value": mrn}],
            "name": [{"family": family, "given": [given]}], "gender": "female" if i % 2 else "male",
            "birthDate": birth, "telecom": [{"system": "phone", "value": phone}],
            "address": [{"line": [street], "city": CITY, "postalCode": "01445", "country": "DE"}]}


def vital(i: int, second: int, code: str, value: float) -> dict:
    serial = PEOPLE[i][6]
    unit = "%" if code == "150456" else "/min"
    return {"resourceType": "Observation", "id": f"obs-{serial}-{code}-{second}", "status": "final",
            "identifier": [{"system": "urn:example:monitor-sequence", "value": f"{serial}-{second}"}],
            "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": code}]},
            "subject": {"reference": f"Patient/{patient_id(i)}", "display": f"{PEOPLE[i][1]} {PEOPLE[i][0]}"},
            "device": {"reference": f"Device/{serial}", "display": f"Monitor {serial}, Bett {i}, {WARD}"},
            "performer": [{"display": NURSE}],
            "effectiveDateTime": (T0 + datetime.timedelta(seconds=second)).isoformat(),
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
            "note": [{"text": note(i)}]}


def consent(i: int, kind: str) -> dict:
    return {"resourceType": "Consent", "id": f"consent-{i}", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
            "patient": {"reference": f"Patient/{patient_id(i)}"},
            "provision": {"type": kind, "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                                     "code": "HRESCH"}]}}


def phi_strings() -> list[str]:
    strings = [CITY, NURSE, WARD, "Zitzschewig", "Kornblume", "Oberndorfer", "2026-03-14"]
    for i, person in enumerate(PEOPLE):
        strings += [*person, patient_id(i), note(i), person[4].replace("+49 351 ", ""), person[6].removeprefix("SN-")]
    return strings


# -- the S3-protocol server: the one place this test names the Swift fixture ------------------------
@pytest.fixture(scope="module")
def bucket_server():
    from swift_s3 import start_swift_s3, stop, wait_until_ready

    server, processes = start_swift_s3()
    try:
        wait_until_ready(server)
        yield server
    finally:
        stop(processes, server.folder)


# -- the EU services, each a real process -----------------------------------------------------------
def eu_service(name: str, folder: Path, **settings) -> Service:
    """consent / pseudonymizer with one shared platform issuer key and audience (the job's one token)."""
    data_dir = folder / name
    (data_dir / "auth").mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    os.chmod(data_dir / "auth", 0o700)
    shutil.copy(folder / "issuer" / "auth" / "issuer.jwk", data_dir / "auth" / "issuer.jwk")
    return Service(name, {"data_dir": data_dir, "auth_audience": AUDIENCE, **settings}, free_port(),
                   folder / f"{name}.log")


def token(folder: Path, scopes: list[str], subject: str) -> str:
    return mint_local_token(folder / "issuer", AUDIENCE, scopes, subject)


@pytest.fixture
def platform(tmp_path, postgres_url):
    started: list = []
    mint_local_token(tmp_path / "issuer", AUDIENCE, [], "setup")  # creates the platform issuer key
    try:
        broker = Mosquitto(tmp_path / "broker")
        started.append(broker)
        pki = Pki(tmp_path / "pki")
        ingest = ingest_service(tmp_path, pki, postgres_url).start()
        started.append(ingest)
        forwarder = forwarder_service(tmp_path, pki, ingest.port, broker).start()
        started.append(forwarder)
        consent_service = eu_service("consent", tmp_path).start()
        started.append(consent_service)
        pseudonymizer = eu_service("pseudonymizer", tmp_path).start()
        started.append(pseudonymizer)
        yield {"broker": broker, "ingest": ingest, "forwarder": forwarder, "consent": consent_service,
               "pseudonymizer": pseudonymizer, "database_url": postgres_url, "folder": tmp_path}
    finally:
        for each in reversed(started):
            each.stop()


def admin(service: Service, folder: Path, *scopes: str) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{service.port}", timeout=30,
                        headers={"authorization": f"Bearer {token(folder, list(scopes), 'test-admin')}"})


def run_job(platform: dict, server, bucket: str) -> subprocess.CompletedProcess:
    """The CronJob's command with its settings from the environment, as the pod runs it."""
    folder = platform["folder"]
    job = folder / "job"
    job.mkdir(exist_ok=True)
    (job / "service.token").write_text(token(folder, ["consent.decide", "pseudonym.create"], "analytics-feed"))
    if not (job / "project.key").exists():
        (job / "project.key").write_bytes(os.urandom(32))
        (job / "signing.key").write_bytes(Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    settings = {"data_dir": job / "data", "database_url": platform["database_url"],
                "consent_url": f"http://127.0.0.1:{platform['consent'].port}",
                "pseudonymizer_url": f"http://127.0.0.1:{platform['pseudonymizer'].port}",
                "service_token_file": job / "service.token", "deid_key_file": job / "project.key",
                "signing_key_file": job / "signing.key", "bucket": bucket, "s3_endpoint_url": server.endpoint,
                "s3_region": server.region, "s3_target": "swift", "sse": "AES256", "waveform": "drop",
                "resample_seconds": 60, "k": 3,
                "dp_epsilon": 1.0, "dp_bounds": json.dumps({"150456": [80, 100], "147842": [30, 200]})}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
           **{f"MEDPLAT_ANALYTICS_FEED_{k.upper()}": str(v) for k, v in settings.items()},
           "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
           "AWS_CONFIG_FILE": str(job / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(job / "no-aws-creds")}
    return subprocess.run([sys.executable, "-m", "medplat.workloads.analytics_feed.job"], env=env,
                          capture_output=True, text=True, timeout=300)


def everything_in(client, bucket: str, folder: Path) -> dict[str, bytes]:
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects[item["Key"]] = body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            (folder / item["Key"]).parent.mkdir(parents=True, exist_ok=True)
            (folder / item["Key"]).write_bytes(body)
    return objects


def searchable(objects: dict[str, bytes]) -> list[bytes]:
    """Every object's bytes, and for Parquet also its decoded values (pages are zstd-compressed:
    a byte search alone would not see a string inside them)."""
    out = list(objects.values())
    for key, body in objects.items():
        if key.endswith(".parquet"):
            out.append(json.dumps(pq.read_table(io.BytesIO(body)).to_pylist(), default=str).encode())
    return out


def test_edge_to_bucket_releases_deidentified_parquet_with_no_phi(platform, bucket_server, tmp_path):
    folder = platform["folder"]
    # Consent: six patients permit research use, two deny it; the analytics zone's pseudonym domain.
    with admin(platform["consent"], folder, "consent.write") as consents:
        for i in range(len(PEOPLE)):
            response = consents.post("/Consent", json=consent(i, "permit" if i < CONSENTED else "deny"))
            assert response.status_code == 201, response.text
    with admin(platform["pseudonymizer"], folder, "pseudonym.admin") as pseudo:
        assert pseudo.post("/domains", json={"name": "analytics", "dataClass": "pseudonymized"}).status_code == 201

    # At the edge: the monitors publish through the site broker (as the device adapter), the
    # admission system posts the Patients to the forwarder (a local producer).
    publisher = Publisher(platform["broker"])
    sent = 0
    for i, person in enumerate(PEOPLE):
        for second in range(0, SECONDS, STEP):
            for code, value in (("150456", 92 + (second // STEP + i) % 7), ("147842", 60 + (second + 7 * i) % 40)):
                resource = vital(i, second, code, value)
                publisher.publish(person[6], orjson.dumps({"id": resource["id"], "device": person[6],
                                                           "dataClass": "phi", "resource": resource}))
                sent += 1
    publisher.wait()
    publisher.close()
    forwarder = platform["forwarder"]
    response = httpx.post(f"http://127.0.0.1:{forwarder.port}/messages", timeout=30,
                          headers=forwarder_headers(forwarder),
                          json=[{"id": f"adt-{i}", "device": "admission", "dataClass": "phi", "resource": patient(i)}
                                for i in range(len(PEOPLE))])
    assert response.status_code == 202, response.text
    wait_until(lambda: stored_count(platform["database_url"]) == sent + len(PEOPLE), 120,
               what="every message forwarded over mTLS and committed by the ingest")

    client = bucket_server.client()
    client.create_bucket(Bucket="deidentified", CreateBucketConfiguration={"LocationConstraint": bucket_server.region})
    result = run_job(platform, bucket_server, "deidentified")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "released", outcome

    objects = everything_in(client, "deidentified", tmp_path / "bucket")
    assert any(key.endswith(".parquet") for key in objects) and any(key.endswith("release.json") for key in objects)
    leaked = sorted({s for s in phi_strings() for body in searchable(objects) if s.encode() in body})
    assert leaked == [], f"PHI in the bucket: {leaked}"

    # Read back with pyarrow (hive partitions as Glue declares them) and query with DuckDB.
    table = ds.dataset(tmp_path / "bucket" / "telemetry" / "observations", format="parquet",
                       partitioning="hive").to_table()
    assert table.num_rows == CONSENTED * 2 * (SECONDS // 60), "one mean per patient, code and minute"
    assert len(set(table.column("device").to_pylist())) == CONSENTED, "devices as keyed pseudonymous keys"
    base = (tmp_path / "bucket" / "telemetry").as_posix()
    con = duckdb.connect()
    spo2 = con.execute(f"SELECT count(*), count(DISTINCT patient), min(value), max(value) FROM read_parquet("
                       f"'{base}/observations/*/*.parquet', hive_partitioning = true) WHERE code = '150456'").fetchone()
    assert spo2[0] == CONSENTED * (SECONDS // 60) and spo2[1] == CONSENTED and 92 <= spo2[2] <= spo2[3] <= 98
    joined = con.execute(f"SELECT count(DISTINCT o.patient) FROM read_parquet('{base}/observations/*/*.parquet') o "
                         f"JOIN read_parquet('{base}/patients/*.parquet') p USING (patient)").fetchone()[0]
    assert joined == CONSENTED, "observations join the patient table on the pseudonym"
    ages = con.execute(f"SELECT age, sex FROM read_parquet('{base}/patients/*.parquet') ORDER BY ALL").fetchall()
    assert len(ages) == CONSENTED and all(age != "unknown" for age, _ in ages)
    # The time is shifted per patient: no release row lies on the day the data was recorded.
    assert "2026-03-14" not in {d.isoformat()[:10] for d in table.column("effective").to_pylist()}

    # Denied patients are absent: their pseudonyms (asked of the pseudonymizer) appear nowhere.
    with admin(platform["pseudonymizer"], folder, "pseudonym.create") as pseudo:
        pseudonyms = pseudo.post("/domains/analytics/pseudonymize", json={
            "values": [patient_id(i) for i in range(len(PEOPLE))]}).json()["pseudonyms"]
    found = {p for p in pseudonyms for body in searchable(objects) if p.encode() in body}
    assert found == set(pseudonyms[:CONSENTED]), "the search sees what is there (consented) and nothing denied"

    # The signed release record names every file by digest and verifies with the job's public key.
    signer = serialization.load_pem_private_key((folder / "job" / "signing.key").read_bytes(), None)
    statement = verify(objects[outcome["record"]].decode(), SSlibKey.from_crypto(signer.public_key()))
    digests = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert digests and all(hashlib.sha256(objects[key]).hexdigest() == d for key, d in digests.items())

    # Optional DP aggregates: published once per release, the whole epsilon accounted for by OpenDP's maps.
    release = outcome["releaseId"]
    manifest = json.loads(objects[f"telemetry/releases/{release}/manifest.json"])
    privacy = manifest["report"]["differentialPrivacy"]
    assert privacy["epsilon"] == 1.0 and privacy["spent"] == pytest.approx(1.0, rel=1e-6)
    assert [q["query"] for q in privacy["queries"]] == ["count 147842", "sum 147842", "count 150456", "sum 150456"]
    published = json.loads(objects[f"telemetry/aggregates/release={release}.json"])
    assert [a["code"] for a in published] == ["147842", "150456"]
    assert all(a["mean"] is None or a["bounds"][0] <= a["mean"] <= a["bounds"][1] for a in published), \
        "noisy means are clamped to their bounds (None when the noisy count is not positive)"

    # The CronJob's next run over the same data is the same release: nothing is written twice.
    again = run_job(platform, bucket_server, "deidentified")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["status"] == "already released"
    assert set(everything_in(client, "deidentified", tmp_path / "again")) == set(objects)
