"""OpenTelemetry traces for every service, PHI-free by construction.

`install_tracing` (called by `create_app`) installs the process's SDK tracer provider and the
FastAPI instrumentation, so every request has a server span named by its route template. Spans
leave the process only through `PhiFreeExporter`, an allow-list: attributes outside
`ALLOWED_ATTRIBUTES` (raw URL, query, headers, client address, user agent, exception messages)
are dropped, span status descriptions and event attributes other than the exception type are
dropped, the caller's W3C `tracestate` is dropped, and the resource keeps only the service's name
and version. Site and device appear only
as opaque keyed ids (`opaque_id`: HMAC-SHA256 under the deployment's trace key), never patient or
encounter ids, never bodies.

Export is off unless `OTLP_ENDPOINT` is set (OTLP/gRPC; `http://` plain, `https://` TLS with
`OTLP_CA`); spans are recorded either way, so tests and debuggers can attach a processor.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanContext, Status, TraceState

from medplat import __version__
from medplat.service.settings import private_file

# Semantic-convention and medplat attributes that cannot carry PHI: methods, route templates,
# status codes, error types, counts, and keyed ids. Both the stable and the older HTTP names.
ALLOWED_ATTRIBUTES = frozenset({
    "http.request.method", "http.method", "http.route", "http.response.status_code", "http.status_code",
    "error.type", "exception.type",
    "messaging.system", "messaging.operation", "messaging.operation.type", "messaging.destination.template",
    "medplat.site", "medplat.device", "medplat.outcome", "medplat.count",
})
ALLOWED_RESOURCE = frozenset({"service.name", "service.version", "telemetry.sdk.language", "telemetry.sdk.name",
                              "telemetry.sdk.version"})
ALLOWED_EVENTS = frozenset({"exception"})
TRACER_NAME = "medplat"

_lock = threading.Lock()
_provider: TracerProvider | None = None
_exporting: set[str] = set()
_key: bytes = secrets.token_bytes(32)  # replaced by the deployment's key when settings name one


def _allowed(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: value for key, value in (attributes or {}).items() if key in ALLOWED_ATTRIBUTES}


def _span_name(span: ReadableSpan, attributes: Mapping[str, Any]) -> str:
    """Server spans are renamed from their allowed attributes (method + route template), so a raw
    path can never become a name; medplat's own spans have constant names written in the code."""
    if span.kind != trace.SpanKind.SERVER:
        return span.name
    method = attributes.get("http.request.method") or attributes.get("http.method") or "HTTP"
    route = attributes.get("http.route")
    return f"{method} {route}" if route else str(method)


def _without_trace_state(context: SpanContext | None) -> SpanContext | None:
    """The W3C `tracestate` comes from the caller's header verbatim (any text a client sends), so it
    never leaves the process; trace and span ids stay, so traces still join up."""
    if context is None:
        return None
    return SpanContext(context.trace_id, context.span_id, context.is_remote, context.trace_flags, TraceState())


def scrub(span: ReadableSpan) -> ReadableSpan:
    """The span as it may leave the process: allow-listed attributes only, no caller `tracestate`."""
    attributes = _allowed(span.attributes)
    events = [Event(event.name, {k: v for k, v in (event.attributes or {}).items() if k == "exception.type"},
                    event.timestamp) for event in span.events if event.name in ALLOWED_EVENTS]
    resource = Resource({k: v for k, v in span.resource.attributes.items() if k in ALLOWED_RESOURCE})
    return ReadableSpan(name=_span_name(span, attributes), context=_without_trace_state(span.context),
                        parent=_without_trace_state(span.parent), resource=resource, attributes=attributes,
                        events=events,
                        links=[Link(_without_trace_state(link.context), _allowed(link.attributes))
                               for link in span.links],
                        kind=span.kind, status=Status(span.status.status_code), start_time=span.start_time,
                        end_time=span.end_time, instrumentation_scope=span.instrumentation_scope)


class PhiFreeExporter(SpanExporter):
    """Wraps any exporter so only scrubbed spans reach it."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([scrub(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def opaque_id(value: str) -> str:
    """A keyed id for a site or device: stable per deployment, not recomputable without the trace key."""
    return hmac.new(_key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:20]


def annotate(span: trace.Span | None = None, *, site: str | None = None, device: str | None = None,
             **attributes: Any) -> None:
    """Set medplat attributes on a span (default: the current one); site and device keyed."""
    span = span or trace.get_current_span()
    if not span.is_recording():
        return
    if site is not None:
        span.set_attribute("medplat.site", opaque_id(site))
    if device is not None:
        span.set_attribute("medplat.device", opaque_id(device))
    for key, value in attributes.items():
        span.set_attribute(f"medplat.{key}", value)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME, __version__)


def _load_key(settings: Any) -> bytes:
    """The deployment's trace key (file from settings), else one kept in the service's data folder."""
    configured = getattr(settings, "trace_key_file", None)
    if configured:
        return Path(configured).read_bytes().strip()
    data_dir = getattr(settings, "data_dir", None)
    if data_dir is None:
        return _key
    path = Path(data_dir) / "trace.key"
    if not path.exists() or path.stat().st_size == 0:
        private_file(path)
        path.write_bytes(secrets.token_hex(32).encode())
    return path.read_bytes().strip()


def _otlp_exporter(endpoint: str, ca: Path | None) -> SpanExporter:
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    if endpoint.startswith("https://"):
        credentials = grpc.ssl_channel_credentials(Path(ca).read_bytes() if ca else None)
        return OTLPSpanExporter(endpoint=endpoint, credentials=credentials)
    return OTLPSpanExporter(endpoint=endpoint, insecure=True)


def provider(name: str = "medplat") -> TracerProvider:
    """The process's SDK tracer provider, installed once (the first service names the resource)."""
    global _provider
    with _lock:
        if _provider is None:
            _provider = TracerProvider(resource=Resource.create({"service.name": name, "service.version": __version__}))
            trace.set_tracer_provider(_provider)
        return _provider


def add_processor(processor: SpanProcessor) -> None:
    """Attach a processor to the process's provider (tests: an in-memory exporter behind the scrubber)."""
    provider().add_span_processor(processor)


def configure_tracing(name: str, settings: Any = None) -> TracerProvider:
    """The process's provider, the deployment's trace key, and OTLP export when configured."""
    global _key
    tracer_provider = provider(name)
    if settings is not None:
        _key = _load_key(settings)
    endpoint = getattr(settings, "otlp_endpoint", None) or None
    with _lock:
        if endpoint and endpoint not in _exporting:
            tracer_provider.add_span_processor(
                BatchSpanProcessor(PhiFreeExporter(_otlp_exporter(endpoint, getattr(settings, "otlp_ca", None)))))
            _exporting.add(endpoint)
    return tracer_provider


def install_tracing(app: Any, name: str, settings: Any = None) -> TracerProvider:
    """`configure_tracing` plus the FastAPI instrumentation of `app` (a server span per request)."""
    # The stable HTTP conventions (http.request.method, http.response.status_code), read once per process.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    tracer_provider = configure_tracing(name, settings)
    # No spans for probes and scrapes; no per-chunk receive/send spans (noise, and chunks are bodies).
    FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider, excluded_urls="/healthz,/readyz,/metrics",
                                       exclude_spans=["receive", "send"])
    return tracer_provider
