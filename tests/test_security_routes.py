"""Default deny, checked by walking the routes: every route of every service is authenticated
(bearer scopes or mutual TLS) or on the explicit public list, so a new route cannot be added
open by accident; an undeclared route stops the service at startup."""
from __future__ import annotations

import importlib
import re

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from medplat.service.access import api_routes, route_access
from medplat.service.app import create_app

SERVICES = ["ingest", "audit-log", "fleet", "consent", "pseudonymizer", "edge-forwarder", "dicom-anonymizer",
            "sdc-bridge", "hl7-retrofit", "portal", "clinical-workflow"]
# (service, method, path) that anyone may call, and nothing else.
PUBLIC = {(service, "GET", path) for service in SERVICES for path in ("/healthz", "/readyz", "/metrics")} | {
    ("audit-log", "GET", "/checkpoint"), ("audit-log", "GET", "/verifier"), ("audit-log", "GET", "/witness/verifier"),
    ("fleet", "GET", "/tuf/metadata/{name}"), ("fleet", "GET", "/tuf/targets/{name:path}"),
    # portal: landing and sign-in pages, the OIDC callback (bound to the browser's login state), and the
    # local demo issuer's OpenID endpoints (embedded defaults only).
    ("portal", "GET", "/"), ("portal", "GET", "/login"), ("portal", "GET", "/auth/callback"),
    ("portal", "GET", "/local-issuer/.well-known/openid-configuration"), ("portal", "GET", "/local-issuer/jwks"),
    ("portal", "GET", "/local-issuer/authorize"), ("portal", "POST", "/local-issuer/authorize"),
    ("portal", "POST", "/local-issuer/token"),
    ("clinical-workflow", "GET", "/cds-services"),  # CDS Hooks 2.0 discovery (no patient data)
}
FASTAPI_DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def build(service: str, tmp_path):
    module = importlib.import_module(f"medplat.workloads.{service.replace('-', '_')}.app")
    return module.build(module.Settings(data_dir=tmp_path))[0]


def access_kinds(declarations) -> set[str]:
    kinds = set()
    for declaration in declarations:
        kinds |= access_kinds(declaration["options"]) if declaration["kind"] == "either" else {declaration["kind"]}
    return kinds


@pytest.mark.parametrize("service", SERVICES)
def test_every_route_is_authenticated_or_explicitly_public(service, tmp_path):
    app = build(service, tmp_path)
    seen = set()
    for route in api_routes(app):
        if route.path in FASTAPI_DOCS:
            continue
        kinds = access_kinds(route_access(route))
        for method in route.methods:
            seen.add((service, method, route.path))
            if (service, method, route.path) in PUBLIC:
                assert kinds == {"public"}, (method, route.path, kinds)
            else:
                assert kinds and "public" not in kinds, f"{service} {method} {route.path} is not authenticated"
    assert {p for p in PUBLIC if p[0] == service} <= seen
    openapi = app.openapi()
    assert set(openapi["components"]["securitySchemes"]) == {"bearer", "mutualTLS"}
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            public = any((service, method.upper(), path) == (s, m, re.sub(r":\w+}", "}", p)) for s, m, p in PUBLIC)
            assert operation["security"] == [{}] if public else {} not in operation["security"], (path, method)
    close = getattr(getattr(app.state, "audit", None), "close", None)
    if close:
        close()


def test_an_undeclared_route_stops_the_service_at_startup():
    router = APIRouter()

    @router.get("/patients")
    def patients() -> list:
        return []

    with pytest.raises(RuntimeError, match=r"default deny.*/patients"):
        create_app("leaky", "a service with an open route", router, lambda: {})


def test_unauthenticated_calls_get_401_operation_outcomes(tmp_path):
    app = build("consent", tmp_path)
    with TestClient(app) as client:
        response = client.get("/Consent", params={"patient": "Patient/p1"})
        assert response.status_code == 401 and response.json()["resourceType"] == "OperationOutcome"
        assert client.get("/healthz").json()["status"] == "ok"
    app.state.audit.close()
