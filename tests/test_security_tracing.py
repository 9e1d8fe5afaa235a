"""OpenTelemetry traces from the foundation: every request of every service has a server span named
by its route template, and what leaves the process carries allow-listed attributes only (no raw
URL, query, header, client address, exception message or body; site and device only keyed)."""
from __future__ import annotations

import uuid

import pytest

from fastapi import APIRouter, Header
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from medplat.service import tracing
from medplat.service.access import public
from medplat.service.app import create_app
from medplat.service.settings import ServiceSettings


class WhileTesting(SimpleSpanProcessor):
    """Exports only until the test ends (the provider is per process and keeps its processors)."""

    active = True

    def on_end(self, span) -> None:
        if self.active:
            super().on_end(span)


@pytest.fixture
def capture():
    """(raw spans as recorded, spans as they would be exported) from the process's provider."""
    raw, exported = InMemorySpanExporter(), InMemorySpanExporter()
    processors = [WhileTesting(raw), WhileTesting(tracing.PhiFreeExporter(exported))]
    for processor in processors:
        tracing.add_processor(processor)
    yield raw, exported
    for processor in processors:
        processor.active = False


def phi_app(token: str, tmp_path):
    router = APIRouter()

    @router.get("/patients/{patient_id}", dependencies=[public("test route")])
    def read(patient_id: str, x_patient: str | None = Header(None)) -> dict:
        tracing.annotate(site="site-berlin", device=f"pump-{token}", count=1)
        return {"id": patient_id}

    @router.post("/fail", dependencies=[public("test route")])
    def fail() -> dict:
        raise RuntimeError(f"database said: duplicate key {token}")

    settings = ServiceSettings(data_dir=tmp_path / "data")
    return create_app("trace-test", "tracing test", router, lambda: {}, settings=settings)


def everything(span) -> str:
    return repr((span.name, dict(span.attributes or {}), [(e.name, dict(e.attributes or {})) for e in span.events],
                 span.status.description, dict(span.resource.attributes)))


def test_request_spans_carry_only_allow_listed_attributes(tmp_path, capture):
    token = f"HONEY{uuid.uuid4().hex.upper()}"
    raw, exported = capture
    client = TestClient(phi_app(token, tmp_path), raise_server_exceptions=False)
    assert client.get(f"/patients/{token}?name={token}", headers={"x-patient": token,
                                                                  "user-agent": token}).status_code == 200
    assert client.post("/fail", json={"name": token}).status_code == 500
    client.get("/healthz")

    spans = [s for s in exported.get_finished_spans() if s.resource.attributes.get("service.name")]
    names = [s.name for s in spans]
    assert "GET /patients/{patient_id}" in names and "POST /fail" in names, names
    assert not any("healthz" in name for name in names), "probes are not traced"
    for span in spans:
        assert set(span.attributes) <= tracing.ALLOWED_ATTRIBUTES
        assert token not in everything(span), f"planted PHI in exported span {span.name}"
    read = next(s for s in spans if s.name == "GET /patients/{patient_id}")
    assert read.attributes["http.route"] == "/patients/{patient_id}"
    assert read.attributes["http.response.status_code"] == 200
    failed = next(s for s in spans if s.name == "POST /fail")
    assert failed.attributes["http.response.status_code"] == 500 and failed.attributes["exception.type"] == "RuntimeError"
    # The allow-list is what keeps PHI out: the spans as recorded did hold it (URL, query, headers).
    assert any(token in everything(s) for s in raw.get_finished_spans()), "the scrubber had nothing to remove"


def test_site_and_device_are_keyed_ids(tmp_path, capture):
    token = f"HONEY{uuid.uuid4().hex.upper()}"
    _raw, exported = capture
    TestClient(phi_app(token, tmp_path)).get("/patients/p1")
    read = next(s for s in exported.get_finished_spans() if s.name == "GET /patients/{patient_id}")
    assert read.attributes["medplat.site"] == tracing.opaque_id("site-berlin") != "site-berlin"
    assert read.attributes["medplat.device"] == tracing.opaque_id(f"pump-{token}")
    key_file = tmp_path / "data" / "trace.key"
    assert key_file.stat().st_mode & 0o777 == 0o600, "the trace key is private to the service"
    assert len(key_file.read_bytes().strip()) >= 32


def test_trace_key_decides_the_opaque_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(tracing, "_key", tracing._key)  # restored afterwards
    (tmp_path / "a.key").write_text("a" * 64)
    (tmp_path / "b.key").write_text("b" * 64)
    ids = []
    for key in ("a.key", "b.key"):
        tracing.configure_tracing("trace-test", ServiceSettings(data_dir=tmp_path, trace_key_file=tmp_path / key))
        ids.append(tracing.opaque_id("pump-1"))
    assert ids[0] != ids[1], "without the key an id cannot be recomputed from a device name"


def test_caller_tracestate_never_leaves_the_process(tmp_path, capture):
    """A client's `tracestate` header is copied into the span context by the W3C propagator; found
    by sending PHI in it to `medplat serve consent` exporting to an OTLP receiver."""
    token = f"HONEY{uuid.uuid4().hex.upper()}"
    raw, exported = capture
    parent_trace, parent_span = "a" * 32, "b" * 16
    TestClient(phi_app(token, tmp_path)).get("/patients/p1", headers={
        "traceparent": f"00-{parent_trace}-{parent_span}-01", "tracestate": f"patient={token.lower()}"})
    recorded = [s for s in raw.get_finished_spans() if s.context.trace_id == int(parent_trace, 16)]
    assert any(token.lower() in str(s.context.trace_state) for s in recorded), "the attack did not reach the span"
    spans = [s for s in exported.get_finished_spans() if s.context.trace_id == int(parent_trace, 16)]
    assert spans, "the caller's trace id is kept, so traces still join up"
    for span in spans:
        assert len(span.context.trace_state) == 0 and len(span.parent.trace_state) == 0
    server = next(s for s in spans if s.name == "GET /patients/{patient_id}")
    assert server.parent.span_id == int(parent_span, 16)
