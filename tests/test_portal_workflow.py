"""portal + the real clinical-workflow service (`medplat serve clinical-workflow` on loopback, real
Mosquitto): the ward shows NEWS2 and its trend from the workflow's scores and the open FHIR Tasks; a
clinician claims a Task from the page and the workflow records the claim under the clinician's
fhirUser (their own access token, not the portal's); the portal's reads use its service token; a
workflow outage shows on the operations view and does not take the ward down."""
from __future__ import annotations

import re
import time
import uuid

import httpx
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from joserfc import jwt

from medplat.workloads.portal.app import Settings, build
from medplat.workloads.portal.identity import ALGORITHMS, _issuer_key, mint_access_token
from portal_helpers import csrf_of, publish_vitals, record_staff_observations, sign_in, start_workflow
from services import Mosquitto

pytestmark = pytest.mark.slow
ISSUER = "http://testserver/local-issuer"


def wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.fixture
def site(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    from medplat.workloads.portal.sources import demo_census
    census = demo_census(4)
    portal_data = tmp_path / "portal"
    mint_access_token(portal_data, ISSUER, ["x"], "setup", [])  # the portal's issuer key, before the workflow
    workflow = start_workflow(tmp_path / "workflow", portal_data, ISSUER, broker, census)
    base = f"http://127.0.0.1:{workflow.port}"
    app, settings = build(Settings(data_dir=portal_data, base_url="http://testserver", workflow_url=base,
                                   feed_period_s=3600), census=census)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sdc-{uuid.uuid4().hex[:6]}")
    Mosquitto.login(publisher, "sdc-bridge")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    yield {"app": app, "settings": settings, "census": census, "workflow": workflow, "base": base,
           "publisher": publisher}
    publisher.loop_stop()
    app.state.feeds.stop()
    app.state.audit.close()
    workflow.stop()
    broker.stop()


def test_ward_news2_trend_and_claiming_a_task_through_the_workflow(site):
    app, census, base = site["app"], site["census"], site["base"]
    patient = next(p for p in census.patients.values() if p.ward == "ward-a")
    device = patient.devices[0]
    assert not any(a.kind == "task" for a in census.alarms.values())  # demo Tasks gone: the workflow owns Tasks
    record_staff_observations(base, site["settings"].data_dir, ISSUER, patient.reference)
    publish_vitals(site["publisher"], device, respiration_rate=16, spo2=97, systolic_bp=122, pulse=72, temperature=36.9)

    def refreshed(total):
        app.state.feeds.refresh()
        return patient.news2 == total
    wait(lambda: refreshed(0))
    assert app.state.feeds.status["clinical-workflow"]["ok"] is True
    publish_vitals(site["publisher"], device, respiration_rate=26, spo2=93, pulse=115)  # NEWS2 3 + 2 + 2 = 7
    wait(lambda: refreshed(7))
    assert patient.news2_trend == "rising"
    task = wait(lambda: app.state.feeds.refresh() or next(
        (a for a in census.open_items(patient.id) if a.source == "clinical-workflow"), None))

    clinician = TestClient(app)
    sign_in(clinician, "dr-ward-a", site["settings"].data_dir)
    ward = clinician.get("/ward").text
    row = re.search(rf'href="/patient/{patient.id}".*?</tr>', ward, re.S).group(0)
    assert ">7</span> rising" in row and "(demo)" not in row
    page = clinician.get(f"/patient/{patient.id}").text
    assert f'hx-post="/alarms/{task.id}/ack"' in page and "Claim" in page
    # Another ward's clinician may not claim it; without the CSRF token nobody may.
    other = TestClient(app)
    sign_in(other, "dr-ward-b", site["settings"].data_dir)
    other_page = other.get("/ward").text
    assert other.post(f"/alarms/{task.id}/ack", headers={"X-CSRF-Token": csrf_of(other_page)}).status_code == 404
    assert clinician.post(f"/alarms/{task.id}/ack").status_code == 403
    done = clinician.post(f"/alarms/{task.id}/ack", headers={"X-CSRF-Token": csrf_of(page)})
    assert done.status_code == 200 and "claimed by Practitioner/dr-ward-a" in done.text
    # The workflow itself holds the claim, under the clinician's identity (read with another token).
    reader = mint_access_token(site["settings"].data_dir, ISSUER, ["clinical-workflow"], "Practitioner/auditor",
                               ["task.read"])
    stored = httpx.get(f"{base}/Task/{task.id}", headers={"authorization": f"Bearer {reader}"}).json()
    assert stored["owner"] == {"reference": "Practitioner/dr-ward-a"}
    provenance = httpx.get(f"{base}/Provenance", params={"target": f"Task/{task.id}"},
                           headers={"authorization": f"Bearer {reader}"}).json()
    assert any(e["resource"]["agent"][0]["who"] == {"reference": "Practitioner/dr-ward-a"}
               for e in provenance["entry"])
    app.state.feeds.refresh()
    assert next(a for a in census.open_items(patient.id) if a.id == task.id).by == "Practitioner/dr-ward-a"


def test_a_task_someone_else_claimed_first_is_refused_by_the_workflow_and_the_page_says_so(site):
    app, census, base = site["app"], site["census"], site["base"]
    patient = [p for p in census.patients.values() if p.ward == "ward-a"][1]
    record_staff_observations(base, site["settings"].data_dir, ISSUER, patient.reference)
    publish_vitals(site["publisher"], patient.devices[0], respiration_rate=26, spo2=93, systolic_bp=122, pulse=115,
                   temperature=36.9)
    task = wait(lambda: app.state.feeds.refresh() or next(
        (a for a in census.open_items(patient.id) if a.source == "clinical-workflow"), None))
    nurse = mint_access_token(site["settings"].data_dir, ISSUER, ["clinical-workflow"], "Practitioner/nurse-1",
                              ["task.write"], medplat_practitioner_roles=["PractitionerRole/medical-team"])
    httpx.post(f"{base}/Task/{task.id}/$claim", headers={"authorization": f"Bearer {nurse}"}).raise_for_status()
    clinician = TestClient(app)
    sign_in(clinician, "dr-ward-a", site["settings"].data_dir)
    page = clinician.get(f"/patient/{patient.id}").text  # the portal has not polled since: still unclaimed
    assert f'hx-post="/alarms/{task.id}/ack"' in page
    refused = clinician.post(f"/alarms/{task.id}/ack", headers={"X-CSRF-Token": csrf_of(page)})
    assert refused.status_code == 200 and 'role="alert"' in refused.text
    assert "owned by Practitioner/nurse-1" in refused.text and "claimed by Practitioner/nurse-1" in refused.text
    app.state.audit.flush()
    spool = (site["settings"].data_dir / "audit-spool.jsonl").read_text()
    assert "portal task refused by clinical-workflow" in spool


def test_the_portal_reads_with_its_own_token_and_survives_a_workflow_outage(site):
    app, census, settings = site["app"], site["census"], site["settings"]
    token = (settings.data_dir / "auth" / "service-token").read_text()
    claims = jwt.decode(token, _issuer_key(settings.data_dir), algorithms=ALGORITHMS).claims
    assert claims["sub"] == "portal" and "task.write" not in claims["scope"].split()  # reads only
    assert (settings.data_dir / "auth" / "service-token").stat().st_mode & 0o077 == 0
    site["workflow"].stop()
    app.state.feeds.refresh()
    assert app.state.feeds.status["clinical-workflow"]["ok"] is False
    operator = TestClient(app)
    sign_in(operator, "site-operator", settings.data_dir)
    ops = operator.get("/ops").text
    assert "clinical-workflow" in ops and "unreachable" in ops
    clinician = TestClient(app)
    sign_in(clinician, "dr-ward-a", settings.data_dir)
    assert clinician.get("/ward").status_code == 200


def test_acknowledging_a_device_alarm_reaches_the_sdc_bridge_as_the_clinician(tmp_path):
    """A real sdc11073 monitor raises SpO2-low; the sdc-bridge (its app served over HTTP, trusting the
    portal's issuer) owns the alarm; the portal lists it at the bed and the acknowledgement lands in the
    bridge's decision log under the clinician's name."""
    import json
    import threading

    import uvicorn
    from joserfc.jwk import KeySet

    from medplat.workloads.portal.sources import demo_census
    from services import free_port, wait_for_port
    from test_sdc_bridge import Monitor, bridge_for

    broker, monitor = Mosquitto(tmp_path / "broker"), Monitor()
    portal_data = tmp_path / "portal"
    jwks = tmp_path / "portal-issuer.jwks.json"
    jwks.write_text(json.dumps(KeySet([_issuer_key(portal_data)]).as_dict(private=False)))
    bridge, _ = bridge_for(tmp_path / "sdc", broker.url_for("sdc-bridge"), providers=[monitor.xaddr],
                           auth_issuer=ISSUER, auth_jwks=str(jwks))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(bridge, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    app = None
    try:
        monitor.alert(True)
        (alarm,) = wait(lambda: list(bridge.state.router.active.values()))
        census = demo_census(2)
        patient = next(p for p in census.patients.values() if p.ward == "ward-a")
        patient.devices.append(alarm.device)  # the monitor is at this bed
        app, settings = build(Settings(data_dir=portal_data, base_url="http://testserver",
                                       alarms_url=f"http://127.0.0.1:{port}", feed_period_s=3600), census=census)
        app.state.feeds.refresh()
        assert app.state.feeds.status["sdc-bridge"]["ok"] is True, app.state.feeds.status
        assert {a.source for a in census.alarms.values() if a.kind == "alarm"} == {"sdc-bridge"}  # no demo alarms
        (shown,) = [a for a in census.active_alarms(patient.id) if a.kind == "alarm"]
        assert shown.id == alarm.id
        clinician = TestClient(app)
        sign_in(clinician, "dr-ward-a", settings.data_dir)
        page = clinician.get(f"/patient/{patient.id}").text
        done = clinician.post(f"/alarms/{alarm.id}/ack", headers={"X-CSRF-Token": csrf_of(page)})
        assert done.status_code == 200 and "acknowledged by dr-ward-a" in done.text
        (decision,) = [d for d in bridge.state.router.decisions if d["decision"] == "acknowledged"]
        assert decision["by"] == "dr-ward-a" and alarm.acknowledged
    finally:
        if app is not None:
            app.state.audit.close()
        server.should_exit = True
        thread.join(timeout=10)
        bridge.state.bridge.stop()
        bridge.state.audit.close()
        monitor.stop()
        broker.stop()


def test_a_patients_consent_denying_the_clinician_closes_their_pages(tmp_path):
    """The real consent service (served over HTTP, trusting the portal's issuer) holds a Consent shaped
    like FHIR's consent-example-pkb: treatment permitted, with a deny exception for one practitioner -
    here dr-ward-a. That clinician is refused the patient's page, history and stream (audited); another
    patient of the ward, with no Consent recorded, stays open; the consent service down closes pages."""
    import json
    import threading

    import uvicorn
    from joserfc.jwk import KeySet

    from medplat.workloads.consent.app import Settings as ConsentSettings, build as build_consent
    from medplat.workloads.portal.sources import demo_census
    from services import free_port, wait_for_port
    from test_consent import actor, consent, purpose

    portal_data = tmp_path / "portal"
    jwks = tmp_path / "portal-issuer.jwks.json"
    jwks.write_text(json.dumps(KeySet([_issuer_key(portal_data)]).as_dict(private=False)))
    service, _ = build_consent(ConsentSettings(data_dir=tmp_path / "consent", auth_issuer=ISSUER, auth_jwks=str(jwks),
                                               when_nothing_applies={"TREAT": "not-applicable"}))
    census = demo_census(3)
    denied, open_ = [p for p in census.patients.values() if p.ward == "ward-a"][:2]
    writer = mint_access_token(portal_data, ISSUER, ["consent"], "registrar", ["consent.write"])
    with TestClient(service, headers={"authorization": f"Bearer {writer}"}) as registry:
        assert registry.post("/Consent", json=consent("c1", denied.reference, {
            "type": "permit", "purpose": [purpose("TREAT")],
            "provision": [{"type": "deny", "actor": [actor("Practitioner/dr-ward-a")]}]})).status_code == 201
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(service, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    app, settings = build(Settings(data_dir=portal_data, base_url="http://testserver",
                                   consent_url=f"http://127.0.0.1:{port}", feed_period_s=3600), census=census)
    try:
        clinician = TestClient(app)
        sign_in(clinician, "dr-ward-a", settings.data_dir)
        for path in (f"/patient/{denied.id}", f"/patient/{denied.id}/series", f"/patient/{denied.id}/events"):
            assert clinician.get(path).status_code == 403, path
        assert clinician.get(f"/patient/{open_.id}").status_code == 200
        ward = clinician.get("/ward").text  # the bed stays listed, without the patient's name or values
        assert denied.name not in ward and f"/patient/{denied.id}" not in ward and f"/patient/{open_.id}" in ward
        assert f"<td>{denied.ward} / {denied.bed}</td><td>restricted by the patient&#39;s consent</td>" in ward
        app.state.audit.flush()
        assert "portal access refused by the patient's consent" in (settings.data_dir / "audit-spool.jsonl").read_text()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    app.state.consent.cache.clear()  # the decisions' 60 s are over, and the consent service is gone: closed
    assert clinician.get(f"/patient/{open_.id}").status_code == 503
    assert clinician.get("/ward").status_code == 503
    app.state.feeds.stop()
    app.state.audit.close()
    service.state.audit.close()
