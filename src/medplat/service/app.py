"""`create_app`: one FastAPI shape for every workload.

- default deny: a route without an access declaration (`medplat.service.access`) stops the
  service at startup; OpenAPI lists `securitySchemes` (bearer JWT, mutual TLS) per operation;
- every failure is a FHIR OperationOutcome: 4xx for bad input (also for input the database
  cannot hold: lone surrogates, integers past 64 bits), 5xx only for real faults, without
  stack traces or internal paths, and diagnostics truncated so input is never echoed whole;
- request bodies bounded while they stream in (413, `MAX_BODY_BYTES`, default 10 MiB): JSON
  bodies are read up to the limit and checked strictly (orjson) before any handler runs, other
  bodies stream through to the handler and fail with 413 the moment they pass the limit;
- traces: OpenTelemetry server spans for every request (`medplat.service.tracing`), exported only
  through its PHI-free allow-list;
- probes and metrics: `/healthz` (liveness: the process answers), `/readyz` (readiness: the
  service's `health()` — database, broker — succeeds), `/metrics` (Prometheus: requests by
  route template and status, latency; never a raw path, which can carry ids).
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from opentelemetry import trace
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy.exc import DataError, StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException

from medplat import __version__
from medplat.service.access import api_routes, public, route_access, security_requirements, undeclared_routes
from medplat.service.fhir import FHIR_JSON, FhirError, operation_outcome
from medplat.service.tracing import install_tracing

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_DIAGNOSTICS = 300
log = logging.getLogger("medplat.service")
PROBE = "probes and scrapers (kubelet, Prometheus) carry no credentials; no PHI here"


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_DIAGNOSTICS else text[:MAX_DIAGNOSTICS] + "… (truncated)"


def _outcome(status: int, diagnostics: str, **kwargs: Any) -> JSONResponse:
    return JSONResponse(operation_outcome(status, _truncate(diagnostics), **kwargs), status_code=status,
                        media_type=FHIR_JSON)


def _outcome_bytes(status: int, diagnostics: str, code: str | None = None) -> bytes:
    return orjson.dumps(operation_outcome(status, _truncate(diagnostics), code=code))


class BodyLimit:
    """ASGI middleware: read at most `max_bytes` of a request body, then 413; strict JSON or 400."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send, 413, f"request body exceeds {self.max_bytes} bytes")
        if b"json" not in headers.get(b"content-type", b""):
            return await self.app(scope, self._counted(receive), send)  # streamed through, counted
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._refuse(send, 413, f"request body exceeds {self.max_bytes} bytes")
            if not message.get("more_body"):
                break
        if body:
            try:
                orjson.loads(body)  # refuses lone surrogates, NaN, invalid UTF-8
            except orjson.JSONDecodeError as exc:
                return await self._refuse(send, 400, f"body is not valid JSON: {exc}")
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()
        await self.app(scope, replay, send)

    def _counted(self, receive):
        """`receive` that fails the request with 413 as soon as the body passes the limit."""
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise FhirError(413, f"request body exceeds {self.max_bytes} bytes", code="too-costly")
            return message
        return counted

    @staticmethod
    async def _refuse(send, status: int, diagnostics: str) -> None:
        body = _outcome_bytes(status, diagnostics, code="too-costly" if status == 413 else "invalid")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", FHIR_JSON.encode()), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: measure every request, and turn any unhandled exception into an OperationOutcome
    (422 when only input can cause it, else 500 with an incident id logged) without dropping the connection."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500
        response_started = False

        async def tracked_send(message) -> None:
            nonlocal response_started, status
            if message["type"] == "http.response.start":
                response_started, status = True, message["status"]
            await send(message)
        try:
            await self.app(scope, receive, tracked_send)
        except Exception as exc:
            _mark_span_failed(exc)
            if response_started:
                log.error("unhandled %s after the response started", type(exc).__name__, exc_info=exc)
            else:
                status, body = _unexpected_outcome(scope, exc)
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", FHIR_JSON.encode()),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.observe(scope, status, time.perf_counter() - started)


def _mark_span_failed(exc: Exception) -> None:
    """The request's span records the error's type only (its message may hold input)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("exception.type", type(exc).__name__)
        span.set_status(trace.StatusCode.ERROR)


def _unexpected_outcome(scope, exc: Exception) -> tuple[int, bytes]:
    if _is_input_error(exc):
        return 422, _outcome_bytes(422, f"a value cannot be stored as given ({type(exc).__name__})", code="invalid")
    incident = uuid.uuid4().hex[:12]
    log.error("unhandled %s on %s %s (incident %s)", type(exc).__name__, scope.get("method"),
              getattr(scope.get("route"), "path", "unmatched"), incident, exc_info=exc)
    return 500, _outcome_bytes(500, f"internal error (incident {incident})", code="exception")


class Metrics:
    """Per-app Prometheus registry: request counts and latency by route template."""

    def __init__(self, name: str, collectors: Iterable[Any] = ()) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("medplat_http_requests", "HTTP requests by route template and status",
                                ["service", "method", "route", "status"], registry=self.registry)
        self.latency = Histogram("medplat_http_request_seconds", "HTTP request latency by route template",
                                 ["service", "method", "route"], registry=self.registry)
        self.name = name
        for collector in collectors:
            self.registry.register(collector)

    def observe(self, scope, status: int, seconds: float) -> None:
        template = getattr(scope.get("route"), "path", "unmatched")
        self.requests.labels(self.name, scope["method"], template, str(status)).inc()
        self.latency.labels(self.name, scope["method"], template).observe(seconds)

    def response(self) -> Response:
        return Response(generate_latest(self.registry), media_type="text/plain; version=0.0.4")


def create_app(name: str, description: str, router: APIRouter, health: Callable[[], dict[str, Any]], *,
               settings: Any = None, max_body_bytes: int | None = None, collectors: Iterable[Any] = ()) -> FastAPI:
    app = FastAPI(title=f"medplat {name}", description=description, version=__version__)
    limit = max_body_bytes or getattr(settings, "max_body_bytes", None) or DEFAULT_MAX_BODY_BYTES
    metrics = Metrics(name, collectors)
    _install_error_handlers(app)
    _add_probes(app, name, health, metrics)
    app.include_router(router)
    undeclared = undeclared_routes(app)
    if undeclared:
        raise RuntimeError(f"{name}: routes without an access declaration (default deny): {', '.join(undeclared)}")

    app.add_middleware(BodyLimit, max_bytes=limit)
    app.add_middleware(Guard, metrics=metrics)  # outermost: counts and catches everything
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    install_tracing(app, name, settings)  # outermost of all: every request gets a span
    app.state.metrics = metrics
    app.state.health_app = health_app(name, health, metrics)
    return app


def _add_probes(app: FastAPI, name: str, health: Callable[[], dict[str, Any]], metrics: Metrics) -> None:
    @app.get("/healthz", tags=["health"], dependencies=[public(PROBE)])
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers (no dependency is checked)."""
        return {"status": "ok", "service": name}

    @app.get("/readyz", tags=["health"], dependencies=[public(PROBE)])
    def readyz() -> JSONResponse:
        """Readiness: the service's dependencies (database, broker) answer."""
        try:
            details = health()
        except Exception as exc:  # not ready: say what, without internals
            log.warning("readiness check failed: %s", type(exc).__name__)
            return _outcome(503, f"{name} is not ready ({type(exc).__name__})", code="transient")
        if details.get("ready") is False:  # the service says so itself (e.g. broker down, backlog high)
            return JSONResponse({"service": name, **details, "status": "not-ready"}, status_code=503)
        return JSONResponse({"status": "ready", "service": name, **details})

    @app.get("/metrics", tags=["health"], dependencies=[public(PROBE)])
    def prometheus() -> Response:
        return metrics.response()


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FhirError)
    async def _fhir_error(_request: Request, exc: FhirError) -> JSONResponse:
        return _outcome(exc.status_code, str(exc.detail), code=exc.code, expression=exc.expression)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _outcome(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return _outcome(422, f"{where}: {first['msg']}", code="invalid", expression=[where] if where else None)

def _is_input_error(exc: BaseException) -> bool:
    """Errors that only bad input causes: text the codec or database cannot hold, numbers out of range."""
    if isinstance(exc, (UnicodeError, OverflowError, DataError, orjson.JSONEncodeError)):
        return True
    return isinstance(exc, StatementError) and isinstance(exc.orig, (UnicodeError, OverflowError))


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "OAuth2 access token (JWT) from the platform issuer; scopes per operation"},
        "mutualTLS": {"type": "mutualTLS", "description": "client certificate from the platform CA (PlatformPki)"},
    }
    for route in api_routes(app):
        for method in route.methods:
            operation = schema.get("paths", {}).get(route.path_format, {}).get(method.lower())
            if operation is not None:
                operation["security"] = security_requirements(route_access(route))
    app.openapi_schema = schema
    return schema


def health_app(name: str, health: Callable[[], dict[str, Any]], metrics: Metrics | None = None) -> FastAPI:
    """Probes and metrics alone, for the plain-HTTP listener of an mTLS-only service."""
    app = FastAPI(title=f"medplat {name} health", docs_url=None, redoc_url=None, openapi_url=None)
    _install_error_handlers(app)
    _add_probes(app, name, health, metrics or Metrics(name))
    return app
