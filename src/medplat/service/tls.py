"""Serving over mutual TLS with uvicorn: client certificates from one CA, optional CRL."""
from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from medplat.service.logs import configure_logging
from medplat.service.settings import ServiceSettings


def _with_client_certificate(app, pem: str):
    """Wrap the ASGI app for one connection: its requests carry the ASGI TLS extension."""
    async def wrapped(scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            scope.setdefault("extensions", {})["tls"] = {"client_cert_chain": [pem], "tls_version": None}
        return await app(scope, receive, send)
    return wrapped


class ClientCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the verified client certificate in `scope["extensions"]["tls"]`
    (uvicorn does not implement the ASGI TLS extension itself)."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self.app = _with_client_certificate(self.app, ssl.DER_cert_to_PEM_cert(der))


def client_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """TLS 1.2+ client context trusting `ca`, presenting `cert`/`key` when given (mutual TLS)."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert and key:
        context.load_cert_chain(str(cert), str(key))
    return context


def server_config(app, settings: ServiceSettings) -> uvicorn.Config:
    tls = {}
    if settings.tls_cert and settings.tls_key:
        tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
        if settings.tls_client_ca:
            required = ssl.CERT_OPTIONAL if settings.tls_client_optional else ssl.CERT_REQUIRED
            tls.update(ssl_ca_certs=str(settings.tls_client_ca), ssl_cert_reqs=required)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, http=ClientCertH11Protocol, log_config=None, **tls)
    config.load()
    if config.ssl is not None:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.tls_crl:
            config.ssl.load_verify_locations(cafile=str(settings.tls_crl))
            config.ssl.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return config


def serve(app, settings: ServiceSettings) -> None:
    """Run the service, plus the health-only listener when `health_port` is set."""
    configure_logging(settings.log_level)
    servers = [uvicorn.Server(server_config(app, settings))]
    if settings.health_port:
        health = uvicorn.Config(app.state.health_app, host=settings.host, port=settings.health_port,
                                log_level=settings.log_level, access_log=False, log_config=None)
        servers.append(uvicorn.Server(health))

    async def run_all() -> None:
        await asyncio.gather(*(server.serve() for server in servers))

    asyncio.run(run_all())
