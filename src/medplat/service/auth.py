"""OAuth2 bearer tokens: JWTs verified with joserfc against the issuer's JWKS, scopes per operation.

Configured per service with `MEDPLAT_<NAME>_AUTH_ISSUER`, `_AUTH_AUDIENCE` and `_AUTH_JWKS`
(a file or an https URL). Without them the service uses a local issuer whose Ed25519 key is
generated into its data folder, and `medplat token NAME --scope ...` mints tokens for it: auth
is never off, so least privilege holds on embedded defaults too.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import Request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey

from medplat.service.access import mark
from medplat.service.fhir import FhirError
from medplat.service.settings import ServiceSettings, private_dir

ALGORITHMS = ["Ed25519", "ES256", "RS256", "PS256"]  # "Ed25519": RFC 9864 name of EdDSA over Ed25519
LOCAL_ISSUER = "urn:medplat:local-issuer"
JWKS_REFETCH_INTERVAL_S = 60.0  # an unknown key id refetches the issuer's JWKS at most this often


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]
    claims: dict


def _local_key(data_dir: Path) -> OKPKey:
    path = data_dir / "auth" / "issuer.jwk"
    if path.exists():
        return OKPKey.import_key(json.loads(path.read_text()))
    key = OKPKey.generate_key("Ed25519", parameters={"kid": uuid.uuid4().hex[:16]})
    private_dir(data_dir)
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(key.as_dict(private=True), handle)
    return key


def mint_local_token(data_dir: Path, audience: str, scopes: list[str], subject: str, ttl_s: int = 3600,
                     extra_claims: dict | None = None) -> str:
    """A token from the service's local issuer (embedded defaults only); `extra_claims` never
    override the registered ones."""
    key = _local_key(data_dir)
    now = int(time.time())
    claims = {**(extra_claims or {}),
              "iss": LOCAL_ISSUER, "aud": audience, "sub": subject, "scope": " ".join(scopes), "iat": now,
              "nbf": now, "exp": now + ttl_s, "jti": uuid.uuid4().hex}
    return jwt.encode({"alg": "Ed25519", "kid": key.kid}, claims, key, algorithms=ALGORITHMS)


class Authenticator:
    def __init__(self, service: str, settings: ServiceSettings) -> None:
        self.audience = settings.auth_audience or service
        self.source = settings.auth_jwks
        self._fetched_at = time.monotonic()
        if settings.auth_issuer and settings.auth_jwks:
            self.issuer = settings.auth_issuer
            self.keys = self._fetch()
        else:
            self.issuer = LOCAL_ISSUER
            self.keys = KeySet([_local_key(settings.data_dir)])
        self.registry = jwt.JWTClaimsRegistry(iss={"essential": True, "value": self.issuer},
                                              aud={"essential": True, "value": self.audience},
                                              exp={"essential": True}, sub={"essential": True})

    def _fetch(self) -> KeySet:
        source = str(self.source)
        data = httpx.get(source, timeout=10).json() if source.startswith("https://") else json.loads(
            Path(source).read_text())
        return KeySet.import_key_set(data)

    def _refetch_allowed(self) -> bool:
        """Remote JWKS only, and not more often than JWKS_REFETCH_INTERVAL_S (bad tokens must not DoS the IdP)."""
        if not (self.source and str(self.source).startswith("https://")):
            return False
        if time.monotonic() - self._fetched_at < JWKS_REFETCH_INTERVAL_S:
            return False
        self._fetched_at = time.monotonic()
        return True

    def verify(self, token: str) -> Principal:
        try:
            decoded = jwt.decode(token, self.keys, algorithms=ALGORITHMS)
        except (JoseError, ValueError) as exc:
            if not self._refetch_allowed():
                raise FhirError(401, f"invalid bearer token: {exc}", code="login") from None
            try:
                self.keys = self._fetch()  # the issuer may have rotated its keys
                decoded = jwt.decode(token, self.keys, algorithms=ALGORITHMS)
            except (JoseError, ValueError, httpx.HTTPError):
                raise FhirError(401, f"invalid bearer token: {exc}", code="login") from None
        try:
            self.registry.validate(decoded.claims)
        except JoseError as exc:
            raise FhirError(401, f"bearer token rejected: {exc}", code="login") from None
        return Principal(str(decoded.claims["sub"]), _scopes(decoded.claims.get("scope", "")), decoded.claims)

    def require(self, *scopes: str) -> Callable[[Request], Principal]:
        """FastAPI dependency: a valid token carrying every one of `scopes`."""
        def dependency(request: Request) -> Principal:
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise FhirError(401, "a bearer token is required", code="login")
            principal = self.verify(token.strip())
            missing = [s for s in scopes if s not in principal.scopes]
            if missing:
                raise FhirError(403, f"token lacks scope {' '.join(missing)}", code="forbidden")
            return principal
        return mark(dependency, kind="bearer", scopes=list(scopes))


def _scopes(claim) -> frozenset[str]:
    """RFC 8693 `scope`: a space-separated string (a list of strings tolerated); anything else is refused."""
    if isinstance(claim, str):
        return frozenset(claim.split())
    if isinstance(claim, list) and all(isinstance(item, str) for item in claim):
        return frozenset(claim)
    raise FhirError(401, "bearer token rejected: scope claim is not a string", code="login")
