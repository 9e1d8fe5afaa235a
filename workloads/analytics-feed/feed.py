"""The analytics feed: the one flow from the EU PHI zone to the analytics zone's de-identified
bucket. Selects consented device telemetry from the ingest store, de-identifies it
(medplat.deid.telemetry), checks the patient table against the release policy (k-anonymity,
ℓ-diversity; generalised or refused), and writes partitioned Parquet, a manifest and a signed
release record through the S3 API with server-side encryption.

A release is idempotent: its id is a digest of what it contains and how it was made; an
existing release record means it is already out, and nothing is written twice. The release
record is written last, so a reader that starts from release records never sees half a release.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, text

from medplat.deid.engine import PATIENT_REFERENCE
from medplat.deid.keys import KeyDomain
from medplat.deid.release import ReleasePolicy, age_hierarchy, check_release, suppression_hierarchy
from medplat.deid.telemetry import TelemetryPolicy, deidentify_series, rows as telemetry_rows
from medplat.evidence.signing import sign, statement

PREDICATE = "https://medplat.dev/attestations/analytics-release/v1"
OBSERVATIONS = pa.schema([
    ("patient", pa.string()), ("device", pa.string()), ("code_system", pa.string()), ("code", pa.string()),
    ("statistic", pa.string()), ("value", pa.float64()), ("unit", pa.string()),
    ("effective", pa.timestamp("ms", tz="UTC")),
])
PATIENTS = pa.schema([("patient", pa.string()), ("age", pa.string()), ("sex", pa.string())])

Decide = Callable[[str, str, str], dict[str, Any]]  # (patient reference, resource type, data class) -> decision


@dataclass
class FeedSettings:
    bucket: str
    domain: str                                   # pseudonym domain of the analytics zone's patients
    prefix: str = "telemetry"
    actor: str = "Organization/medplat-analytics"
    purpose: str = "HRESCH"
    target: str = "aws"                           # aws | swift: which server-side encryption it offers
    sse: str = "aws:kms"                          # aws: aws:kms with kms_key_id; swift: AES256
    kms_key_id: str | None = None
    telemetry: TelemetryPolicy | None = None
    release: ReleasePolicy = field(default_factory=ReleasePolicy)
    limit: int = 1_000_000
    # Optional differentially private aggregates (medplat.deid.dp, the `dp` extra): the release's
    # epsilon and, per code, the bounds a patient's mean is clamped to; None publishes none.
    dp_epsilon: float | None = None
    dp_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class Selection:
    observations: list[dict[str, Any]]
    patients: dict[str, dict[str, Any]]         # patient id -> Patient resource
    message_ids: list[str]
    refused: dict[str, int]


def select_consented(engine: Engine, decide: Decide, limit: int) -> Selection:
    """Observations and Patients whose patient consented to this use (permit + pseudonymize)."""
    query = text("SELECT id, payload, data_class, resource_type FROM messages "
                 "WHERE resource_type IN ('Observation', 'Patient') ORDER BY device, seq LIMIT :limit")
    with engine.connect() as connection:
        rows = connection.execute(query, {"limit": limit}).all()
    decisions: dict[tuple[str, str], bool] = {}
    selection = Selection([], {}, [], {})
    for row in rows:
        resource = row.payload if isinstance(row.payload, dict) else json.loads(row.payload)
        patient = _patient_id(resource)
        if patient is None:
            selection.refused["no patient"] = selection.refused.get("no patient", 0) + 1
            continue
        key = (patient, row.resource_type)
        if key not in decisions:
            decision = decide(f"Patient/{patient}", row.resource_type, row.data_class)
            decisions[key] = decision["decision"] == "permit" and set(decision["obligations"]) == {"pseudonymize"}
        if not decisions[key]:
            selection.refused["consent"] = selection.refused.get("consent", 0) + 1
            continue
        selection.message_ids.append(row.id)
        if row.resource_type == "Patient":
            selection.patients[patient] = resource
        else:
            selection.observations.append(resource)
    return selection


def _patient_id(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        return resource.get("id")
    match = PATIENT_REFERENCE.search(str((resource.get("subject") or {}).get("reference", "")))
    return match.group(1) if match else None


def _age(patient: dict[str, Any], at: str | None) -> int | None:
    birth = patient.get("birthDate")
    if not birth or len(birth) < 10 or not at:
        return None
    born, when = datetime.date.fromisoformat(birth[:10]), datetime.date.fromisoformat(at[:10])
    return min(90, when.year - born.year - ((when.month, when.day) < (born.month, born.day)))


@dataclass
class Release:
    release_id: str
    observations: list[dict[str, Any]]
    patients: list[dict[str, Any]]
    report: dict[str, Any]
    aggregates: list[dict[str, Any]] | None = None  # differentially private, when configured


def build_release(selection: Selection, settings: FeedSettings, keys: KeyDomain, config_digest: str) -> Release:
    policy = settings.telemetry or TelemetryPolicy(settings.domain)
    observations = telemetry_rows(deidentify_series(selection.observations, policy, keys))
    first_seen: dict[str, str] = {}
    for resource in selection.observations:
        patient, when = _patient_id(resource), resource.get("effectiveDateTime")
        if patient and when and (patient not in first_seen or when < first_seen[patient]):
            first_seen[patient] = when
    keys.prefetch(settings.domain, list(selection.patients))
    patients = []
    for patient_id, patient in sorted(selection.patients.items()):
        age = _age(patient, first_seen.get(patient_id))  # age at first observation: the true age, before shifting
        patients.append({"patient": keys.pseudonym(settings.domain, patient_id),
                         "age": "90+" if age is not None and age >= 90 else str(age) if age is not None else "unknown",
                         "sex": patient.get("gender", "unknown")})
    # No consented Patient resource (device-only telemetry): an empty table, which check_release
    # refuses with its report before it needs a hierarchy (one cannot be built from no values).
    quasi = {"age": age_hierarchy([p["age"] for p in patients]),
             "sex": suppression_hierarchy([p["sex"] for p in patients])} if patients else dict.fromkeys(("age", "sex"))
    released, report = check_release(patients, quasi, settings.release)
    kept = {p["patient"] for p in released}
    observations = [row for row in observations if row["patient"] in kept]
    report["observations"] = len(observations)
    report["refused"] = selection.refused
    digest = hashlib.sha256(json.dumps([sorted(selection.message_ids), config_digest]).encode()).hexdigest()
    aggregates = None
    if settings.dp_epsilon:
        from medplat.deid.dp import PrivacyLedger, aggregates as dp_aggregates
        ledger = PrivacyLedger(settings.dp_epsilon)
        aggregates = dp_aggregates(observations, settings.dp_bounds, ledger)
        report["differentialPrivacy"] = ledger.report()
    return Release(digest[:24], observations, released, report, aggregates)


def _parquet(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer, compression="zstd")
    return buffer.getvalue()


class EncryptionError(RuntimeError):
    """The target cannot or did not encrypt as configured: nothing more is written."""


# What each target offers (checked on Debian's Swift 2.30 s3api, tests/test_analytics_feed_sse.py):
# AWS S3 takes aws:kms with a key id and echoes both in the PutObject response. Swift's s3api
# takes AES256 only, and only with its encryption middleware (keymaster / kms_keymaster keep the
# root secret), answers NotImplemented for aws:kms, echoes nothing, and silently ignores SSE-C
# headers (the object reads back without the customer key) — so SSE-C is never offered.
TARGET_SSE = {"aws": "aws:kms", "swift": "AES256"}


def sse_arguments(settings: FeedSettings) -> dict[str, str]:
    """The put_object SSE arguments for the configured target; a mismatch is a configuration error."""
    expected = TARGET_SSE.get(settings.target)
    if expected is None:
        raise EncryptionError(f"target {settings.target!r}: must be one of {sorted(TARGET_SSE)}")
    if settings.sse != expected:
        raise EncryptionError(f"target {settings.target} takes sse={expected}, not {settings.sse!r}")
    if settings.target == "aws":
        if not settings.kms_key_id:
            raise EncryptionError("target aws: kms_key_id (the analytics zone's key ARN) is required")
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": settings.kms_key_id}
    return {"ServerSideEncryption": "AES256"}


def check_encrypted(settings: FeedSettings, key: str, response: dict[str, Any]) -> None:
    """On AWS the PutObject answer must confirm SSE-KMS (with our key when given as an ARN): a
    server or proxy that dropped the header would otherwise go unnoticed. Swift confirms
    nothing; its encryption is checked on the object server (tests)."""
    if settings.target != "aws":
        return
    echoed, key_id = response.get("ServerSideEncryption"), response.get("SSEKMSKeyId")
    if echoed != "aws:kms" or (settings.kms_key_id.startswith("arn:") and key_id != settings.kms_key_id):
        raise EncryptionError(f"{key}: the server did not confirm SSE-KMS with {settings.kms_key_id} "
                              f"(answered {echoed!r}, key {key_id!r}); release stopped before its record")


class Writer:
    """Objects to the de-identified bucket, each with the SSE headers of the settings."""

    def __init__(self, s3, settings: FeedSettings) -> None:
        self.s3, self.settings = s3, settings
        self.sse = sse_arguments(settings)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError
        try:
            self.s3.head_object(Bucket=self.settings.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def put(self, key: str, body: bytes, content_type: str) -> None:
        # Content-MD5: the server refuses a body that arrived damaged (the manifest carries SHA-256).
        response = self.s3.put_object(Bucket=self.settings.bucket, Key=key, Body=body, ContentType=content_type,
                                      ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(), **self.sse)
        check_encrypted(self.settings, key, response)

    def withdraw(self, keys: list[str]) -> None:
        """Best effort: delete what a stopped release wrote (the server may be the thing that failed)."""
        from botocore.exceptions import BotoCoreError, ClientError
        for key in keys:
            try:
                self.s3.delete_object(Bucket=self.settings.bucket, Key=key)
            except (BotoCoreError, ClientError):
                pass


def write_release(s3, settings: FeedSettings, release: Release, signing_key) -> dict[str, Any]:
    """Write the release (data, manifest, then the signed record); a no-op if it is out already."""
    writer = Writer(s3, settings)
    base = f"{settings.prefix}/releases/{release.release_id}"
    record_key = f"{base}/release.json"
    if writer.exists(record_key):
        return {"releaseId": release.release_id, "status": "already released", "record": record_key}
    attempted: list[str] = []  # an object whose answer was refused (unconfirmed SSE) may exist: withdrawn too
    try:
        return _write_release(writer, settings, release, signing_key, record_key, attempted)
    except Exception:
        # Athena reads every object under a table's folder, not only those a record names: a
        # release that stopped half-way must not leave its parts behind.
        writer.withdraw(attempted)
        raise


def _write_release(writer: Writer, settings: FeedSettings, release: Release, signing_key, record_key: str,
                   attempted: list[str]) -> dict[str, Any]:
    base = f"{settings.prefix}/releases/{release.release_id}"
    files: dict[str, dict[str, Any]] = {}

    def put(key: str, body: bytes, rows: int, content_type: str = "application/vnd.apache.parquet") -> None:
        attempted.append(key)
        writer.put(key, body, content_type)
        files[key] = {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body), "rows": rows}

    by_day: dict[str, list[dict[str, Any]]] = {}
    for row in release.observations:
        by_day.setdefault(row["effective"].date().isoformat(), []).append(row)
    for day, rows in sorted(by_day.items()):
        put(f"{settings.prefix}/observations/day={day}/release={release.release_id}.parquet",
            _parquet(rows, OBSERVATIONS), len(rows))
    put(f"{settings.prefix}/patients/release={release.release_id}.parquet",
        _parquet(release.patients, PATIENTS), len(release.patients))
    if release.aggregates is not None:  # noisy once: a re-run finds the record and publishes nothing new
        put(f"{settings.prefix}/aggregates/release={release.release_id}.json",
            json.dumps(release.aggregates, indent=1).encode(), len(release.aggregates), "application/json")
    manifest = {"releaseId": release.release_id, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "files": files, "schemas": {"observations": str(OBSERVATIONS), "patients": str(PATIENTS)},
                "report": release.report}
    manifest_body = json.dumps(manifest, indent=1, default=str).encode()
    put(f"{base}/manifest.json", manifest_body, 0, "application/json")
    subjects = {key: meta["sha256"] for key, meta in files.items()}
    document = statement(subjects, {"releaseId": release.release_id, "bucket": settings.bucket,
                                    "report": json.loads(json.dumps(release.report, default=str))})
    document["predicateType"] = PREDICATE
    envelope = sign(document, signing_key)
    # The record makes the release visible: written last, after every file it names.
    attempted.append(record_key)
    writer.put(record_key, envelope.encode(), "application/json")
    return {"releaseId": release.release_id, "status": "released", "record": record_key, "files": files,
            "report": release.report}


def config_digest(settings: FeedSettings) -> str:
    described = {k: v for k, v in asdict(settings).items() if k not in ("limit",)}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()
