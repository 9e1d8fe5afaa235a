"""Honey tokens: 1,000 planted PHI strings flow through the edge forwarder to the ingest (real
processes, mutual TLS); none may appear in either service's logs, Prometheus metrics or trace
spans (both export every span over OTLP to a receiver in this test: names, attributes, events,
status, resources) — also not for the messages the ingest rejects (their refusal is logged, their
content is not)."""
from __future__ import annotations

import uuid

import httpx
import orjson
import pytest

from otlp_receiver import OtlpReceiver
from store_forward import Pki, forwarder_headers, forwarder_service, ingest_service, status, wait_until

pytestmark = pytest.mark.slow
TOKENS = 1000


def planted(index: int, token: str) -> dict:
    resource = {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "150456"}]},
                "subject": {"display": token, "identifier": {"system": "urn:oid:1.2.276.0.76.4.8", "value": token}},
                "note": [{"text": f"patient {token} born 1950-01-01"}],
                "valueQuantity": {"value": 97, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}
    if index % 100 == 0:  # every hundredth is invalid: the ingest rejects it, the forwarder sets it aside
        resource["valueQuantity"]["value"] = token
    return {"id": f"honey-{index:05d}", "device": "pump-1", "dataClass": "phi", "resource": resource}


def test_planted_phi_never_reaches_logs_or_metrics(tmp_path):
    tokens = [f"HONEY{uuid.uuid4().hex.upper()}" for _ in range(TOKENS)]
    pki = Pki(tmp_path / "pki")
    receiver = OtlpReceiver().start()
    ingest = ingest_service(tmp_path, pki)
    forwarder = forwarder_service(tmp_path, pki, ingest.port, None, otlp_endpoint=receiver.endpoint)
    ingest.env["MEDPLAT_INGEST_OTLP_ENDPOINT"] = receiver.endpoint
    for service in (ingest, forwarder):
        service.env["OTEL_BSP_SCHEDULE_DELAY"] = "200"  # export every 0.2 s (the SDK's standard variable)
    ingest.start()
    forwarder.start()
    try:
        headers = forwarder_headers(forwarder)
        for start in range(0, TOKENS, 250):
            envelopes = [planted(i, tokens[i]) for i in range(start, start + 250)]
            response = httpx.post(f"http://127.0.0.1:{forwarder.port}/messages", json=envelopes, headers=headers,
                                  timeout=60)
            assert response.status_code == 202, response.text
        wait_until(lambda: status(forwarder)["queueDepth"] == 0, timeout=120, what="outbox drained")
        rejected = httpx.get(f"http://127.0.0.1:{forwarder.port}/refusals", headers=headers).json()["refusals"]
        assert len(rejected) == TOKENS // 100, "the invalid ones were refused by the ingest"
        metrics = httpx.get(f"http://127.0.0.1:{forwarder.port}/metrics").text
    finally:
        forwarder.stop()  # a clean stop flushes the span exporters
        ingest.stop()
        receiver.stop()
    spans = receiver.spans()
    names = {(service, span.name) for service, span in spans}
    assert ("edge-forwarder", "POST /messages") in names and ("ingest", "POST /batches") in names, names
    assert ("edge-forwarder", "forward batch") in names, names
    batches = [span for service, span in spans if service == "ingest" and span.name == "POST /batches"]
    forwarded = {span.span_id for service, span in spans if span.name == "forward batch"}
    assert any(span.parent_span_id in forwarded for span in batches), "the ingest's spans join the forwarder's trace"
    assert any(a.key == "medplat.site" for span in batches for a in span.attributes), "site as a keyed id"
    observed = {"forwarder log": forwarder.log.read_text(), "ingest log": ingest.log.read_text(),
                "forwarder metrics": metrics, "refusal reasons": orjson.dumps(rejected).decode(), "trace spans": receiver.texts()}
    assert "rejected" in observed["forwarder log"], "the refusals were logged (so the check below means something)"
    for where, text in observed.items():
        leaked = [token for token in tokens if token in text]
        assert not leaked, f"{len(leaked)} planted PHI strings in the {where}, e.g. {leaked[0]}"
