"""portal: web views for clinicians (ward, patient with live vitals), site operators and compliance officers.

Server-rendered Jinja2 pages, htmx for partial updates and server-sent events for live vitals;
htmx and uPlot are vendored in `static/vendor/` (no CDN, no build step). People sign in with
OpenID Connect (`identity.py`); every route declares the view it belongs to, and roles open
views (`identity.VIEWS`). Every page showing patient data is audited with the viewer's identity.
Strict CSP (no inline scripts or styles), CSRF token on every state change, opaque ids in URLs.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import gc
import os
import io
import json
import random
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from medplat.service.access import public
from medplat.service.app import create_app
from medplat.service.audit import AuditClient, balp_event
from medplat.service.clients import ServiceClient
from medplat.service.db import make_engine
from medplat.service.fhir import FhirError
from medplat.service.settings import ServiceSettings, private_dir, service_config
from medplat.service.tls import serve
from medplat.workloads.portal import sources
from medplat.workloads.portal.identity import (DEMO_USERS, RelyingParty, Session, Sessions, demo_password,
                                               local_issuer, mint_access_token, session_from_claims, session_key)

NAME = "portal"
HERE = Path(__file__).parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
PUBLIC_PAGE = "sign-in and landing pages show no data"


class Settings(ServiceSettings):
    model_config = service_config(NAME)
    port: int = 8090
    base_url: str = "http://127.0.0.1:8090"  # how browsers reach the portal (OIDC redirect URI)
    oidc_issuer: str | None = None  # unset: the local demo issuer under /local-issuer
    oidc_client_id: str = "medplat-portal"
    oidc_client_secret_file: Path | None = None
    broker_url: str | None = None  # site broker, e.g. mqtt://portal@127.0.0.1:1883; unset: demo feed
    evidence_dir: Path = Path("build")
    evidence_public_key: Path | None = None  # default: <evidence_dir>/demo-evidence.pub
    compliance_runs_dir: Path = Path("build/compliance")  # `medplat compliance run --out` (its runs/*.json)
    # site -> {"forwarder_metrics": url, "certificate": path | "endpoint": https url (its TLS certificate),
    #          "fleet": url (TUF metadata), "audit_log": url (/checkpoint), "witness": the EU witness's key name,
    #          "workloads": "name=url,name=url" (their /readyz)}
    sites: dict[str, dict[str, str]] = {}
    demo_patients_per_ward: int = 8
    demo_feed: bool = True  # made-up vitals when no broker is configured
    # The clinical-workflow service (NEWS2, FHIR Tasks) and the sdc-bridge (device alarms); unset: demo
    # values, labelled as such. Reads use the portal's service token (`*_TOKEN_FILE`, rotated in place;
    # on the local issuer the portal mints its own); claims and acknowledgements use the signed-in
    # person's access token, so the services record who did it.
    workflow_url: str | None = None
    workflow_token_file: Path | None = None
    alarms_url: str | None = None
    alarms_token_file: Path | None = None
    api_audiences: list[str] = ["clinical-workflow", "sdc-bridge", "consent"]  # the local issuer's access tokens
    api_scopes: str = "task.read task.write observation.read alarms.read alarms.acknowledge"  # asked at sign-in
    feed_period_s: float = 5.0
    # The consent service: a patient's page, history, live stream and actions are refused to a clinician
    # the patient's consent denies (TREAT, access). Read with the portal's service token.
    consent_url: str | None = None
    consent_token_file: Path | None = None
    # TLS to those services (https URLs): the platform CA, and the portal's client certificate for mTLS.
    services_ca: Path | None = None
    services_client_cert: Path | None = None
    services_client_key: Path | None = None
    # Sessions live in the database (`DATABASE_URL`; SQLite in the data folder by default) sealed with
    # this AES-256 key (default: generated into <data_dir>/auth/session.key); replicas share both.
    session_key_file: Path | None = None
    # An open live stream re-checks, this often, that its session still stands (sign-out, expiry) and the
    # patient is still the person's to see (ward, consent): a stream outliving its session leaked PHI.
    stream_recheck_s: float = 5.0


def build(settings: Settings | None = None, *, census: sources.Census | None = None, issuer_transport=None):
    settings = settings or Settings()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    secure = settings.base_url.startswith("https://")
    sessions = Sessions(secure, make_engine(settings.resolved_database_url(NAME)),
                        session_key(settings.session_key_file or settings.data_dir / "auth" / "session.key"))
    census = census or sources.demo_census(settings.demo_patients_per_ward)
    vitals = sources.Vitals(census)
    audit = AuditClient.for_service(settings)
    router = APIRouter(include_in_schema=False)
    redirect_uri = settings.base_url.rstrip("/") + "/auth/callback"
    secret = settings.oidc_client_secret_file.read_text().strip() if settings.oidc_client_secret_file else None
    issuer = settings.oidc_issuer or settings.base_url.rstrip("/") + "/local-issuer"
    http = _services_http(settings)
    consent = sources.ConsentGate(ServiceClient(settings.consent_url, name="consent", client=http, token_file=(
        settings.consent_token_file or (None if settings.oidc_issuer else settings.data_dir / "auth" / "service-token"))
    )) if settings.consent_url else None
    feeds = _feeds(settings, census, issuer, http)
    site_checks = {f.name: f for f in feeds.feeds if isinstance(f, sources.SiteChecks)}

    def as_person(session: Session, url: str, name: str) -> ServiceClient:
        """A client that calls `name` with the signed-in person's own access token."""
        if not session.access_token:
            raise FhirError(403, f"your sign-in carries no access token for {name}", code="forbidden")
        return ServiceClient(url, token=session.access_token, client=http, name=name)

    def record(session: Session, interaction: str, patients: list[sources.Patient], what: str,
               outcome: str = "0") -> None:
        """One AuditEvent per page of patient data: who, which patients, which view."""
        audit.record(balp_event(interaction, source=NAME, agent=session.subject, outcome=outcome,
                                patient=patients[0].reference if len(patients) == 1 else None,
                                entities=[p.reference for p in patients] if len(patients) > 1 else [],
                                purpose="TREAT", description=what))

    def page(request: Request, template: str, session: Session | None, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, template, {"session": session, **context})

    def clinician(session: Session) -> str:
        return session.fhir_user or f"Practitioner/{session.subject}"

    def patient_for(session: Session, pid: str) -> sources.Patient:
        patient = census.patients.get(pid)
        if patient is None or patient.ward not in session.wards:  # same answer: do not reveal who exists
            # ...but the attempt is on record (someone trying other wards' ids, or guessing them).
            record(session, "read", [patient] if patient else [], "portal access refused: not a patient of your "
                   "wards", outcome="4")
            raise FhirError(404, "no such patient on your wards", code="not-found")
        if consent is not None:
            try:
                decision = consent.decision(patient.reference, clinician(session))
            except FhirError:
                raise FhirError(503, "the consent service cannot be asked; patient data stays closed",
                                code="transient") from None
            if decision == "deny":
                record(session, "read", [patient], "portal access refused by the patient's consent", outcome="4")
                raise FhirError(403, "the patient's consent does not permit you to access their data",
                                code="forbidden")
        return patient

    # ---- sign-in ---------------------------------------------------------------------------------

    @router.get("/", dependencies=[public(PUBLIC_PAGE)])
    def home(request: Request) -> Response:
        session = sessions.current(request)
        if session is None:
            return page(request, "index.html", None)
        view = next((v for v in ("ward", "ops", "compliance") if session.may(v)), None)
        return RedirectResponse(f"/{view}", 303) if view else page(request, "index.html", session)

    @router.get("/login", dependencies=[public(PUBLIC_PAGE)])
    async def login() -> Response:
        url, state = await relying_party.start()
        response = RedirectResponse(url, 303)
        response.set_cookie("portal_login", state, max_age=600, httponly=True, samesite="lax", secure=secure,
                            path="/auth/callback")
        return response

    @router.get("/auth/callback", dependencies=[public("OpenID Connect redirect; the code is bound to the "
                                                       "browser's login state and PKCE verifier")])
    async def callback(request: Request, code: str, state: str) -> Response:
        claims, access_token = await relying_party.finish(code, state, request.cookies.get("portal_login"))
        session = session_from_claims(claims, access_token)
        response = RedirectResponse("/", 303)
        sessions.set_cookie(response, sessions.create(session))
        response.delete_cookie("portal_login", path="/auth/callback")
        return response

    @router.post("/logout")
    def logout(request: Request, _session: Session = Depends(sessions.require_csrf("any"))) -> Response:
        sessions.end(request)
        response = Response(status_code=204, headers={"HX-Redirect": "/"})
        response.delete_cookie(sessions.cookie, path="/")
        return response

    # ---- clinician view --------------------------------------------------------------------------

    def ward_patients(session: Session) -> tuple[list[sources.Patient], list[sources.Patient]]:
        """The ward's patients this clinician may see, and those whose consent refuses them."""
        patients = census.of_wards(session.wards)
        if consent is None:
            return patients, []
        try:
            decisions = consent.decisions([p.reference for p in patients], clinician(session))
        except FhirError:
            raise FhirError(503, "the consent service cannot be asked; patient data stays closed",
                            code="transient") from None
        return ([p for p in patients if decisions[p.reference] != "deny"],
                [p for p in patients if decisions[p.reference] == "deny"])

    def ward_rows(patients: list[sources.Patient], refused: list[sources.Patient]) -> list[sources.WardRow]:
        latest = vitals.latest_of([p.id for p in patients])  # one lock for the ward, not one per bed
        rows = [sources.ward_row(p, latest[p.id], len(census.active_alarms(p.id))) for p in patients]
        return sorted(rows + [sources.restricted_row(p) for p in refused], key=lambda r: r.place)

    @router.get("/ward")
    def ward(request: Request, session: Session = Depends(sessions.require("ward"))) -> HTMLResponse:
        patients, refused = ward_patients(session)
        record(session, "search-type", patients, "portal ward list")
        partial = request.headers.get("hx-request") == "true"
        return page(request, "ward_rows.html" if partial else "ward.html", session, rows=ward_rows(patients, refused),
                    labels=sources.LABELS)

    @router.get("/patient/{pid}")
    def patient_page(request: Request, pid: str, session: Session = Depends(sessions.require("ward"))) -> HTMLResponse:
        patient = patient_for(session, pid)
        record(session, "read", [patient], "portal patient page")
        return page(request, "patient.html", session, patient=patient, latest=vitals.latest(pid),
                    alarms=census.open_items(pid), labels=sources.LABELS)

    @router.get("/patient/{pid}/series")
    def patient_series(pid: str, session: Session = Depends(sessions.require("ward"))) -> JSONResponse:
        patient = patient_for(session, pid)
        record(session, "read", [patient], "portal vitals history")
        return JSONResponse(vitals.series(pid))

    @router.get("/patient/{pid}/events")
    async def patient_events(request: Request, pid: str,
                             session: Session = Depends(sessions.require("ward"))) -> StreamingResponse:
        patient = patient_for(session, pid)
        record(session, "read", [patient], "portal live vitals stream")
        vitals.loop = asyncio.get_running_loop()
        queue = vitals.listen(pid)

        def still_open() -> bool:
            current = sessions.current(request)
            if current is None or not current.may("ward"):
                return False
            try:
                patient_for(current, pid)
            except FhirError:
                return False
            return True

        async def stream():
            checked = time.monotonic()
            try:
                yield "retry: 1000\n\n"
                while not await request.is_disconnected():
                    if time.monotonic() - checked >= settings.stream_recheck_s:
                        if not await asyncio.to_thread(still_open):
                            break  # the browser's reconnect then meets the 401/403/404
                        checked = time.monotonic()
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=min(15, settings.stream_recheck_s))
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"event: vital\ndata: {json.dumps(event)}\n\n"
            finally:
                vitals.unlisten(pid, queue)
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @router.post("/alarms/{aid}/ack")
    def acknowledge(request: Request, aid: str, session: Session = Depends(sessions.require_csrf("ward"))) -> HTMLResponse:
        alarm = census.alarms.get(aid)
        if alarm is None:
            raise FhirError(404, "no such alarm", code="not-found")
        patient = patient_for(session, alarm.patient)
        try:
            alarm = act_on(session, alarm)
        except FhirError as exc:
            if exc.status_code not in (502, 503):  # not the service's answer: e.g. no access token
                raise
            record(session, "update", [patient], f"portal {alarm.kind} refused by {alarm.source}", outcome="4")
            feeds.refresh()  # whatever changed there (someone else claimed it) shows with the answer
            return page(request, "alarm.html", session, alarm=census.alarms.get(aid, alarm),
                        error=_refusal(alarm.source, str(exc.detail)))
        record(session, "update", [patient], f"portal {alarm.kind} {alarm.state}")
        return page(request, "alarm.html", session, alarm=alarm)

    def act_on(session: Session, alarm: sources.Alarm) -> sources.Alarm:
        """Claim a Task / acknowledge an alarm where it lives; demo items change only here."""
        if alarm.source == "clinical-workflow":  # the Task API records the claim under the person's fhirUser
            task = as_person(session, settings.workflow_url, alarm.source).post(f"/Task/{alarm.id}/$claim", {})
            done = dataclasses.replace(alarm, state="claimed", by=(task.get("owner") or {}).get("reference"))
        elif alarm.source == "sdc-bridge":  # the bridge stops escalating and records who acknowledged
            as_person(session, settings.alarms_url, alarm.source).post(f"/alarms/{alarm.id}/acknowledge", {})
            done = dataclasses.replace(alarm, state="acknowledged", by=session.subject)
        else:
            if alarm.state == "active":
                alarm.state, alarm.by = ("acknowledged" if alarm.kind == "alarm" else "claimed"), session.subject
            return alarm
        census.replace(alarm.source, [done if a.id == alarm.id else a for a in census.alarms.values()
                                      if a.source == alarm.source])
        return done

    # ---- compliance portal -----------------------------------------------------------------------

    def bundle_for(bid: str) -> sources.BundleView:
        found = next((b for b in sources.evidence_bundles(settings.evidence_dir) if b.id == bid), None)
        if found is None:
            raise FhirError(404, "no such evidence bundle", code="not-found")
        return found

    def verification(bundle: sources.BundleView) -> dict[str, Any]:
        from medplat.evidence import bundle as evidence

        key = settings.evidence_public_key or settings.evidence_dir / "demo-evidence.pub"
        if not key.is_file():
            return {"ok": False, "problems": [f"no public key configured ({key.name} missing)"]}
        result = evidence.verify(bundle.path, key)
        return {"ok": result.ok, "problems": result.problems, "files": result.files}

    @router.get("/compliance")
    def compliance(request: Request, session: Session = Depends(sessions.require("compliance"))) -> HTMLResponse:
        bundles = sources.evidence_bundles(settings.evidence_dir)
        return page(request, "compliance.html", session, bundles=bundles,
                    verdicts={b.id: sources.verdicts(b.controls) for b in bundles},
                    runs=sources.compliance_drift(settings.compliance_runs_dir))

    @router.get("/compliance/{bid}")
    def bundle_page(request: Request, bid: str,
                    session: Session = Depends(sessions.require("compliance"))) -> HTMLResponse:
        bundle = bundle_for(bid)
        today = datetime.date.today().isoformat()
        return page(request, "bundle.html", session, bundle=bundle, verdicts=sources.verdicts(bundle.controls),
                    verification=verification(bundle), today=today)

    @router.get("/compliance/{bid}/controls/{cid}")
    def control_page(request: Request, bid: str, cid: str,
                     session: Session = Depends(sessions.require("compliance"))) -> HTMLResponse:
        bundle = bundle_for(bid)
        control = next((c for c in bundle.controls if c["control"] == cid), None)
        if control is None:
            raise FhirError(404, "no such control in this bundle", code="not-found")
        return page(request, "control.html", session, bundle=bundle, control=control)

    @router.get("/compliance/{bid}/download")
    def download(bid: str, _session: Session = Depends(sessions.require("compliance"))) -> Response:
        bundle = bundle_for(bid)
        archive = io.BytesIO()
        root = bundle.path.resolve()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            for path in sorted(bundle.path.rglob("*")):
                # The bundle's own files only: a link planted in the folder (to the session key, say) is
                # not followed out of it.
                if path.is_file() and not path.is_symlink() and path.resolve().is_relative_to(root):
                    zipped.write(path, str(path.relative_to(bundle.path)))
        return Response(archive.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{bundle.path.name}.zip"'})

    # ---- site operations -------------------------------------------------------------------------

    @router.get("/ops")
    def operations(request: Request, session: Session = Depends(sessions.require("ops"))) -> HTMLResponse:
        now = time.time()
        devices = sorted((device, round(now - seen, 1)) for device, seen in vitals.device_seen.items())
        sites = []
        for site, config in sorted(settings.sites.items()):
            expiry = sources.certificate_expiry(Path(config["certificate"])) if config.get("certificate") else None
            checked = site_checks[site].view if site in site_checks else {}
            sites.append({"name": site,
                          "forwarder": sources.forwarder_metrics(config["forwarder_metrics"])
                          if config.get("forwarder_metrics") else None,
                          "certificate_expiry": checked.get("certificate_expiry", "")[:10] or (
                              expiry.date().isoformat() if expiry else None), "checked": checked})
        feed_states = {name: {**state, "at": datetime.datetime.fromtimestamp(state["at"], datetime.timezone.utc)
                              .isoformat(timespec="seconds") if state["at"] else None}
                       for name, state in feeds.status.items()}
        return page(request, "ops.html", session, sites=sites, devices=devices, feeds=feed_states)

    relying_party = RelyingParty(issuer, settings.oidc_client_id, secret, redirect_uri, issuer_transport,
                                 api_scopes=settings.api_scopes)
    app = create_app(NAME, "Web views for clinicians, site operators and compliance officers", router,
                     lambda: {"patients": len(census.patients)}, settings=settings)
    if not settings.oidc_issuer:
        app.include_router(local_issuer(settings.base_url, settings.data_dir, settings.oidc_client_id, templates,
                                        settings.api_audiences))
        if relying_party.transport is None:  # the portal talks to its own issuer in-process
            relying_party.transport = httpx.ASGITransport(app=app)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    _html_errors(app, templates)
    _security_headers(app, hsts=secure)
    app.state.settings, app.state.audit, app.state.vitals, app.state.census = settings, audit, vitals, census
    app.state.sessions, app.state.feeds, app.state.consent = sessions, feeds, consent
    feeds.start()
    return app, settings


def _services_http(settings: Settings) -> httpx.Client:
    """One client for the platform's services: the platform CA and the portal's client certificate."""
    verify: Any = True
    if settings.services_ca or settings.services_client_cert:
        from medplat.service.tls import client_context

        verify = client_context(settings.services_ca, settings.services_client_cert, settings.services_client_key)
    return httpx.Client(timeout=10, verify=verify)


def _feeds(settings: Settings, census: sources.Census, issuer: str, http: httpx.Client) -> sources.Feeds:
    """The clinical services the deployment configured, each read with the portal's service token."""
    minted = settings.data_dir / "auth" / "service-token"

    def token_file(configured: Path | None) -> Path | None:
        if configured or settings.oidc_issuer:
            return configured
        return minted  # local issuer: the portal's own token, renewed before each round

    def renew_minted() -> None:
        if not settings.oidc_issuer and (not minted.exists() or time.time() - minted.stat().st_mtime > 1800):
            token = mint_access_token(settings.data_dir, issuer, settings.api_audiences, NAME,
                                      ["task.read", "observation.read", "alarms.read", "consent.decide"])
            temporary = minted.with_suffix(".tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(token)
            os.replace(temporary, minted)

    feeds = []
    if settings.workflow_url:
        feeds.append(sources.Workflow(census, ServiceClient(settings.workflow_url, name="clinical-workflow", client=http,
                                                            token_file=token_file(settings.workflow_token_file))))
    if settings.alarms_url:
        feeds.append(sources.DeviceAlarms(census, ServiceClient(settings.alarms_url, name="sdc-bridge", client=http,
                                                                token_file=token_file(settings.alarms_token_file))))
    if feeds or settings.consent_url:
        private_dir(minted.parent)
        renew_minted()
    feeds += [sources.SiteChecks(site, config, http) for site, config in sorted(settings.sites.items())
              if config.keys() & {"endpoint", "fleet", "audit_log", "workloads"}]
    keeps_token = bool(feeds or settings.consent_url)
    return sources.Feeds(feeds, settings.feed_period_s, before_round=renew_minted if keeps_token else None)


def _refusal(service: str, detail: str) -> str:
    """A service's refusal in one line: its OperationOutcome's diagnostics when it sent one."""
    _, _, body = detail.partition(": ")
    try:
        return f"{service}: {json.loads(body)['issue'][0]['diagnostics']}"
    except (ValueError, KeyError, IndexError, TypeError):
        return f"{service} could not be reached or refused ({detail[:120]})"


def _html_errors(app, templates) -> None:
    """Browsers get an HTML page (401: sign in); API clients keep the OperationOutcome."""
    original = app.exception_handlers[FhirError]

    async def handler(request: Request, exc: FhirError):
        if "text/html" not in request.headers.get("accept", "") or request.headers.get("hx-request"):
            return await original(request, exc)
        if exc.status_code == 401:
            return RedirectResponse("/", 303)
        return templates.TemplateResponse(request, "error.html", {"session": None, "status": exc.status_code,
                                                                  "message": str(exc.detail)},
                                           status_code=exc.status_code)
    app.add_exception_handler(FhirError, handler)


def _security_headers(app, hsts: bool) -> None:
    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        if hsts:  # served over https: the browser never tries plain http again (no downgrade, no cookie leak)
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def demo_feed(vitals: sources.Vitals, stop: threading.Event, period_s: float = 1.0) -> None:
    """Made-up vital signs for the demo census, one Observation per device and period."""
    rng = random.Random(3)
    codes = {"8867-4": (60, 110, "/min"), "59408-5": (88, 100, "%"), "9279-1": (10, 24, "/min"),
             "8480-6": (95, 150, "mm[Hg]"), "8310-5": (36.0, 38.5, "Cel")}
    while not stop.wait(period_s):
        for device in list(vitals.devices):
            for code, (low, high, unit) in codes.items():
                vitals.ingest({"device": device, "resource": {
                    "resourceType": "Observation", "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "effectiveDateTime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "valueQuantity": {"value": round(rng.uniform(low, high), 1), "unit": unit}}})


def settle_heap() -> None:
    """Move what startup built (modules, templates, census, fhir.resources models) out of the garbage
    collector's view: a full collection walked all of it in the middle of a page render (hundreds of ms
    at the ward view's p95 on a loaded machine), while each render's own garbage is short-lived."""
    gc.collect()
    gc.freeze()


def main() -> None:
    app, settings = build()
    stop = threading.Event()
    if settings.broker_url:
        sources.subscribe(app.state.vitals, settings.broker_url, f"portal-{random.getrandbits(32):08x}",
                          settings.broker_ca, settings.broker_password_file)
    elif settings.demo_feed:
        threading.Thread(target=demo_feed, args=(app.state.vitals, stop), daemon=True).start()
    if not settings.oidc_issuer:
        print(f"portal: {settings.base_url}/ — local demo issuer, users {', '.join(DEMO_USERS)}; password in "
              f"{settings.data_dir / 'auth' / 'demo-password'}", flush=True)
        demo_password(settings.data_dir)
    settle_heap()
    try:
        serve(app, settings)
    finally:
        stop.set()
