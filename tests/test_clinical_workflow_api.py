"""clinical-workflow service: sdc-bridge envelopes -> NEWS2 -> Tasks over the FHIR REST API, with
auth on every route, Provenance and BALP audit for each transition, consent before anything leaves
the site, alarm follow-up, and CDS Hooks answered for a request shaped like the specification's."""
from __future__ import annotations

import datetime
import json
import uuid

import orjson
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle

from medplat.service.auth import mint_local_token
from medplat.workloads.clinical_workflow import app as service
from medplat.workloads.clinical_workflow import news2

MDC, UCUM = "urn:iso:std:iso:11073:10101", "http://unitsofmeasure.org"
DEVICE = "6f1c-monitor-bed7"
PATIENT = "Patient/1288992"
DOCTOR, NURSE = "Practitioner/abc", "Practitioner/nurse-7"
# MDC code, UCUM unit for each device vital sign, as the sdc-bridge maps them (workloads/sdc-bridge/mapping.py).
DEVICE_VITALS = {"respiration_rate": ("151562", "/min"), "spo2": ("150456", "%"), "systolic_bp": ("150021", "mm[Hg]"),
                 "pulse": ("147842", "/min"), "temperature": ("150364", "Cel")}


def now_iso(seconds_ago: float = 0) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds_ago)
    return moment.isoformat(timespec="milliseconds")


def device_observation(parameter: str, value: float, seconds_ago: float = 0) -> dict:
    code, unit = DEVICE_VITALS[parameter]
    return {"resourceType": "Observation", "id": f"obs-{uuid.uuid4().hex}", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": MDC, "code": code}]}, "device": {"reference": f"Device/{DEVICE}"},
            "effectiveDateTime": now_iso(seconds_ago), "valueQuantity": {"value": value, "system": UCUM, "code": unit}}


def envelope(resource: dict) -> bytes:  # the sdc-bridge's envelope (workloads/sdc-bridge/app.py, Output)
    return orjson.dumps({"id": f"{resource['resourceType']}-{resource['id']}", "device": DEVICE, "dataClass": "phi",
                         "resource": resource})


def staff_observation(parameter: str, **value) -> dict:
    code = {"consciousness": "1104441000000107", "air_or_oxygen": "1104331000000105"}[parameter]
    return {"resourceType": "Observation", "id": f"staff-{uuid.uuid4().hex[:12]}", "status": "final",
            "code": {"coding": [{"system": news2.SNOMED, "code": code}]}, "subject": {"reference": PATIENT},
            "effectiveDateTime": now_iso(), **value}


@pytest.fixture
def site(tmp_path):
    settings = service.Settings(data_dir=tmp_path, device_patients={f"{DEVICE}*": PATIENT}, escalate_after="PT1S")
    app, settings = service.build(settings)
    client = TestClient(app)

    def token(subject=DOCTOR, scopes=("task.read", "task.write", "observation.write", "observation.read",
                                      "cds.hooks")):
        return {"authorization": "Bearer " + mint_local_token(tmp_path, service.NAME, list(scopes), subject)}

    yield app, client, token
    app.state.audit.close()


def deteriorate(app, client, token, *, rr=26, spo2=93, pulse=115, sbp=120, temp=37.0):
    for parameter, body in (("consciousness", {"valueCodeableConcept": {"coding": [
            {"system": "urn:medplat:acvpu", "code": "A"}]}}), ("air_or_oxygen", {"valueBoolean": False})):
        assert client.post("/Observation", json=staff_observation(parameter, **body), headers=token(NURSE)) \
            .status_code == 201
    outcomes = [app.state.clinical.handle_envelope(envelope(device_observation(p, v))) for p, v in (
        ("respiration_rate", rr), ("spo2", spo2), ("systolic_bp", sbp), ("pulse", pulse), ("temperature", temp))]
    return outcomes


def test_every_route_but_discovery_requires_a_token(site):
    app, client, token = site
    from fastapi.routing import APIRoute

    def guarded(route):
        return any(d.call.__qualname__.startswith("Authenticator.require") for d in route.dependant.dependencies)

    ours = [r for r in app.state.router.routes if isinstance(r, APIRoute)]  # /healthz is the foundation's
    unguarded = {(m, r.path) for r in ours for m in r.methods if not guarded(r)}
    assert unguarded == service.PUBLIC_ROUTES == {("GET", "/cds-services")}
    assert client.get("/cds-services").status_code == 200
    for method, path in (("GET", "/Task"), ("GET", "/Task/x"), ("POST", "/Task/x/$claim"),
                         ("POST", "/Task/x/$transition"), ("GET", "/Provenance?target=Task/x"),
                         ("POST", "/Observation"), ("GET", "/news2?patient=Patient/1"),
                         ("POST", "/cds-services/news2-patient-view")):
        response = client.request(method, path, json={})
        assert response.status_code == 401, (method, path)
        assert response.json()["resourceType"] == "OperationOutcome"
    assert client.get("/Task", headers=token(scopes=("observation.read",))).status_code == 403


def test_news2_emergency_task_claimed_escalated_and_completed(site):
    app, client, token = site
    outcomes = deteriorate(app, client, token)
    assert outcomes[-1] == "NEWS2 7: high risk, response started"
    scored = client.get("/news2", params={"patient": PATIENT}, headers=token()).json()
    assert scored["valueInteger"] == 7 and len(scored["derivedFrom"]) == 7
    bundle = client.get("/Task", params={"patient": PATIENT, "status": "requested"}, headers=token()).json()
    Bundle.model_validate(bundle)
    [task] = [e["resource"] for e in bundle["entry"]]
    assert task["priority"] == "stat" and task["focus"]["reference"] == f"Observation/{scored['id']}"
    # nobody accepted it within PT1S: the timer escalates it to critical-care outreach
    import time
    time.sleep(1.1)
    app.state.worker.run_once()
    tasks = client.get("/Task", params={"patient": PATIENT}, headers=token()).json()["entry"]
    escalation = next(e["resource"] for e in tasks if e["resource"]["id"] != task["id"])
    assert escalation["partOf"] == [{"reference": f"Task/{task['id']}"}]
    assert escalation["restriction"]["recipient"] == [{"reference": "PractitionerRole/critical-care-outreach"}]
    # the doctor claims and works the original Task; the nurse may not move it
    assert client.post(f"/Task/{task['id']}/$claim", headers=token()).json()["owner"] == {"reference": DOCTOR}
    refused = client.post(f"/Task/{task['id']}/$transition", json={"status": "accepted"}, headers=token(NURSE))
    assert refused.status_code == 403 and refused.json()["issue"][0]["code"] == "forbidden"
    bad = client.post(f"/Task/{task['id']}/$transition", json={"status": "completed"}, headers=token())
    assert bad.status_code == 409
    for status in ("accepted", "in-progress", "completed"):
        moved = client.post(f"/Task/{task['id']}/$transition", json={"status": status}, headers=token())
        assert moved.status_code == 200 and moved.json()["status"] == status
    history = client.get("/Provenance", params={"target": f"Task/{task['id']}"}, headers=token()).json()
    assert [p["activity"]["text"] for p in history["entry"] for p in [p["resource"]]][-3:] == [
        "status requested -> accepted", "status accepted -> in-progress", "status in-progress -> completed"]
    # audit: every transition reached the audit client (spooled: no audit log in this test)
    app.state.worker.drain_audit()
    spool = [json.loads(line) for line in (app.state.settings.data_dir / "audit-spool.jsonl").read_text().splitlines()]
    updates = [e for e in spool if e["subtype"][0]["code"] == "update" and
               {"what": {"reference": f"Task/{task['id']}"}} in [{"what": x["what"]} for x in e.get("entity", [])]]
    assert len(updates) == 4  # claim + three status changes
    assert all(any(x["what"]["reference"] == PATIENT for x in e["entity"]) for e in updates)
    # nothing left the site: no consent service configured, so everything was withheld
    app.state.worker.drain_forwarding()
    assert app.state.worker.forwarded == 0 and app.state.worker.withheld > 0


def test_redelivered_message_changes_nothing_and_stale_data_gives_no_score(site):
    app, client, token = site
    resource = device_observation("pulse", 120)
    assert app.state.clinical.handle_envelope(envelope(resource)) == "no NEWS2: missing respiration_rate, spo2, " \
        "air_or_oxygen, systolic_bp, consciousness, temperature"
    assert app.state.clinical.handle_envelope(envelope(resource)) == "duplicate"
    outcomes = deteriorate(app, client, token)
    assert outcomes[-1].startswith("NEWS2 7")
    old = device_observation("temperature", 39.5, seconds_ago=3600)
    assert app.state.clinical.handle_envelope(envelope(old)) == "older than the latest reading"
    assert app.state.clinical.handle_envelope(b"{not json") == "refused"
    wrong_unit = device_observation("temperature", 99.0)
    wrong_unit["valueQuantity"]["code"] = "[degF]"
    assert app.state.clinical.handle_envelope(envelope(wrong_unit)) == "refused"


def test_staff_observation_is_validated(site):
    _, client, token = site
    bad = staff_observation("consciousness", valueString="sleepy")
    assert client.post("/Observation", json=bad, headers=token(NURSE)).status_code == 422
    nobody = staff_observation("consciousness", valueString="A")
    del nobody["subject"]
    response = client.post("/Observation", json=nobody, headers=token(NURSE))
    assert response.status_code == 422 and response.json()["resourceType"] == "OperationOutcome"


def test_alarm_episode_becomes_one_acknowledgement_task_with_handover(site):
    app, client, token = site
    issue = {"resourceType": "DetectedIssue", "id": "alarm-0123456789abcdef-preliminary", "status": "preliminary",
             "code": {"coding": [{"system": MDC, "code": "196648"}]}, "severity": "high",
             "implicated": [{"reference": f"Device/{DEVICE}"}], "identifiedDateTime": now_iso(),
             "detail": "spo2 low on bed 7"}
    assert app.state.clinical.handle_envelope(envelope(issue)) == "alarm follow-up started"
    again = {**issue, "id": "alarm-0123456789abcdef-preliminary"}
    assert app.state.clinical.handle_envelope(orjson.dumps({"id": "redelivered-other-id", "device": DEVICE,
                                                            "resource": again})) == \
        "alarm episode already has a follow-up"
    [task] = [e["resource"] for e in client.get("/Task", headers=token()).json()["entry"]]
    assert task["code"]["coding"][0]["code"] == "acknowledge_alarm" and task["for"]["reference"] == PATIENT
    assert task["focus"]["reference"] == f"DetectedIssue/{issue['id']}" and task["priority"] == "stat"
    client.post(f"/Task/{task['id']}/$claim", headers=token(NURSE))
    client.post(f"/Task/{task['id']}/$transition", json={"status": "accepted"}, headers=token(NURSE))
    handed = client.post(f"/Task/{task['id']}/$handover", json={"to": DOCTOR, "reason": "shift change"},
                         headers=token(NURSE))
    assert handed.json()["owner"] == {"reference": DOCTOR}
    assert client.post(f"/Task/{task['id']}/$transition", json={"status": "in-progress"},
                       headers=token(NURSE)).status_code == 403
    assert client.post(f"/Task/{task['id']}/$transition", json={"status": "in-progress"},
                       headers=token()).status_code == 200


def cds_request(hook: str, prefetch: dict | None) -> dict:
    """Shaped like CDS Hooks 2.0 (cds-hooks.hl7.org/2.0, HTTP Request) and the patient-view hook's
    context example (cds-hooks.hl7.org hook library: userId Practitioner/abc, patientId 1288992,
    encounterId 456)."""
    request = {"hook": hook, "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
               "fhirServer": "http://hooks.smarthealthit.org:9080",
               "context": {"userId": "Practitioner/abc", "patientId": "1288992", "encounterId": "456"}}
    if prefetch is not None:
        request["prefetch"] = prefetch
    return request


def test_cds_hooks_discovery_and_cards(site):
    app, client, token = site
    services = client.get("/cds-services").json()["services"]
    assert {s["hook"] for s in services} == {"patient-view", "encounter-start"}
    assert all("{{context.patientId}}" in s["prefetch"]["vitals"] for s in services)
    # prefetched vitals (a searchset Bundle, as the EHR fills the template)
    vitals = [device_observation(p, v) for p, v in (("respiration_rate", 26), ("spo2", 93), ("systolic_bp", 120),
                                                    ("pulse", 115), ("temperature", 37.0))]
    vitals += [staff_observation("consciousness", valueString="A"), staff_observation("air_or_oxygen",
                                                                                      valueBoolean=False)]
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in vitals]}
    prefetch = {"patient": {"resourceType": "Patient", "id": "1288992"}, "vitals": bundle}
    response = client.post("/cds-services/news2-patient-view", json=cds_request("patient-view", prefetch),
                           headers=token())
    [card] = response.json()["cards"]
    assert card["summary"] == "NEWS2 7: high clinical risk" and card["indicator"] == "critical"
    assert len(card["summary"]) < 140 and card["source"]["label"].startswith("Royal College of Physicians")
    # no prefetch: the site's own latest score, when recent
    empty = client.post("/cds-services/news2-encounter-start", json=cds_request("encounter-start", None),
                        headers=token()).json()["cards"][0]
    assert empty["summary"] == "NEWS2 not available"
    deteriorate(app, client, token, rr=22, spo2=93, pulse=95)
    stored = client.post("/cds-services/news2-encounter-start", json=cds_request("encounter-start", None),
                         headers=token()).json()["cards"][0]
    assert stored["summary"] == "NEWS2 5: medium clinical risk" and stored["indicator"] == "warning"
    # a stale prefetched value is reported, not scored
    vitals[3] = device_observation("pulse", 115, seconds_ago=3600)
    stale = client.post("/cds-services/news2-patient-view", json=cds_request("patient-view", {"vitals": bundle | {
        "entry": [{"resource": r} for r in vitals]}}), headers=token()).json()["cards"][0]
    assert stale["summary"] == "NEWS2 not available" and "stale pulse" in stale["detail"]
    wrong = client.post("/cds-services/news2-patient-view", json=cds_request("order-sign", None), headers=token())
    assert wrong.status_code == 400
    assert client.post("/cds-services/news2-patient-view", json={"hook": "patient-view"},
                       headers=token()).status_code == 422


def test_who_surgical_safety_checklist_kept_as_questionnaire_response(site):
    """Items and phases: WHO Surgical Safety Checklist, first edition (2009)."""
    from medplat.workloads.clinical_workflow import checklist
    from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

    app, client, token = site
    oximeter = device_observation("spo2", 97)  # the OR monitor reports SpO2: the pulse oximeter is on
    app.state.clinical.handle_envelope(envelope(oximeter))
    assert client.post("/surgical-checklist", json={"patient": PATIENT}, headers=token()).status_code == 201
    for phase in ("sign_in", "time_out", "sign_out"):
        [task] = [e["resource"] for e in client.get("/Task", params={"status": "requested"},
                                                      headers=token()).json()["entry"]]
        assert task["code"]["coding"][0]["code"] == phase
        client.post(f"/Task/{task['id']}/$claim", headers=token())
        for status in ("accepted", "in-progress"):
            client.post(f"/Task/{task['id']}/$transition", json={"status": status}, headers=token())
        staff = {link: True for link, _, device in checklist.ITEMS[phase] if device is None}
        missing = dict(list(staff.items())[1:])
        refused = client.post(f"/Task/{task['id']}/$transition", json={"status": "completed", "answers": missing},
                              headers=token())
        assert refused.status_code == 422 and "is not confirmed" in refused.json()["issue"][0]["diagnostics"]
        done = client.post(f"/Task/{task['id']}/$transition", json={"status": "completed", "answers": staff},
                           headers=token())
        assert done.status_code == 200, done.json()
    [response] = [e["resource"] for e in client.get("/QuestionnaireResponse", params={"patient": PATIENT},
                                                      headers=token()).json()["entry"]]
    QuestionnaireResponse.model_validate(response)
    assert response["status"] == "completed" and [p["linkId"] for p in response["item"]] == list(checklist.ITEMS)
    assert sum(len(p["item"]) for p in response["item"]) == 17
    [record] = [e["resource"] for e in client.get("/Provenance", params={
        "target": f"QuestionnaireResponse/{response['id']}"}, headers=token()).json()["entry"]]
    assert record["entity"] == [{"role": "source", "what": {"reference": f"Observation/{oximeter['id']}"}}]
    assert [a["who"]["reference"] for a in record["agent"]] == [DOCTOR]


def test_checklist_device_item_needs_a_current_reading_or_staff(site):
    app, client, token = site
    client.post("/surgical-checklist", json={"patient": PATIENT}, headers=token())
    [task] = [e["resource"] for e in client.get("/Task", headers=token()).json()["entry"]]
    client.post(f"/Task/{task['id']}/$claim", headers=token())
    for status in ("accepted", "in-progress"):
        client.post(f"/Task/{task['id']}/$transition", json={"status": status}, headers=token())
    from medplat.workloads.clinical_workflow import checklist
    staff = {link: True for link, _, device in checklist.ITEMS["sign_in"] if device is None}
    refused = client.post(f"/Task/{task['id']}/$transition", json={"status": "completed", "answers": staff},
                          headers=token())
    assert refused.status_code == 422 and "no spo2 reading" in refused.json()["issue"][0]["diagnostics"]
    staff["sign-in.pulse-oximeter"] = True  # no device reports it: the team confirms it
    assert client.post(f"/Task/{task['id']}/$transition", json={"status": "completed", "answers": staff},
                       headers=token()).status_code == 200


def test_plandefinition_apply_with_fhirpath_conditions(site):
    """FHIR R4 Clinical Reasoning $apply: applicability conditions in FHIRPath (fhirpathpy)."""
    from fhir.resources.R4B.careplan import CarePlan

    app, client, token = site

    def apply(total, components):
        news2_obs = {"resourceType": "Observation", "id": f"n{total}", "valueInteger": total,
                     "component": [{"valueInteger": c} for c in components]}
        response = client.post("/PlanDefinition/news2-response/$apply",
                               json={"subject": PATIENT, "news2": news2_obs}, headers=token())
        assert response.status_code == 200, response.json()
        CarePlan.model_validate(response.json())
        return [c["code"]["coding"][0]["code"] for c in response.json()["contained"] if c["resourceType"] == "Task"]

    assert apply(7, [3, 2, 2]) == ["emergency_response"]
    assert apply(5, [2, 2, 1]) == ["urgent_response"]
    assert apply(3, [3]) == ["hourly_observations"]
    assert apply(4, [2, 2]) == []
    assert client.post("/PlanDefinition/none/$apply", json={"subject": PATIENT, "news2": {"valueInteger": 1}},
                       headers=token()).status_code == 404
    assert client.post("/PlanDefinition/news2-response/$apply", json={"subject": PATIENT},
                       headers=token()).status_code == 422  # nothing stored for the patient yet


def test_news2_search_since_an_instant_and_tasks_owned_by_the_tokens_fhir_user(site):
    """GET /Observation?_lastUpdated=gt… returns the scores issued after the instant, oldest first (the
    portal's one call per round); a token carrying SMART's fhirUser (a person signed in elsewhere, e.g.
    the portal) claims as that Practitioner; a fhirUser that is no Practitioner(Role) may not own Tasks."""
    import time as clock

    from joserfc import jwt

    from medplat.service.auth import ALGORITHMS, LOCAL_ISSUER, _local_key

    app, client, token = site
    before = datetime.datetime.now(datetime.timezone.utc).isoformat()
    deteriorate(app, client, token)
    found = client.get("/Observation", params={"_lastUpdated": f"gt{before}"}, headers=token()).json()
    issued = [e["resource"]["issued"] for e in found["entry"]]
    assert issued and issued == sorted(issued) and found["entry"][-1]["resource"]["valueInteger"] == 7
    later = client.get("/Observation", params={"_lastUpdated": f"gt{issued[-1]}"}, headers=token()).json()
    assert later["total"] == 0
    for bad in ("2026-11-30T00:00:00+00:00", "gt2026-11-30T00:00:00", "gtyesterday"):
        assert client.get("/Observation", params={"_lastUpdated": bad}, headers=token()).status_code in (400, 422)

    def person(fhir_user: str) -> dict:
        key, now = _local_key(app.state.settings.data_dir), int(clock.time())
        claims = {"iss": LOCAL_ISSUER, "aud": "clinical-workflow", "sub": "dr-ward-a", "scope": "task.write",
                  "iat": now, "exp": now + 300, "fhirUser": fhir_user}
        return {"authorization": "Bearer " + jwt.encode({"alg": "Ed25519", "kid": key.kid}, claims, key,
                                                        algorithms=ALGORITHMS)}
    task = client.get("/Task", params={"patient": PATIENT}, headers=token()).json()["entry"][0]["resource"]
    assert client.post(f"/Task/{task['id']}/$claim", headers=person("Patient/1288992")).status_code == 403
    claimed = client.post(f"/Task/{task['id']}/$claim", headers=person("Practitioner/dr-ward-a"))
    assert claimed.status_code == 200 and claimed.json()["owner"] == {"reference": "Practitioner/dr-ward-a"}
