"""portal: OpenID Connect sign-in per role, what each role may open, ward scoping, CSRF, cookies, CSP,
audit of every view of patient data, live vitals from the real site broker, the compliance portal on a
real signed evidence bundle."""
from __future__ import annotations

import datetime
import html
import json
import re
import threading
import time
import uuid
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.auditevent import AuditEvent
from typer.testing import CliRunner

from conftest import STACKS
from medplat.cli import app as cli
from medplat.workloads.portal import sources
from medplat.workloads.portal.app import Settings, build
from portal_helpers import Served, csrf_of, sign_in
from services import Mosquitto, free_port

VIEWS = {"/ward": {"dr-ward-a", "dr-ward-b"}, "/ops": {"site-operator", "admin"},
         "/compliance": {"compliance-officer", "admin"}}
USERS = ["dr-ward-a", "dr-ward-b", "site-operator", "compliance-officer", "admin"]


@pytest.fixture
def portal(tmp_path):
    app, settings = build(Settings(data_dir=tmp_path / "data", base_url="http://testserver",
                                   evidence_dir=tmp_path / "build"))
    yield app, settings
    app.state.audit.close()


def client_for(app, user: str, data_dir: Path) -> TestClient:
    client = TestClient(app)
    sign_in(client, user, data_dir)
    return client


def audit_events(app) -> list[dict]:
    app.state.audit.flush()
    spool = app.state.settings.data_dir / "audit-spool.jsonl"
    return [json.loads(line) for line in spool.read_text().splitlines()] if spool.exists() else []


@pytest.mark.parametrize("user", USERS)
def test_each_role_opens_its_views_and_is_refused_the_others(portal, user):
    app, settings = portal
    client = client_for(app, user, settings.data_dir)
    for path, allowed in VIEWS.items():
        response = client.get(path, headers={"accept": "text/html"})
        assert response.status_code == (200 if user in allowed else 403), (user, path)
    assert client.get("/", follow_redirects=False).status_code == 303  # to the first view the role opens


def test_without_a_session_nothing_but_sign_in(portal):
    app, _ = portal
    client = TestClient(app)
    for path in ("/ward", "/ops", "/compliance"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"accept": "text/html"}, follow_redirects=False).headers["location"] == "/"
    assert "sign-in" in client.get("/").text


def test_login_state_must_come_back_to_the_browser_that_started_it(portal):
    app, settings = portal
    victim, attacker = TestClient(app), TestClient(app)
    started = victim.get("/login", follow_redirects=False)
    form = victim.get(started.headers["location"])
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', form.text))
    from medplat.workloads.portal.identity import demo_password
    issued = victim.post("/local-issuer/authorize", data={**fields, "user": "admin",
                                                          "password": demo_password(settings.data_dir)},
                         follow_redirects=False)
    # Login CSRF: another browser replaying the callback URL has no matching login cookie.
    assert attacker.get(issued.headers["location"], follow_redirects=False).status_code == 400
    assert attacker.get("/ops").status_code == 401
    wrong = victim.post("/local-issuer/authorize", data={**fields, "user": "admin", "password": "guess"},
                        follow_redirects=False)
    assert wrong.status_code == 401


def test_a_clinician_sees_only_the_patients_of_their_wards_by_opaque_id(portal):
    app, settings = portal
    census = app.state.census
    client = client_for(app, "dr-ward-a", settings.data_dir)
    html = client.get("/ward").text
    links = re.findall(r'href="/patient/([^"]+)"', html)
    assert sorted(links) == sorted(p.id for p in census.patients.values() if p.ward == "ward-a")
    for patient in census.patients.values():
        assert (patient.name in html) == (patient.ward == "ward-a")
        assert patient.reference.split("/")[1] not in " ".join(links)  # no identifiers in URLs
    other = next(p for p in census.patients.values() if p.ward == "ward-b")
    assert client.get(f"/patient/{other.id}").status_code == 404
    assert client.get(f"/patient/{other.id}/series").status_code == 404


def test_every_view_of_patient_data_is_an_audit_event_naming_the_viewer(portal):
    app, settings = portal
    client = client_for(app, "dr-ward-a", settings.data_dir)
    patient = next(p for p in app.state.census.patients.values() if p.ward == "ward-a")
    client.get("/ward")
    client.get(f"/patient/{patient.id}")
    events = audit_events(app)
    for event in events:
        AuditEvent.model_validate(event)  # FHIR R4 AuditEvent, checked by fhir.resources
    page = [e for e in events if e.get("outcomeDesc") == "portal patient page"]
    assert len(page) == 1
    assert page[0]["agent"][0]["who"]["identifier"]["value"] == "dr-ward-a"
    assert {"reference": patient.reference} in [e["what"] for e in page[0]["entity"]]
    ward = [e for e in events if e.get("outcomeDesc") == "portal ward list"]
    assert len(ward) == 1 and len(ward[0]["entity"]) == 8


def test_acknowledging_an_alarm_needs_the_csrf_token_and_the_patients_ward(portal):
    app, settings = portal
    census = app.state.census
    client = client_for(app, "dr-ward-a", settings.data_dir)
    alarm = next(a for a in census.alarms.values() if a.kind == "alarm" and census.patients[a.patient].ward == "ward-a")
    page = client.get(f"/patient/{alarm.patient}").text
    assert client.post(f"/alarms/{alarm.id}/ack").status_code == 403
    assert client.post(f"/alarms/{alarm.id}/ack", headers={"X-CSRF-Token": "x" * 43}).status_code == 403
    assert alarm.state == "active"
    done = client.post(f"/alarms/{alarm.id}/ack", headers={"X-CSRF-Token": csrf_of(page)})
    assert done.status_code == 200 and "acknowledged by dr-ward-a" in done.text
    assert alarm.state == "acknowledged"
    foreign = next(a for a in census.alarms.values() if census.patients[a.patient].ward == "ward-b")
    assert client.post(f"/alarms/{foreign.id}/ack", headers={"X-CSRF-Token": csrf_of(page)}).status_code == 404
    assert foreign.state == "active"
    assert any(e.get("outcomeDesc") == "portal alarm acknowledged" for e in audit_events(app))


def test_cookies_csp_and_no_inline_script(portal, tmp_path):
    app, settings = portal
    client = TestClient(app)
    sign_in(client, "dr-ward-a", settings.data_dir)
    patient = next(p for p in app.state.census.patients.values() if p.ward == "ward-a")
    for path in ("/", "/ward", f"/patient/{patient.id}"):
        response = client.get(path)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", response.text), path  # every script is a file
        assert not re.search(r"\son\w+=", response.text) and "style=" not in response.text
    secure_app, _ = build(Settings(data_dir=tmp_path / "tls", base_url="https://testserver"))
    secure = TestClient(secure_app, base_url="https://testserver")
    sign_in(secure, "admin", tmp_path / "tls")
    cookie = [c for c in secure.cookies.jar if c.name == "__Host-portal"][0]
    assert cookie.secure and cookie.path == "/" and cookie.has_nonstandard_attr("HttpOnly")
    assert secure.get("/ward").headers["strict-transport-security"] == "max-age=31536000"
    assert "strict-transport-security" not in client.get("/ward").headers  # plain http: meaningless there
    secure_app.state.audit.close()


@pytest.fixture(scope="module")
def evidence(tmp_path_factory):
    """A real signed bundle from `medplat evidence export` (planned), with the demo key's name. The platform
    and workload SBOM scans (cyclonedx-py subprocesses, minutes on a loaded machine) are replaced by
    empty BOMs: the portal reads the control matrix, waivers and signature, which stay real."""
    from medplat.evidence import sbom
    patch = pytest.MonkeyPatch()
    empty = '{"bomFormat": "CycloneDX", "specVersion": "1.6"}'
    patch.setattr(sbom, "platform_sbom", lambda *a, **k: empty)
    patch.setattr(sbom, "workload_sbom", lambda *a, **k: empty)
    build_dir = tmp_path_factory.mktemp("build")
    runner = CliRunner()
    assert runner.invoke(cli, ["evidence", "keygen", str(build_dir / "demo-evidence.key")]).exit_code == 0
    result = runner.invoke(cli, ["evidence", "export", "--all", "--stacks-dir", str(STACKS), "-o",
                                 str(build_dir / "evidence-20261130-000000"), "--key",
                                 str(build_dir / "demo-evidence.key"), "--no-checkov", "--today", "2026-11-30"])
    patch.undo()
    assert result.exit_code == 0, result.output
    return build_dir


def test_compliance_portal_shows_verdicts_controls_and_the_verification(tmp_path, evidence):
    import shutil
    build_dir = tmp_path / "build"
    shutil.copytree(evidence, build_dir)
    app, settings = build(Settings(data_dir=tmp_path / "data", base_url="http://testserver", evidence_dir=build_dir))
    client = client_for(app, "compliance-officer", settings.data_dir)
    listing = client.get("/compliance").text
    bid = re.search(r'href="/compliance/([0-9a-f]{16})"', listing).group(1)
    matrix = json.loads((build_dir / "evidence-20261130-000000" / "control-matrix.json").read_text())["controls"]
    frameworks = {row["framework"] for row in matrix}
    assert all(framework in listing for framework in frameworks)
    page = client.get(f"/compliance/{bid}").text
    assert 'data-ok="true"' in page
    row = next(r for r in matrix if r["resources"] and r["checks"])
    control = client.get(f"/compliance/{bid}/controls/{row['control']}").text
    assert row["checks"][0]["id"] in control and row["resources"][0]["urn"] in control
    download = client.get(f"/compliance/{bid}/download")
    import io
    import zipfile
    assert "manifest.json" in zipfile.ZipFile(io.BytesIO(download.content)).namelist()
    # Tampering is shown, as `medplat evidence verify` reports it.
    (build_dir / "evidence-20261130-000000" / "control-matrix.csv").write_text("control,status\nX,pass\n")
    tampered = client.get(f"/compliance/{bid}").text
    assert 'data-ok="false"' in tampered and "modified: control-matrix.csv" in tampered
    app.state.audit.close()


def test_site_operations_reads_the_forwarders_prometheus_metrics(tmp_path):
    text = ("# TYPE medplat_outbox_depth gauge\nmedplat_outbox_depth 42.0\n"
            "# TYPE medplat_outbox_oldest_age_seconds gauge\nmedplat_outbox_oldest_age_seconds 7.5\n"
            "# TYPE medplat_forwarder_refused counter\n"
            'medplat_forwarder_refused_total{reason="outbox-full"} 3.0\n'
            'medplat_forwarder_refused_total{reason="egress-policy"} 1.0\n')
    port = free_port()
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, *args):
            pass
    server = HTTPServer(("127.0.0.1", port), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        app, settings = build(Settings(data_dir=tmp_path / "data", base_url="http://testserver",
                                       sites={"site-a": {"forwarder_metrics": f"http://127.0.0.1:{port}/metrics"},
                                              "site-b": {"forwarder_metrics": f"http://127.0.0.1:{free_port()}/m"}}))
        client = client_for(app, "site-operator", settings.data_dir)
        page = client.get("/ops").text
        assert "queue depth</dt><dd>42.0" in page and "oldest message age (s)</dt><dd>7.5" in page
        assert "egress-policy 1, outbox-full 3" in page
        assert "Forwarder: unreachable" in page  # site-b: said, not hidden
        app.state.audit.close()
    finally:
        server.shutdown()


def observation(code: str, value: float) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "effectiveDateTime": datetime.datetime.now(datetime.timezone.utc).isoformat(),  # a live measurement
            "valueQuantity": {"value": value, "unit": "/min"}}


@pytest.mark.slow
def test_an_observation_published_on_the_site_broker_reaches_the_patient_stream(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app, settings = build(Settings(data_dir=tmp_path / "data", base_url=base))
    subscriber = sources.subscribe(app.state.vitals, broker.url_for("portal"), "portal-test", None, None)
    server = Served(app, port=port)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sdc-{uuid.uuid4().hex[:6]}")
    Mosquitto.login(publisher, "sdc-bridge")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    try:
        client = httpx.Client(base_url=base)
        sign_in(client, "dr-ward-a", settings.data_dir)
        patient = next(p for p in app.state.census.patients.values() if p.ward == "ward-a")
        with client.stream("GET", f"/patient/{patient.id}/events", timeout=10) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")
            time.sleep(0.3)  # subscriber connected
            sent = time.time()
            envelope = {"id": str(uuid.uuid4()), "device": patient.devices[0], "dataClass": "phi",
                        "resource": observation("8867-4", 123.0)}
            publisher.publish(f"medplat/devices/{patient.devices[0]}/observation", json.dumps(envelope), qos=1).wait_for_publish(5)
            data = next(line for line in lines if line.startswith("data:"))
            latency = time.time() - sent
        event = json.loads(data[5:])
        assert event["metric"] == "HR" and event["value"] == 123.0
        assert latency < 1.0, latency
        assert app.state.vitals.latest(patient.id)["HR"] == 123.0
        # Another ward's clinician cannot open the stream.
        other = httpx.Client(base_url=base)
        sign_in(other, "dr-ward-b", settings.data_dir)
        assert other.get(f"/patient/{patient.id}/events").status_code == 404
    finally:
        publisher.loop_stop()
        subscriber.loop_stop()
        server.server.should_exit = True
        server.thread.join(timeout=10)
        broker.stop()
        app.state.audit.close()


def test_compliance_portal_shows_drift_between_runs_as_medplat_compliance_drift_does(tmp_path):
    """Two real `medplat compliance run`s (the small stack export, then the same stack drifted as
    tests/test_compliance_run.py drifts it): the portal lists the second run's drift, line for line what
    `medplat compliance drift` prints for the same two records."""
    from test_compliance_run import EXPORT, drifted_export, run

    out = tmp_path / "compliance"
    assert run(out, EXPORT).exit_code == 1  # the gate fails on its unlabelled parameter; the run is recorded
    assert run(out, drifted_export(tmp_path / "later.json")).exit_code == 1
    first, second = sorted((out / "runs").glob("*.json"))
    expected = CliRunner().invoke(cli, ["compliance", "drift", str(first), str(second)]).stdout.splitlines()
    assert "control NIS2-21.2.h: pass -> fail" in expected
    app, settings = build(Settings(data_dir=tmp_path / "data", base_url="http://testserver",
                                   evidence_dir=tmp_path / "build", compliance_runs_dir=out))
    client = client_for(app, "compliance-officer", settings.data_dir)
    page = client.get("/compliance").text
    rows = re.findall(r'<tr data-run="([^"]+)">\s*<td>[^<]*</td><td>([^<]*)</td>\s*<td>(.*?)</td>\s*</tr>', page, re.S)
    assert [(r[0], r[1]) for r in rows] == [(second.stem, first.stem), (first.stem, "first run")]
    shown = [html.unescape(line) for line in re.findall(r"<li>(.*?)</li>", rows[0][2])]
    assert shown == expected
    app.state.audit.close()


def test_sessions_survive_a_restart_and_reach_a_second_replica_sealed_at_rest(tmp_path):
    """One data folder (or database URL and session key) shared: a new process, or a second replica,
    knows the signed-in person; the store holds neither cookie values nor tokens in the clear (0600);
    an altered record is no session; signing out on one replica signs out on the other."""
    import sqlite3

    settings = Settings(data_dir=tmp_path / "data", base_url="http://testserver")
    first, _ = build(settings)
    browser = TestClient(first)
    sign_in(browser, "dr-ward-a", settings.data_dir)
    cookie = browser.cookies.get("portal")
    assert browser.get("/ward").status_code == 200
    first.state.audit.close()
    replica, _ = build(settings)  # a restart, or the second replica on the same store
    other = TestClient(replica, cookies={"portal": cookie})
    page = other.get("/ward")
    assert page.status_code == 200 and "Ward ward-a" in page.text
    store, key = settings.data_dir / "portal.sqlite", settings.data_dir / "auth" / "session.key"
    assert store.stat().st_mode & 0o077 == 0 and key.stat().st_mode & 0o077 == 0
    raw = store.read_bytes() + b"".join(p.read_bytes() for p in store.parent.glob("portal.sqlite-*"))
    session = replica.state.sessions.current(type("R", (), {"cookies": {"portal": cookie}})())
    assert session.access_token and session.access_token.encode() not in raw and cookie.encode() not in raw
    assert b"dr-ward-a" not in raw and session.csrf.encode() not in raw
    with sqlite3.connect(store) as db:  # flip one byte of the sealed session
        (sealed,) = db.execute("SELECT sealed FROM portal_sessions").fetchone()
        db.execute("UPDATE portal_sessions SET sealed = ?", (sealed[:-1] + bytes([sealed[-1] ^ 1]),))
    assert other.get("/ward").status_code == 401
    with sqlite3.connect(store) as db:
        db.execute("UPDATE portal_sessions SET sealed = ?", (sealed,))
    assert other.get("/ward").status_code == 200
    assert browser.post("/logout", headers={"X-CSRF-Token": csrf_of(page.text)}).status_code == 204
    assert other.get("/ward").status_code == 401
    replica.state.audit.close()


def test_news2_scores_count_once_across_rounds_and_the_trend_follows_the_last_two():
    """The workflow feed's cursor logic (the service itself is exercised in test_portal_workflow.py):
    a score repeated at the cursor instant is not counted twice, and only the ids at the cursor are kept."""
    census = sources.demo_census(1, wards=("ward-a",))
    patient = next(iter(census.patients.values()))

    def score(sid: str, total: int, second: int) -> dict:
        return {"resource": {"resourceType": "Observation", "id": sid, "subject": {"reference": patient.reference},
                             "issued": f"2026-11-30T05:00:0{second}+00:00", "valueInteger": total}}
    rounds = [[score("a", 1, 1), score("b", 3, 2)], [score("b", 3, 2)], [score("c", 3, 3)], [score("d", 2, 4)]]
    asked = []

    class Answers:
        def get(self, path, params=None):
            asked.append((path, dict(params or {})))
            return {"entry": rounds.pop(0)} if path == "/Observation" else {"entry": []}
    feed = sources.Workflow(census, Answers())
    trends = []
    for _ in range(4):
        feed.refresh()
        trends.append((patient.news2, patient.news2_trend))
    assert trends == [(3, "rising"), (3, "rising"), (3, "stable"), (2, "falling")]
    assert [p.get("_lastUpdated") for path, p in asked if path == "/Observation"] == [
        None, "gt2026-11-30T05:00:02+00:00", "gt2026-11-30T05:00:02+00:00", "gt2026-11-30T05:00:03+00:00"]
    assert feed.at_since == {"d"}


def test_a_non_finite_value_from_the_broker_is_ignored_not_shown_or_breaking_the_history(portal):
    """JSON from a device may carry NaN/Infinity (Python's json accepts them): such a point once showed
    as "nan" on the ward and made the patient's history a 500 (not JSON-compliant), so no chart."""
    app, settings = portal
    client = client_for(app, "dr-ward-a", settings.data_dir)
    patient = next(p for p in app.state.census.patients.values() if p.ward == "ward-a")
    for code, raw in [("8867-4", "NaN"), ("8310-5", "Infinity"), ("150456", "-Infinity")]:
        envelope = json.loads('{"device": "%s", "resource": {"resourceType": "Observation", "code": {"coding": '
                              '[{"code": "%s"}]}, "valueQuantity": {"value": %s}}}' % (patient.devices[0], code, raw))
        assert app.state.vitals.ingest(envelope) is False
    history = client.get(f"/patient/{patient.id}/series")
    assert history.status_code == 200
    ward = client.get("/ward", headers={"accept": "text/html"}).text
    assert not re.search(r"<td>-?(nan|inf)</td>", ward)


def test_an_open_live_stream_ends_when_its_session_does(tmp_path):
    """A live stream opened before sign-out kept sending the patient's vitals afterwards (seen: 25 events in
    5 s after a 204 logout): the stream re-checks its session every `stream_recheck_s`."""
    port = free_port()
    app, settings = build(Settings(data_dir=tmp_path / "data", base_url=f"http://127.0.0.1:{port}",
                                   stream_recheck_s=0.3))
    server = Served(app, port=port)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        sign_in(client, "dr-ward-a", settings.data_dir)
        patient = next(p for p in app.state.census.patients.values() if p.ward == "ward-a")
        with client.stream("GET", f"/patient/{patient.id}/events", timeout=10) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")
            token = csrf_of(client.get("/ward", headers={"accept": "text/html"}).text)
            assert client.post("/logout", headers={"X-CSRF-Token": token}).status_code == 204
            signed_out = time.monotonic()
            for _ in lines:  # keep-alives and vitals until the server closes the stream
                assert time.monotonic() - signed_out < 5, "the stream outlived its session"
        assert client.get(f"/patient/{patient.id}/events").status_code == 401
    finally:
        server.stop()
        app.state.audit.close()


def test_the_bundle_download_does_not_follow_links_out_of_the_bundle(tmp_path, evidence):
    """Every file under the bundle folder went into the zip, following symlinks: a link planted there
    handed a compliance officer any file the portal can read (here its session key)."""
    import io
    import shutil
    import zipfile
    build_dir = tmp_path / "build"
    shutil.copytree(evidence, build_dir)
    app, settings = build(Settings(data_dir=tmp_path / "data", base_url="http://testserver", evidence_dir=build_dir))
    folder = build_dir / "evidence-20261130-000000"
    (folder / "session.key").symlink_to(settings.data_dir / "auth" / "session.key")
    (folder / "auth").symlink_to(settings.data_dir / "auth", target_is_directory=True)
    client = client_for(app, "compliance-officer", settings.data_dir)
    bid = re.search(r'href="/compliance/([0-9a-f]{16})"', client.get("/compliance").text).group(1)
    names = zipfile.ZipFile(io.BytesIO(client.get(f"/compliance/{bid}/download").content)).namelist()
    assert "manifest.json" in names
    assert not [n for n in names if "session.key" in n or n.startswith("auth")], names
    app.state.audit.close()


def test_a_late_observation_joins_the_history_in_time_order_and_is_not_shown_as_the_latest():
    """Arrival order is not measurement order (an HL7 batch, a device catching up): the ward showed the
    last value *received* as the latest and the chart got a point going back in time."""
    census = sources.demo_census(1)
    vitals = sources.Vitals(census)
    patient = next(iter(census.patients.values()))

    def envelope(value: float, at: str) -> dict:
        resource = dict(observation("8867-4", value), effectiveDateTime=at)
        return {"device": patient.devices[0], "resource": resource}

    assert vitals.ingest(envelope(80.0, "2026-11-30T03:00:10+00:00"))
    assert vitals.ingest(envelope(140.0, "2026-11-30T03:00:00+00:00"))  # measured earlier, arrives later
    assert vitals.ingest(envelope(85.0, "2026-11-30T03:00:20+00:00"))
    assert vitals.latest(patient.id)["HR"] == 85.0
    assert vitals.ingest(envelope(150.0, "2026-11-30T03:00:05+00:00"))
    assert vitals.latest(patient.id)["HR"] == 85.0
    times = [at for at, _ in vitals.series(patient.id)["HR"]]
    assert times == sorted(times) and len(times) == 4
    # A device clock running ahead does not pin its value as the latest: the future is clamped to arrival.
    assert vitals.ingest(envelope(60.0, "2099-01-01T00:00:00+00:00"))
    assert vitals.ingest(envelope(70.0, datetime.datetime.now(datetime.timezone.utc).isoformat()))
    assert vitals.latest(patient.id)["HR"] == 70.0


def test_a_clinician_reaching_for_another_wards_patient_is_refused_and_on_record(portal):
    """The 404 hides who exists, but trying another ward's patient ids (or guessing them) left no trace."""
    app, settings = portal
    client = client_for(app, "dr-ward-b", settings.data_dir)
    other = next(p for p in app.state.census.patients.values() if p.ward == "ward-a")
    assert client.get(f"/patient/{other.id}").status_code == 404
    assert client.get(f"/patient/{other.id}/series").status_code == 404
    assert client.get("/patient/guessed-id-0001").status_code == 404
    refused = [e for e in audit_events(app) if e.get("outcomeDesc", "").startswith("portal access refused")]
    for event in refused:
        AuditEvent.model_validate(event)
    assert [e["outcome"] for e in refused] == ["4", "4", "4"]
    assert all(e["agent"][0]["who"]["identifier"]["value"] == "dr-ward-b" for e in refused)
    assert [[x["what"] for x in e.get("entity", [])] for e in refused] == [
        [{"reference": other.reference}], [{"reference": other.reference}], []]


def test_body_temperature_from_a_device_reaches_the_ward():
    """The sdc-bridge publishes body temperature as MDC_TEMP_BODY (150364, the code the clinical workflow
    scores, tests/portal_helpers.py DEVICE_VITALS); the portal knew only 150344 (MDC_TEMP) and dropped it."""
    census = sources.demo_census(1)
    vitals = sources.Vitals(census)
    patient = next(iter(census.patients.values()))
    for code, value in (("150364", 38.4), ("150368", 38.6)):
        resource = {"resourceType": "Observation", "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101",
                                                                     "code": code}]},
                    "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "Cel"}}
        assert vitals.ingest({"device": patient.devices[0], "resource": resource})
        assert vitals.latest(patient.id)["Temp"] == value


def test_a_value_in_another_ucum_unit_is_left_out_not_shown_in_the_wrong_scale():
    """The portal ignored valueQuantity's unit: SpO2 sent as a UCUM ratio (0.97) showed as 0.97 under SpO2 —
    critical hypoxia to a reader — and a [degF] temperature sat in the Celsius column. The clinical workflow
    refuses such values (news2.UNITS); the portal now leaves them out too."""
    census = sources.demo_census(1)
    vitals = sources.Vitals(census)
    patient = next(iter(census.patients.values()))

    def envelope(code: str, value: float, unit: str) -> dict:
        return {"device": patient.devices[0], "resource": {
            "resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": unit}}}

    assert vitals.ingest(envelope("59408-5", 97.0, "%"))
    assert not vitals.ingest(envelope("59408-5", 0.97, "1"))
    assert not vitals.ingest(envelope("8310-5", 101.3, "[degF]"))
    assert vitals.ingest(envelope("8310-5", 38.5, "Cel"))
    assert vitals.latest(patient.id) == {"SpO2": 97.0, "Temp": 38.5}
