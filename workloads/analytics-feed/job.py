"""analytics-feed job: one release per run (a Kubernetes CronJob in the EU PHI zone).

    python -m medplat.workloads.analytics_feed.job      # settings from MEDPLAT_ANALYTICS_FEED_*

Exit 0 with one JSON line (released / already released / nothing to release); on failure one
line on stderr and exit 1 — the release record is written last, so a failed run leaves no
release a reader would take for complete.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from medplat.deid.keys import KeyDomain, load_key
from medplat.deid.release import ReleasePolicy, ReleaseRefused
from medplat.deid.telemetry import TelemetryPolicy
from medplat.evidence.signing import load_private
from medplat.service.audit import AuditClient, balp_event
from medplat.service.clients import ServiceClient
from medplat.service.db import make_engine
from medplat.service.settings import ServiceSettings, service_config
from medplat.workloads.analytics_feed.feed import (FeedSettings, build_release, config_digest, select_consented,
                                                    sse_arguments, write_release)

NAME = "analytics-feed"


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    consent_url: str = "https://consent:8443"
    pseudonymizer_url: str = "https://pseudonymizer:8443"
    service_token_file: Path | None = None
    deid_key_file: Path = Path("/etc/medplat/deid/project.key")      # the project key domain
    signing_key_file: Path = Path("/etc/medplat/release/signing.key")  # Ed25519, PKCS#8 PEM
    bucket: str = "medplat-deidentified"
    prefix: str = "telemetry"
    domain: str = "analytics"
    s3_endpoint_url: str | None = None     # unset: AWS S3 in s3_region
    s3_region: str = "eu-central-1"
    # The bucket's server: aws (SSE-KMS, sse=aws:kms with kms_key_id) or swift, the EU stand-in
    # (Swift's s3api with its encryption middleware: sse=AES256). Mismatches stop the run.
    s3_target: Literal["aws", "swift"] = "aws"
    sse: Literal["aws:kms", "AES256"] = "aws:kms"
    kms_key_id: str | None = None
    waveform: Literal["drop", "keep", "aggregate"] = "drop"
    resample_seconds: int | None = Field(60, ge=1)
    # Bounded: a mistyped policy must stop the run, not release unprotected (k=1 is no k-anonymity).
    k: int = Field(5, ge=2)
    l_diversity: int = Field(1, ge=1)
    suppression_limit: float = Field(0.05, ge=0, le=1)
    on_violation: Literal["refuse", "generalize"] = "generalize"
    limit: int = 1_000_000
    dp_epsilon: float | None = Field(None, gt=0, allow_inf_nan=False)  # optional DP aggregates (`dp` extra: OpenDP)
    dp_bounds: dict[str, tuple[float, float]] = {}  # MDC code -> bounds of a patient's mean


def feed_settings(settings: Settings) -> FeedSettings:
    return FeedSettings(
        bucket=settings.bucket, domain=settings.domain, prefix=settings.prefix, target=settings.s3_target,
        sse=settings.sse,
        kms_key_id=settings.kms_key_id, limit=settings.limit, dp_epsilon=settings.dp_epsilon,
        dp_bounds=dict(settings.dp_bounds),
        telemetry=TelemetryPolicy(settings.domain, waveform=settings.waveform,
                                  resample_seconds=settings.resample_seconds),
        release=ReleasePolicy(k=settings.k, l_diversity=settings.l_diversity,
                              suppression_limit=settings.suppression_limit, on_violation=settings.on_violation))


def run(engine, consent: ServiceClient, pseudonymizer: ServiceClient, s3, project_key: bytes, signing_key,
        settings: FeedSettings, audit: AuditClient) -> dict[str, Any]:
    def decide(patient: str, resource_type: str, data_class: str) -> dict[str, Any]:
        return consent.post("/decide", {"patient": patient, "purpose": settings.purpose, "actors": [settings.actor],
                                        "action": "disclose", "resourceType": resource_type, "dataClass": data_class})

    def pseudonymize(domain: str, values: list[str]) -> list[str]:
        return pseudonymizer.post(f"/domains/{domain}/pseudonymize", {"values": values})["pseudonyms"]

    selection = select_consented(engine, decide, settings.limit)
    if not selection.observations:
        result = {"status": "nothing to release", "refused": selection.refused}
    else:
        try:
            release = build_release(selection, settings, KeyDomain(project_key, pseudonymize),
                                    config_digest(settings))
        except ReleaseRefused as refused:
            audit.record(balp_event("execute", source=NAME, agent=NAME, purpose=settings.purpose, outcome="4",
                                    description=f"release refused: {refused}"))
            audit.flush()
            raise
        result = write_release(s3, settings, release, signing_key)
    audit.record(balp_event(
        "execute", source=NAME, agent=NAME, purpose=settings.purpose,
        entities=[f"s3://{settings.bucket}/{result['record']}"] if "record" in result else [],
        description=f"analytics release {result.get('releaseId', '-')}: {result['status']} "
                    f"({len(selection.message_ids)} consented messages, refused {selection.refused})"))
    audit.flush()
    return result


def s3_client(settings: Settings):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
                        config=Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"},
                                      # plain bodies with Content-MD5, not aws-chunked trailers (S3-compatible
                                      # servers such as Swift's s3api do not take those)
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required"))


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings()
        sse_arguments(feed_settings(settings))  # a target/encryption mismatch fails before any data is read
        result = run(make_engine(settings.resolved_database_url("ingest")),
                     ServiceClient(settings.consent_url, token_file=settings.service_token_file, name="consent"),
                     ServiceClient(settings.pseudonymizer_url, token_file=settings.service_token_file,
                                   name="pseudonymizer"),
                     s3_client(settings), load_key(settings.deid_key_file), load_private(settings.signing_key_file),
                     feed_settings(settings), AuditClient.for_service(settings))
    except Exception as exc:  # one line, non-zero exit: the CronJob's failed run is visible and retried
        message = " ".join(str(exc).split())  # pydantic's messages span lines
        print(f"{NAME}: error: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in result.items() if k != "files"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
