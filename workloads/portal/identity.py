"""Who is looking: OpenID Connect login (authlib, authorization code + PKCE), server-side sessions,
roles, CSRF tokens, and the local demo issuer used on embedded defaults.

The browser holds one opaque, HttpOnly, SameSite=Lax cookie (Secure and `__Host-` prefixed
under TLS); everything else (roles, wards, CSRF token) stays on the server. Roles and wards come
from the ID token's `roles` and `medplat_wards` claims.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey
from sqlalchemy import Column, Float, LargeBinary, MetaData, String, Table, delete, insert, select

from medplat.service.migrations import migrate
from medplat.service.access import mark, public
from medplat.service.fhir import FhirError
from medplat.service.settings import private_dir

ROLES = ("clinician", "site-operator", "compliance-officer", "admin")
# What each role may open. Patient data is for the treating clinician only (least privilege):
# administrators run the platform and read its evidence, they do not browse vitals.
VIEWS = {"ward": {"clinician"}, "ops": {"site-operator", "admin"}, "compliance": {"compliance-officer", "admin"},
         "any": set(ROLES)}
SESSION_TTL_S = 8 * 3600
LOGIN_TTL_S = 600
MAX_PENDING_LOGINS = 10_000  # /login is public: its server-side state must stay bounded
ALGORITHMS = ["Ed25519", "ES256", "RS256", "PS256"]


@dataclass
class Session:
    subject: str
    name: str
    roles: frozenset[str]
    wards: frozenset[str]
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    expires: float = field(default_factory=lambda: time.time() + SESSION_TTL_S)
    # The person's own access token for the platform's APIs (claim a Task, acknowledge an alarm as
    # themselves); it stays on the server, encrypted at rest in the session store.
    access_token: str | None = None
    fhir_user: str | None = None  # SMART `fhirUser` (e.g. Practitioner/123), how services name the person

    def may(self, view: str) -> bool:
        return bool(self.roles & VIEWS[view])

    def to_json(self) -> bytes:
        return json.dumps({**asdict(self), "roles": sorted(self.roles), "wards": sorted(self.wards)}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Session:
        fields = json.loads(data)
        return cls(**{**fields, "roles": frozenset(fields["roles"]), "wards": frozenset(fields["wards"])})


MIGRATIONS = Path(__file__).parent / "migrations"  # Alembic revisions of the session store
sessions_table = Table("portal_sessions", MetaData(),
                       Column("id", String(64), primary_key=True),  # SHA-256 of the cookie value, never the value
                       Column("expires", Float, nullable=False, index=True),
                       Column("sealed", LargeBinary, nullable=False))  # AES-256-GCM(session), bound to the id


def session_key(path: Path) -> AESGCM:
    """The session store's AES-256-GCM key (0600 in a private folder); replicas share it by file."""
    if not path.exists():
        private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another replica made it first
            pass
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(AESGCM.generate_key(bit_length=256))
                handle.flush()
                os.fsync(handle.fileno())
    key = path.read_bytes()
    if len(key) != 32:
        raise ValueError(f"{path}: the session key must be 32 bytes")
    return AESGCM(key)


class Sessions:
    """Sessions in a database (SQLite in the data folder by default, PostgreSQL by URL for replicas), so
    a restart or another replica keeps people signed in. The browser holds only a random id; the store
    holds its SHA-256 and the session sealed with AES-256-GCM (the id hash as associated data): a stolen
    database file gives neither cookies nor tokens."""

    def __init__(self, secure: bool, engine, key: AESGCM) -> None:
        self.secure = secure
        self.cookie = "__Host-portal" if secure else "portal"
        self.engine, self.key = engine, key
        migrate(engine, "portal", MIGRATIONS, sessions_table.metadata)

    @staticmethod
    def _row_id(sid: str) -> str:
        return hashlib.sha256(sid.encode()).hexdigest()

    def create(self, session: Session) -> str:
        sid, nonce = secrets.token_urlsafe(32), os.urandom(12)
        row = self._row_id(sid)
        sealed = nonce + self.key.encrypt(nonce, session.to_json(), row.encode())
        with self.engine.begin() as conn:
            conn.execute(delete(sessions_table).where(sessions_table.c.expires < time.time()))
            conn.execute(insert(sessions_table).values(id=row, expires=session.expires, sealed=sealed))
        return sid

    def current(self, request: Request) -> Session | None:
        sid = request.cookies.get(self.cookie)
        if not sid or len(sid) > 100:
            return None
        row = self._row_id(sid)
        with self.engine.connect() as conn:
            found = conn.execute(select(sessions_table.c.expires, sessions_table.c.sealed)
                                 .where(sessions_table.c.id == row)).first()
        if found is None or found.expires < time.time():
            return None
        try:
            return Session.from_json(self.key.decrypt(found.sealed[:12], found.sealed[12:], row.encode()))
        except InvalidTag:  # altered in the store, or sealed under another key: not a session
            return None
        except (TypeError, ValueError, KeyError):  # written by an incompatible portal version: sign in again
            return None

    def end(self, request: Request) -> None:
        sid = request.cookies.get(self.cookie, "")
        with self.engine.begin() as conn:
            conn.execute(delete(sessions_table).where(sessions_table.c.id == self._row_id(sid)))

    def set_cookie(self, response, sid: str) -> None:
        response.set_cookie(self.cookie, sid, max_age=SESSION_TTL_S, httponly=True, samesite="lax",
                            secure=self.secure, path="/")

    def require(self, view: str):
        """Access declaration: a signed-in person whose roles open `view` (401 → login page, 403 otherwise)."""
        def dependency(request: Request) -> Session:
            session = self.current(request)
            if session is None:
                raise FhirError(401, "sign in first", code="login")
            if not session.may(view):
                raise FhirError(403, f"your roles do not open the {view} view", code="forbidden")
            return session
        return mark(dependency, kind="session", view=view)

    def require_csrf(self, view: str):
        """Like `require`, for state-changing requests: the session's CSRF token in `X-CSRF-Token`."""
        inner = self.require(view)

        def dependency(request: Request) -> Session:
            session = inner(request)
            sent = request.headers.get("x-csrf-token", "")
            if not secrets.compare_digest(sent, session.csrf):
                raise FhirError(403, "missing or wrong CSRF token", code="forbidden")
            return session
        return mark(dependency, kind="session", view=view, csrf=True)


def _pkce_challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class RelyingParty:
    """The portal as an OpenID Connect client of `issuer` (discovery, code flow with PKCE, ID token check)."""

    def __init__(self, issuer: str, client_id: str, client_secret: str | None, redirect_uri: str,
                 transport: httpx.AsyncBaseTransport | None = None, api_scopes: str = "") -> None:
        self.issuer, self.client_id, self.client_secret = issuer.rstrip("/"), client_id, client_secret
        self.scope = " ".join(["openid", "profile", *api_scopes.split()])
        self.redirect_uri, self.transport = redirect_uri, transport
        self.metadata: dict[str, Any] | None = None
        self.keys: KeySet | None = None
        self.pending: dict[str, dict[str, Any]] = {}

    def _client(self) -> AsyncOAuth2Client:
        kwargs = {"transport": self.transport} if self.transport else {}
        return AsyncOAuth2Client(client_id=self.client_id, client_secret=self.client_secret,
                                 redirect_uri=self.redirect_uri, scope=self.scope,
                                 code_challenge_method="S256",
                                 token_endpoint_auth_method="client_secret_basic" if self.client_secret else "none",
                                 **kwargs)

    async def _discover(self) -> dict[str, Any]:
        """The issuer's metadata and keys (plain GETs; authlib's client is for the OAuth exchanges)."""
        if self.metadata is None:
            kwargs = {"transport": self.transport} if self.transport else {}
            async with httpx.AsyncClient(timeout=10, **kwargs) as client:
                response = await client.get(f"{self.issuer}/.well-known/openid-configuration")
                response.raise_for_status()
                metadata = response.json()
                if metadata.get("issuer", "").rstrip("/") != self.issuer:
                    raise FhirError(502, "identity provider metadata names another issuer", code="exception")
                self.keys = KeySet.import_key_set((await client.get(metadata["jwks_uri"])).json())
            self.metadata = metadata
        return self.metadata

    async def start(self) -> tuple[str, str]:
        """The authorization URL to send the browser to, and the state that binds it to this browser."""
        metadata = await self._discover()
        state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
        self._expire_pending()
        self.pending[state] = {"nonce": nonce, "verifier": verifier, "at": time.time()}
        async with self._client() as client:
            url, _ = client.create_authorization_url(metadata["authorization_endpoint"], state=state, nonce=nonce,
                                                     code_verifier=verifier)
        return url, state

    def _expire_pending(self) -> None:
        """Drop expired logins, and the oldest beyond the cap; insertion order is age order."""
        cutoff = time.time() - LOGIN_TTL_S
        while self.pending:
            state, login = next(iter(self.pending.items()))
            if login["at"] >= cutoff and len(self.pending) < MAX_PENDING_LOGINS:
                break
            del self.pending[state]

    async def finish(self, code: str, state: str, browser_state: str | None) -> tuple[dict[str, Any], str | None]:
        """Exchange the code; the verified ID token claims and the person's access token for the APIs."""
        login = self.pending.pop(state, None)
        if login is None or not browser_state or not secrets.compare_digest(state, browser_state):
            raise FhirError(400, "login expired or started in another browser; sign in again", code="login")
        metadata = await self._discover()
        async with self._client() as client:
            token = await client.fetch_token(metadata["token_endpoint"], code=code, code_verifier=login["verifier"])
        try:
            decoded = jwt.decode(token["id_token"], self.keys, algorithms=ALGORITHMS)
            jwt.JWTClaimsRegistry(iss={"essential": True, "value": self.issuer},
                                  aud={"essential": True, "value": self.client_id},
                                  nonce={"essential": True, "value": login["nonce"]},
                                  exp={"essential": True}, sub={"essential": True}).validate(decoded.claims)
        except (JoseError, KeyError, ValueError) as exc:
            raise FhirError(401, f"ID token rejected: {exc}", code="login") from None
        return decoded.claims, token.get("access_token")


def session_from_claims(claims: dict[str, Any], access_token: str | None = None) -> Session:
    roles = claims.get("roles") or []
    wards = claims.get("medplat_wards") or []
    if not isinstance(roles, list) or not isinstance(wards, list):
        raise FhirError(401, "ID token roles/medplat_wards are not lists", code="login")
    fhir_user = claims.get("fhirUser")
    return Session(subject=str(claims["sub"]), name=str(claims.get("name") or claims["sub"]),
                   roles=frozenset(r for r in roles if r in ROLES), wards=frozenset(str(w) for w in wards),
                   access_token=access_token, fhir_user=fhir_user if isinstance(fhir_user, str) else None)


# ---- local demo issuer (embedded defaults only) -------------------------------------------------

# The PractitionerRoles the demo clinicians hold: the clinical workflow lets only a Task's
# restriction.recipient (a person or one of these roles) claim or move it.
DEMO_CLINICIAN_ROLES = ["PractitionerRole/medical-team", "PractitionerRole/ward-nurse"]
DEMO_USERS = {
    "dr-ward-a": {"name": "Dr. A (ward A)", "roles": ["clinician"], "medplat_wards": ["ward-a"],
                  "fhirUser": "Practitioner/dr-ward-a", "medplat_practitioner_roles": DEMO_CLINICIAN_ROLES},
    "dr-ward-b": {"name": "Dr. B (ward B)", "roles": ["clinician"], "medplat_wards": ["ward-b"],
                  "fhirUser": "Practitioner/dr-ward-b", "medplat_practitioner_roles": DEMO_CLINICIAN_ROLES},
    "site-operator": {"name": "Site operator", "roles": ["site-operator"], "medplat_wards": []},
    "compliance-officer": {"name": "Compliance officer", "roles": ["compliance-officer"], "medplat_wards": []},
    "admin": {"name": "Platform admin", "roles": ["admin"], "medplat_wards": []},
}


def _issuer_key(data_dir: Path) -> OKPKey:
    path = private_dir(data_dir / "auth") / "oidc-issuer.jwk"
    if path.exists():
        return OKPKey.import_key(json.loads(path.read_text()))
    key = OKPKey.generate_key("Ed25519", parameters={"kid": uuid.uuid4().hex[:16]})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(key.as_dict(private=True), handle)
    return key


def demo_password(data_dir: Path) -> str:
    """The local issuer's demo password, generated once into the data folder (0600)."""
    path = private_dir(data_dir / "auth") / "demo-password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(12))
    return path.read_text().strip()


# What the local issuer's access tokens let a demo clinician do in the platform's APIs, as themselves.
CLINICIAN_API_SCOPES = ("task.read", "task.write", "observation.read", "alarms.read", "alarms.acknowledge")


def mint_access_token(data_dir: Path, issuer: str, audiences: list[str], subject: str, scopes: list[str],
                      ttl_s: int = 3600, **claims: Any) -> str:
    """An access token (JWT) from the local issuer: the services trust it when configured with the
    issuer and its JWKS (`AUTH_ISSUER`, `AUTH_JWKS`), as they would trust the site's OpenID provider."""
    key, now = _issuer_key(data_dir), int(time.time())
    body = {"iss": issuer, "aud": audiences, "sub": subject, "scope": " ".join(scopes), "iat": now, "nbf": now,
            "exp": now + ttl_s, "jti": uuid.uuid4().hex, **claims}
    return jwt.encode({"alg": "Ed25519", "kid": key.kid}, body, key, algorithms=ALGORITHMS)


def local_issuer(base_url: str, data_dir: Path, client_id: str, templates,
                 api_audiences: list[str] = ()) -> APIRouter:
    """A minimal OpenID provider for the demo users (authorization code + PKCE, Ed25519 ID tokens; access
    tokens are JWTs for `api_audiences`, carrying the clinician's fhirUser)."""
    issuer = base_url.rstrip("/") + "/local-issuer"
    key, password = _issuer_key(data_dir), demo_password(data_dir)
    codes: dict[str, dict[str, Any]] = {}
    router = APIRouter(prefix="/local-issuer", include_in_schema=False)
    reason = "the local demo identity provider's OpenID endpoints (embedded defaults only)"

    @router.get("/.well-known/openid-configuration", dependencies=[public(reason)])
    def configuration() -> JSONResponse:
        return JSONResponse({"issuer": issuer, "authorization_endpoint": f"{issuer}/authorize",
                             "token_endpoint": f"{issuer}/token", "jwks_uri": f"{issuer}/jwks",
                             "response_types_supported": ["code"], "subject_types_supported": ["public"],
                             "id_token_signing_alg_values_supported": ["EdDSA"],
                             "code_challenge_methods_supported": ["S256"]})

    @router.get("/jwks", dependencies=[public(reason)])
    def jwks() -> JSONResponse:
        return JSONResponse(KeySet([key]).as_dict(private=False))

    @router.get("/authorize", dependencies=[public(reason)])
    def authorize(request: Request, client_id: str, redirect_uri: str, state: str, nonce: str,
                  code_challenge: str, code_challenge_method: str = "S256") -> HTMLResponse:
        if client_id != request.app.state.settings.oidc_client_id or code_challenge_method != "S256":
            raise FhirError(400, "unknown client or PKCE method", code="invalid")
        return templates.TemplateResponse(request, "issuer_login.html", {
            "users": DEMO_USERS, "fields": {"client_id": client_id, "redirect_uri": redirect_uri, "state": state,
                                            "nonce": nonce, "code_challenge": code_challenge}})

    @router.post("/authorize", dependencies=[public(reason)])
    def sign_in(user: str = Form(..., max_length=64), password_: str = Form(..., alias="password", max_length=200),
                client_id: str = Form(..., max_length=200), redirect_uri: str = Form(..., max_length=500),
                state: str = Form(..., max_length=200), nonce: str = Form(..., max_length=200),
                code_challenge: str = Form(..., max_length=200)) -> RedirectResponse:
        if user not in DEMO_USERS or not secrets.compare_digest(password_, password):
            raise FhirError(401, "unknown user or wrong password", code="login")
        if client_id != clientid or not redirect_uri.startswith(base_url.rstrip("/") + "/"):
            raise FhirError(400, "redirect_uri is not this portal's", code="invalid")
        code = secrets.token_urlsafe(32)
        codes[code] = {"user": user, "nonce": nonce, "challenge": code_challenge, "at": time.time(),
                       "redirect_uri": redirect_uri}
        return RedirectResponse(f"{redirect_uri}?{httpx.QueryParams({'code': code, 'state': state})}", 303)

    clientid = client_id

    @router.post("/token", dependencies=[public(reason)])
    def token(grant_type: str = Form(...), code: str = Form(..., max_length=200),
              code_verifier: str = Form(..., max_length=200), client_id: str = Form(..., max_length=200),
              redirect_uri: str = Form("", max_length=500)) -> JSONResponse:
        grant = codes.pop(code, None)
        if (grant_type != "authorization_code" or grant is None or grant["at"] < time.time() - 60
                or client_id != clientid or _pkce_challenge(code_verifier) != grant["challenge"]):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        now, user = int(time.time()), grant["user"]
        claims = {"iss": issuer, "aud": clientid, "sub": user, "nonce": grant["nonce"], "iat": now, "exp": now + 300,
                  **DEMO_USERS[user]}
        id_token = jwt.encode({"alg": "Ed25519", "kid": key.kid}, claims, key, algorithms=ALGORITHMS)
        profile = DEMO_USERS[user]
        scopes = list(CLINICIAN_API_SCOPES) if "clinician" in profile["roles"] else []
        extra = {claim: profile[claim] for claim in ("fhirUser", "medplat_practitioner_roles") if claim in profile}
        access = mint_access_token(data_dir, issuer, list(api_audiences) or [clientid], user, scopes,
                                   ttl_s=8 * 3600, **extra)
        return JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": 8 * 3600,
                             "id_token": id_token})

    return router
