"""CDS Hooks 2.0 client authentication ("Trusting CDS Clients", https://cds-hooks.hl7.org/2.0/#trusting-cds-clients).

The CDS client (the EHR) signs a short-lived JWT with its own private key and sends it as
`Authorization: Bearer <JWT>` with each service call. This service trusts only the issuers it is
configured with (`CDS_CLIENTS`: iss -> that client's JWK Set, an https URL or a file) and checks:
the signature against the issuer's keys (ES384/RS384, which the spec requires services to support;
ES256/RS256 also accepted; a `jku` header only when it is the configured JWK Set URL), `aud` = this
service endpoint's URL (`CDS_BASE_URL` + /cds-services/<id>), `exp` (and a lifetime of at most five
minutes, as the spec recommends), `iat`, and `jti` never seen before from that issuer (kept in the
database until the JWT expires, so a restart does not reopen the replay window)."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable

import httpx
import orjson
from fastapi import Request
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError

from medplat.service.access import mark
from medplat.service.auth import Principal
from medplat.service.fhir import FhirError
from medplat.workloads.clinical_workflow import store

ALGORITHMS = ["ES384", "RS384", "ES256", "RS256"]
MAX_LIFETIME_S = 300  # CDS Hooks: "the expiration time SHOULD be set to five minutes or less"
CLOCK_SKEW_S = 30
REFETCH_INTERVAL_S = 60


def _refused(reason: str) -> FhirError:
    return FhirError(401, f"CDS client JWT rejected: {reason}", code="login")


class TrustedClient:
    def __init__(self, issuer: str, jwks: str) -> None:
        self.issuer, self.jwks = issuer, jwks
        self.keys: KeySet | None = None
        self.fetched_at = 0.0

    @property
    def remote(self) -> bool:
        return self.jwks.startswith("https://")

    def key_set(self, refresh: bool = False) -> KeySet:
        if self.keys is None or (refresh and self.remote and time.monotonic() - self.fetched_at > REFETCH_INTERVAL_S):
            self.fetched_at = time.monotonic()
            data = httpx.get(self.jwks, timeout=5).json() if self.remote else json.loads(Path(self.jwks).read_text())
            self.keys = KeySet.import_key_set(data)
        return self.keys


class CdsClients:
    def __init__(self, clients: dict[str, str], base_url: str | None, db) -> None:
        for issuer, jwks in clients.items():
            if not (jwks.startswith("https://") or Path(jwks).is_file()):
                raise ValueError(f"CDS client {issuer}: JWK Set {jwks!r} is neither an https URL nor a file")
        if clients and not base_url:
            raise ValueError("CDS_BASE_URL (this service's public URL) is needed to check the CDS client JWT's aud")
        self.clients = {issuer: TrustedClient(issuer, jwks) for issuer, jwks in clients.items()}
        self.base_url = (base_url or "").rstrip("/")
        self.db = db
        self._lock = threading.Lock()

    def audience(self, service_id: str) -> str:
        return f"{self.base_url}/cds-services/{service_id}"

    def verify(self, token: str, service_id: str) -> Principal:
        try:
            unverified = jws.extract_compact(token.encode())
            header, claims = unverified.headers(), orjson.loads(unverified.payload)
        except (JoseError, ValueError, TypeError):
            raise _refused("not a signed JWT") from None
        issuer = claims.get("iss") if isinstance(claims, dict) else None
        client = self.clients.get(issuer) if isinstance(issuer, str) else None
        if client is None:
            raise _refused(f"issuer {str(issuer)[:200]!r} is not a trusted CDS client")
        if "jku" in header and header["jku"] != client.jwks:
            raise _refused("jku is not the issuer's configured JWK Set")
        decoded = self._decode(token, client)
        registry = jwt.JWTClaimsRegistry(
            leeway=CLOCK_SKEW_S, iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": self.audience(service_id)},
            exp={"essential": True}, iat={"essential": True}, jti={"essential": True})
        try:
            registry.validate(decoded.claims)
        except JoseError as exc:
            raise _refused(str(exc)) from None
        expires, issued = decoded.claims["exp"], decoded.claims["iat"]
        if not isinstance(expires, (int, float)) or not isinstance(issued, (int, float)) \
                or expires - time.time() > MAX_LIFETIME_S + CLOCK_SKEW_S:
            raise _refused(f"exp must be at most {MAX_LIFETIME_S} s ahead")
        self._remember(issuer, str(decoded.claims["jti"]), float(expires))
        return Principal(issuer, frozenset({"cds.hooks"}), decoded.claims)

    @staticmethod
    def _decode(token: str, client: TrustedClient):
        try:
            return jwt.decode(token, client.key_set(), algorithms=ALGORITHMS)
        except (JoseError, ValueError) as exc:
            try:  # the client may have rotated its keys (remote JWK Sets only, at most once a minute)
                return jwt.decode(token, client.key_set(refresh=True), algorithms=ALGORITHMS)
            except (JoseError, ValueError, httpx.HTTPError):
                raise _refused(str(exc)) from None

    def _remember(self, issuer: str, jti: str, expires: float) -> None:
        with self._lock:
            with self.db.begin() as conn:
                conn.execute(delete(store.cds_jti).where(store.cds_jti.c.expires < time.time() - CLOCK_SKEW_S))
            try:
                with self.db.begin() as conn:
                    conn.execute(insert(store.cds_jti).values(key=f"{issuer}\n{jti}"[:600], expires=expires))
            except IntegrityError:
                raise _refused("jti already used (replay)") from None

    def require(self) -> Callable[[Request], Principal]:
        """Access declaration for the hook endpoints: a JWT signed by a trusted CDS client."""
        def dependency(request: Request) -> Principal:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise FhirError(401, "a bearer token is required (the CDS client's signed JWT)", code="login")
            if not self.clients:
                raise _refused("this service trusts no CDS client (CDS_CLIENTS is empty)")
            return self.verify(token.strip(), request.path_params.get("service_id", ""))
        return mark(dependency, kind="bearer", scopes=[], scheme="CDS Hooks client JWT")
