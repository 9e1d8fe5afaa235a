"""Who may call a route: every route declares its access, and `create_app` refuses to start
with a route that does not (default deny).

Three kinds of declaration, each a FastAPI dependency carrying a marker:

    from medplat.service.access import public, either
    # bearer JWT with scopes (users, apps, other services):
    @router.get("/Consent/{id}")
    def read(..., principal: Principal = Depends(auth.require("consent.read"))): ...
    # mutual TLS: the peer's certificate identity (site / workload), given to the handler:
    @router.post("/batches")
    def post(..., peer: Peer = Depends(peers.require(kind="site"))): ...
    # either of several (first that authenticates wins):
    @router.post("/entries")
    def append(..., who = Depends(either(peers.require(kind="workload"), auth.require("audit.write")))): ...
    # explicitly public, with the reason (probes, signed public metadata):
    @router.get("/checkpoint", dependencies=[public("signed checkpoints are meant to be gossiped")])

`peers = Peers(settings)` reads the client certificate from the TLS connection (uvicorn
served by `medplat.service.tls.serve`, ASGI TLS extension) or, only when the direct peer is
one of `settings.trusted_proxies` (the ingress), from `X-Forwarded-Tls-Client-Cert`
(URL-encoded PEM or base64 DER, as Traefik's passTLSClientCert sends it).
Certificate subjects map to identities: CN `edge-<site>` is site `<site>` (PlatformPki's site
credentials); any other CN is the workload or device of that name.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import Depends, Request

from medplat.service.fhir import FhirError

MARK = "__medplat_access__"


def mark(dependency: Callable, **declaration: Any) -> Callable:
    setattr(dependency, MARK, declaration)
    return dependency


def public(reason: str):
    """Declare a route open to anyone; `reason` says why (it shows in the OpenAPI document)."""
    if len(reason) < 10:
        raise ValueError("say why the route is public")

    def dependency() -> None:
        return None
    return Depends(mark(dependency, kind="public", reason=reason))


def either(*dependencies: Callable) -> Callable:
    """The first of `dependencies` that authenticates the request; the last one's refusal otherwise."""
    if not all(hasattr(d, MARK) for d in dependencies):
        raise ValueError("either() takes declared access dependencies")

    def dependency(request: Request):
        refusal: FhirError | None = None
        for candidate in dependencies:
            try:
                return candidate(request)
            except FhirError as exc:
                refusal = exc if refusal is None or exc.status_code == 403 else refusal
        raise refusal  # type: ignore[misc]
    return mark(dependency, kind="either", options=[getattr(d, MARK) for d in dependencies])


@dataclass(frozen=True)
class Peer:
    """The authenticated TLS client: its certificate's names, and the site it belongs to."""

    common_name: str
    names: tuple[str, ...]
    fingerprint: str

    @property
    def site(self) -> str | None:
        return self.common_name[len("edge-"):] if self.common_name.startswith("edge-") else None

    @property
    def kind(self) -> str:
        return "site" if self.site else "workload"

    @property
    def identity(self) -> str:
        return f"site/{self.site}" if self.site else f"workload/{self.common_name}"


def peer_from_certificate(certificate: x509.Certificate) -> Peer:
    common = [a.value for a in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    names = list(common)
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.UniformResourceIdentifier) + san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    der = certificate.public_bytes(serialization.Encoding.DER)
    return Peer(str(common[0]) if common else "", tuple(str(n) for n in names), hashlib.sha256(der).hexdigest())


def parse_forwarded_certificate(value: str) -> x509.Certificate:
    """URL-encoded PEM (nginx, Envoy) or base64 DER without armour (Traefik)."""
    text = urllib.parse.unquote(value).strip()
    if text.startswith("-----BEGIN"):
        return x509.load_pem_x509_certificate(text.encode())
    return x509.load_der_x509_certificate(base64.b64decode(text, validate=False))


class TrustedProxies:
    def __init__(self, entries: list[str]) -> None:
        self.networks, self.names = [], set()
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.add(entry)  # e.g. "testclient", Starlette's test transport

    def __contains__(self, host: str | None) -> bool:
        if not host:
            return False
        if host in self.names:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


class Peers:
    """Mutual-TLS peer identities for a service (see the module docstring)."""

    def __init__(self, settings) -> None:
        self.trusted = TrustedProxies(list(getattr(settings, "trusted_proxies", []) or []))
        self.header = getattr(settings, "client_cert_header", "x-forwarded-tls-client-cert").lower()

    def certificate(self, request: Request) -> x509.Certificate | None:
        tls = request.scope.get("extensions", {}).get("tls") or {}
        chain = tls.get("client_cert_chain") or []
        if chain:
            return x509.load_pem_x509_certificate(chain[0].encode())
        forwarded = request.headers.get(self.header)
        if forwarded is None:
            return None
        client = request.client.host if request.client else None
        if client not in self.trusted:
            raise FhirError(401, "forwarded client certificates are accepted only from the ingress",
                            code="login")
        try:
            return parse_forwarded_certificate(forwarded)
        except ValueError:
            raise FhirError(401, "forwarded client certificate is not a certificate", code="login") from None

    def require(self, kind: str | None = None, names: Callable[[], set[str]] | None = None) -> Callable:
        """Dependency: the TLS client's identity, optionally of one `kind` ("site", "workload", "device")."""
        def dependency(request: Request) -> Peer:
            certificate = self.certificate(request)
            if certificate is None:
                raise FhirError(401, "a client certificate (mutual TLS) is required", code="login")
            peer = peer_from_certificate(certificate)
            if kind == "site" and peer.site is None:
                raise FhirError(403, f"certificate {peer.common_name!r} is not a site credential", code="forbidden")
            if kind == "workload" and peer.site is not None:
                raise FhirError(403, f"certificate {peer.common_name!r} is not a workload credential",
                                code="forbidden")
            if names is not None and peer.common_name not in names():
                raise FhirError(403, f"certificate {peer.common_name!r} may not call this", code="forbidden")
            return peer
        return mark(dependency, kind="mtls", peer=kind or "any")


def _declarations(dependant) -> list[dict[str, Any]]:
    found = []
    for sub in dependant.dependencies:
        if hasattr(sub.call, MARK):
            found.append(getattr(sub.call, MARK))
        found += _declarations(sub)
    return found


def route_access(route) -> list[dict[str, Any]]:
    """The access declarations of one FastAPI route (empty: undeclared)."""
    return _declarations(route.dependant)


def api_routes(app) -> list:
    """Every API route of an app, through included routers (FastAPI's route contexts)."""
    from fastapi.routing import APIRoute, iter_route_contexts

    return [context for context in iter_route_contexts(app.routes) if isinstance(context.original_route, APIRoute)]


def undeclared_routes(app) -> list[str]:
    return [f"{sorted(route.methods)} {route.path}" for route in api_routes(app) if not route_access(route)]


def security_requirements(declarations: list[dict[str, Any]]) -> list[dict[str, list[str]]]:
    """OpenAPI `security` for a route: any one of the listed requirement objects suffices."""
    options: list[dict[str, list[str]]] = []
    for declaration in declarations:
        if declaration["kind"] == "either":
            options += security_requirements(declaration["options"])
        elif declaration["kind"] == "bearer":
            options.append({"bearer": list(declaration["scopes"])})
        elif declaration["kind"] == "mtls":
            options.append({"mutualTLS": []})
        elif declaration["kind"] == "public":
            options.append({})
    return options
