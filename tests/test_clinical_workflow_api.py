"""clinical-workflow service: sdc-bridge envelopes -> NEWS2 -> Tasks over the FHIR REST API, with
auth on every route, Provenance and BALP audit for each transition, consent before anything leaves
the site, alarm follow-up, and CDS Hooks answered for a request shaped like the specification's."""
from __future__ import annotations

import datetime
import json
import uuid

import time

import orjson
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from medplat.service.auth import mint_local_token
from medplat.workloads.clinical_workflow import app as service
from medplat.workloads.clinical_workflow import news2

MDC, UCUM = "urn:iso:std:iso:11073:10101", "http://unitsofmeasure.org"
DEVICE = "6f1c-monitor-bed7"
PATIENT = "Patient/1288992"
DOCTOR, NURSE, NURSE_2 = "Practitioner/abc", "Practitioner/nurse-7", "Practitioner/nurse-8"
# The PractitionerRoles each person holds (the identity provider's medplat_practitioner_roles claim).
ROLES = {DOCTOR: ["PractitionerRole/medical-team", "PractitionerRole/or-team"],
         NURSE: ["PractitionerRole/ward-nurse", "PractitionerRole/unit-nurse"],
         NURSE_2: ["PractitionerRole/unit-nurse"]}
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


EHR = "https://fhir-ehr.example.com/"  # the CDS client (iss), as in the CDS Hooks 2.0 JWT example
CDS_BASE = "https://site-7.example.org/clinical-workflow"


@pytest.fixture
def ehr_key(tmp_path):
    """The CDS client's signing key (ES384, which CDS services must support) and its public JWK Set file."""
    key = ECKey.generate_key("P-384", parameters={"kid": "ehr-2026"})
    jwks = tmp_path / "ehr-jwks.json"
    jwks.write_text(json.dumps(KeySet([key]).as_dict(private=False)))
    return key, jwks


def cds_jwt(key, service_id, *, iss=EHR, aud=None, lifetime=300, jti=None, alg="ES384", header=None):
    """The CDS Hooks 2.0 client JWT (header alg/kid/typ; payload iss, aud, exp, iat, jti)."""
    now = int(time.time())
    claims = {"iss": iss, "aud": aud or f"{CDS_BASE}/cds-services/{service_id}", "exp": now + lifetime, "iat": now,
              "jti": jti or uuid.uuid4().hex}
    token = jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT", **(header or {})}, claims, key,
                       algorithms=["ES384", "RS384", "ES256"])
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def site(tmp_path, ehr_key):
    settings = service.Settings(data_dir=tmp_path, device_patients={f"{DEVICE}*": PATIENT}, escalate_after="PT1S",
                                cds_clients={EHR: str(ehr_key[1])}, cds_base_url=CDS_BASE)
    app, settings = service.build(settings)
    client = TestClient(app)

    def token(subject=DOCTOR, scopes=("task.read", "task.write", "observation.write", "observation.read",
                                      "cds.hooks"), roles=None):
        roles = ROLES.get(subject, []) if roles is None else roles
        return {"authorization": "Bearer " + mint_local_token(tmp_path, service.NAME, list(scopes), subject,
                                                              extra_claims={service.ROLES_CLAIM: roles})}

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

    def guarded(route):  # a platform token, or on the hook endpoints the CDS client's JWT
        return any(d.call.__qualname__.startswith(("Authenticator.require", "CdsClients.require"))
                   for d in route.dependant.dependencies)

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
    handed = client.post(f"/Task/{task['id']}/$handover", json={"to": NURSE_2, "reason": "shift change"},
                         headers=token(NURSE))
    assert handed.json()["owner"] == {"reference": NURSE_2}
    assert client.post(f"/Task/{task['id']}/$transition", json={"status": "in-progress"},
                       headers=token(NURSE)).status_code == 403
    assert client.post(f"/Task/{task['id']}/$transition", json={"status": "in-progress"},
                       headers=token(NURSE_2)).status_code == 200


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


def test_cds_hooks_discovery_and_cards(site, ehr_key):
    app, client, token = site
    key = ehr_key[0]
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
                           headers=cds_jwt(key, "news2-patient-view"))
    [card] = response.json()["cards"]
    assert card["summary"] == "NEWS2 7: high clinical risk" and card["indicator"] == "critical"
    assert len(card["summary"]) < 140 and card["source"]["label"].startswith("Royal College of Physicians")
    # no prefetch: the site's own latest score, when recent
    empty = client.post("/cds-services/news2-encounter-start", json=cds_request("encounter-start", None),
                        headers=cds_jwt(key, "news2-encounter-start")).json()["cards"][0]
    assert empty["summary"] == "NEWS2 not available"
    deteriorate(app, client, token, rr=22, spo2=93, pulse=95)
    stored = client.post("/cds-services/news2-encounter-start", json=cds_request("encounter-start", None),
                         headers=cds_jwt(key, "news2-encounter-start")).json()["cards"][0]
    assert stored["summary"] == "NEWS2 5: medium clinical risk" and stored["indicator"] == "warning"
    # a stale prefetched value is reported, not scored
    vitals[3] = device_observation("pulse", 115, seconds_ago=3600)
    stale = client.post("/cds-services/news2-patient-view", json=cds_request("patient-view", {"vitals": bundle | {
        "entry": [{"resource": r} for r in vitals]}}), headers=cds_jwt(key, "news2-patient-view")).json()["cards"][0]
    assert stale["summary"] == "NEWS2 not available" and "stale pulse" in stale["detail"]
    wrong = client.post("/cds-services/news2-patient-view", json=cds_request("order-sign", None),
                        headers=cds_jwt(key, "news2-patient-view"))
    assert wrong.status_code == 400
    assert client.post("/cds-services/news2-patient-view", json={"hook": "patient-view"},
                       headers=cds_jwt(key, "news2-patient-view")).status_code == 422


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


def test_a_future_dated_reading_is_refused_and_cannot_block_later_ones(site):
    """Found by trying it: one reading dated 2099 (a typo, a device clock) used to become the
    'latest' and every real reading after it was dropped as 'older than the latest reading'."""
    app, client, token = site
    future = device_observation("respiration_rate", 15)
    future["effectiveDateTime"] = "2099-01-01T00:00:00+00:00"
    assert app.state.clinical.handle_envelope(envelope(future)) == "refused"
    assert "future" in app.state.clinical.counters.last_refusal
    typo = staff_observation("consciousness", valueString="A")
    typo["effectiveDateTime"] = "2099-01-01T00:00:00+00:00"
    refused = client.post("/Observation", json=typo, headers=token(NURSE))
    assert refused.status_code == 422 and "future" in refused.json()["issue"][0]["diagnostics"]
    assert deteriorate(app, client, token)[-1] == "NEWS2 7: high risk, response started"


def test_prefetched_observations_of_another_patient_are_not_scored(site, ehr_key):
    """CDS Hooks prefetch is the EHR's answer to a query; an Observation in it whose subject is not
    the hook's patient must not feed that patient's score (found by trying it)."""
    _, client, token = site
    other = {"subject": {"reference": "Patient/someone-else"}}
    vitals = [device_observation(p, v) | other for p, v in (("respiration_rate", 26), ("spo2", 93),
                                                             ("systolic_bp", 120), ("pulse", 115),
                                                             ("temperature", 37.0))]
    vitals += [staff_observation("consciousness", valueString="A") | other,
               staff_observation("air_or_oxygen", valueBoolean=False) | other]
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in vitals]}
    card = client.post("/cds-services/news2-patient-view", json=cds_request("patient-view", {"vitals": bundle}),
                       headers=cds_jwt(ehr_key[0], "news2-patient-view")).json()["cards"][0]
    assert card["summary"] == "NEWS2 not available"


def test_only_a_task_recipient_claims_or_moves_it(site):
    """Task.restriction.recipient (FHIR R4 Task: "for whom the request is targeted") is enforced:
    found by trying it, any Practitioner with task.write used to claim the medical team's emergency
    Task. The roles come from the token's medplat_practitioner_roles claim."""
    app, client, token = site
    deteriorate(app, client, token)
    [task] = [e["resource"] for e in client.get("/Task", headers=token()).json()["entry"]]
    assert task["restriction"]["recipient"] == [{"reference": "PractitionerRole/medical-team"}]
    outsider = client.post(f"/Task/{task['id']}/$claim", headers=token(NURSE))
    assert outsider.status_code == 403 and "medical-team" in outsider.json()["issue"][0]["diagnostics"]
    no_roles = client.post(f"/Task/{task['id']}/$claim", headers=token(DOCTOR, roles=[]))
    assert no_roles.status_code == 403
    forged = client.post(f"/Task/{task['id']}/$claim", headers=token(DOCTOR, roles="PractitionerRole/medical-team"))
    assert forged.status_code == 401  # the claim must be a list of references
    # a role named as a token subject is a recipient too
    role_token = token("PractitionerRole/medical-team", roles=[])
    assert client.post(f"/Task/{task['id']}/$claim", headers=role_token).status_code == 200
    # handed over to someone outside the recipients: they own it but cannot move it
    client.post(f"/Task/{task['id']}/$handover", json={"to": NURSE}, headers=role_token)
    moved = client.post(f"/Task/{task['id']}/$transition", json={"status": "accepted"}, headers=token(NURSE))
    assert moved.status_code == 403


def test_cds_hooks_client_jwt_is_checked_as_the_spec_defines(site, ehr_key, tmp_path):
    """CDS Hooks 2.0, Trusting CDS Clients: a JWT the CDS client signs with its own key; iss a
    trusted client, signature from its JWK Set, aud the service endpoint URL, exp (<= 5 min), jti
    not replayed. Before, CDS calls used medplat platform tokens with scope cds.hooks."""
    import base64

    _, client, token = site
    key = ehr_key[0]
    body = cds_request("patient-view", None)

    def call(headers, service="news2-patient-view"):
        return client.post(f"/cds-services/{service}", json=body if "patient" in service
                           else cds_request("encounter-start", None), headers=headers)

    assert call(cds_jwt(key, "news2-patient-view")).status_code == 200
    assert call(cds_jwt(key, "news2-encounter-start"), "news2-encounter-start").status_code == 200
    refusals = {
        "platform token": token(),
        "untrusted issuer": cds_jwt(key, "news2-patient-view", iss="https://evil.example/"),
        "aud of another service": cds_jwt(key, "news2-encounter-start"),
        "aud of another host": cds_jwt(key, "news2-patient-view",
                                       aud="https://elsewhere.example/cds-services/news2-patient-view"),
        "expired": cds_jwt(key, "news2-patient-view", lifetime=-120),
        "lifetime over five minutes": cds_jwt(key, "news2-patient-view", lifetime=3600),
        "jku elsewhere": cds_jwt(key, "news2-patient-view", header={"jku": "https://evil.example/jwks"}),
        "another key, same kid": cds_jwt(ECKey.generate_key("P-384", parameters={"kid": "ehr-2026"}),
                                         "news2-patient-view"),
        "not a JWT": {"authorization": "Bearer abc.def"},
    }
    unsigned = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    claims = {"iss": EHR, "aud": f"{CDS_BASE}/cds-services/news2-patient-view", "exp": int(time.time()) + 60,
              "iat": int(time.time()), "jti": "x"}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    refusals["alg none"] = {"authorization": f"Bearer {unsigned}.{payload}."}
    for name, headers in refusals.items():
        response = call(headers)
        assert response.status_code == 401, name
        assert response.json()["resourceType"] == "OperationOutcome", name
    replayed = cds_jwt(key, "news2-patient-view", jti="once-only")
    assert call(replayed).status_code == 200
    again = call(replayed)
    assert again.status_code == 401 and "replay" in again.json()["issue"][0]["diagnostics"]


def test_cds_hooks_refused_when_no_client_is_trusted_and_misconfiguration_stops_startup(tmp_path, ehr_key):
    app, _ = service.build(service.Settings(data_dir=tmp_path / "none"))
    response = TestClient(app).post("/cds-services/news2-patient-view", json=cds_request("patient-view", None),
                                    headers=cds_jwt(ehr_key[0], "news2-patient-view"))
    assert response.status_code == 401 and "trusts no CDS client" in response.json()["issue"][0]["diagnostics"]
    app.state.audit.close()
    with pytest.raises(ValueError, match="CDS_BASE_URL"):
        service.build(service.Settings(data_dir=tmp_path / "nobase", cds_clients={EHR: str(ehr_key[1])}))


def test_readiness_reports_the_broker(tmp_path):
    """Found by trying it: with the broker unreachable /readyz answered 200 "ready", so a site whose
    device data could not arrive (no NEWS2, no alarm Tasks) looked healthy. Real Mosquitto."""
    from services import Mosquitto

    broker = Mosquitto(tmp_path / "broker")
    try:
        settings = service.Settings(data_dir=tmp_path / "cw", broker_url=broker.url_for("clinical-workflow"))
        app, settings = service.build(settings)
        subscriber = service.Subscriber(settings, app.state.clinical)
        app.state.subscriber = subscriber
        subscriber.start()
        client = TestClient(app)
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["broker"] == "connected"
        broker.stop()
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        down = client.get("/readyz")
        assert down.status_code == 503 and down.json()["broker"] == "disconnected"
        subscriber.stop()
        app.state.audit.close()
    finally:
        if broker.process.poll() is None:
            broker.stop()


def test_staff_observation_gets_a_server_id_and_the_score_names_it(site):
    """Found by trying it: a staff Observation POSTed without an id (a FHIR create) gave the score
    derivedFrom "Observation/None", and the recorded ACVPU/air-oxygen was kept nowhere."""
    app, client, token = site
    body = staff_observation("consciousness", valueString="C")
    del body["id"]
    created = client.post("/Observation", json=body, headers=token(NURSE))
    assert created.status_code == 201 and len(created.json()["id"]) == 32
    deteriorate(app, client, token)
    scored = client.get("/news2", params={"patient": PATIENT}, headers=token()).json()
    references = [d["reference"] for d in scored["derivedFrom"]]
    assert "Observation/None" not in references
    from medplat.workloads.clinical_workflow import store
    from sqlalchemy import select
    with app.state.engine.db.connect() as conn:
        kept = {r.id for r in conn.execute(select(store.documents.c.id).where(store.documents.c.kind == "Observation"))}
    staff = [r for r in references if not r.startswith("Observation/obs-")]
    assert len(staff) == 2 and {r.removeprefix("Observation/") for r in staff} <= kept


MALFORMED = {"code a string": {"code": "x"}, "coding a string": {"code": {"coding": "x"}},
             "coding items strings": {"code": {"coding": ["x"]}}, "time a number": {"effectiveDateTime": 5},
             "subject a string": {"subject": "x"}, "value not a number": {"valueQuantity": {
                 "value": None, "system": UCUM, "code": "/min"}},
             "ACVPU value a string": {"code": {"coding": [{"system": news2.SNOMED, "code": "1104441000000107"}]},
                                      "valueCodeableConcept": "x"}}


def test_malformed_messages_are_refused_and_never_hold_back_the_others(site):
    """Found by trying it: an Observation with a string where FHIR has an object raised out of the
    intake, so its batch was never acknowledged (QoS 1: redelivered, and enough unacknowledged
    messages fill the broker's in-flight window for the client), and good messages in that batch
    went unacknowledged with it."""
    app, client, token = site
    good = device_observation("pulse", 80)
    bad = [envelope(device_observation("pulse", 80) | change) for change in MALFORMED.values()]
    issue = {"resourceType": "DetectedIssue", "id": "alarm-1-preliminary", "status": "preliminary",
             "implicated": "Device/x"}
    outcomes = app.state.clinical.handle_batch([*bad, envelope(issue), envelope(good)])
    assert outcomes[:-1] == ["refused"] * (len(MALFORMED) + 1)
    assert outcomes[-1].startswith("no NEWS2: missing")
    # the same shapes prefetched by a CDS client give a card, not a server error
    from medplat.workloads.clinical_workflow import cds
    prefetched = [device_observation("pulse", 80) | change for change in MALFORMED.values()]
    assert cds.from_prefetch({"entry": [{"resource": r} for r in prefetched]}, PATIENT,
                             datetime.datetime.now(datetime.timezone.utc), news2.StalenessPolicy(), 1) is None


def test_intake_commits_in_time_slices_so_a_burst_is_not_one_transaction(site):
    """A burst of emergency starts used to be one transaction: the first patient's Task waited for the
    last one's (benchmarks/clinical_workflow.py, 100 patients at once). handle_prefix stops after its
    budget; the subscriber acknowledges that slice and comes back for the rest."""
    app, client, token = site
    for parameter, body in (("consciousness", {"valueString": "A"}), ("air_or_oxygen", {"valueBoolean": False})):
        client.post("/Observation", json=staff_observation(parameter, **body), headers=token(NURSE))
    raws = [envelope(device_observation(p, v)) for p, v in (("respiration_rate", 26), ("spo2", 93),
                                                             ("systolic_bp", 120), ("pulse", 115))]
    raws += [b"{not json", envelope(device_observation("temperature", 37.0))]
    clinical, outcomes = app.state.clinical, []
    while len(outcomes) < len(raws):
        done = clinical.handle_prefix(raws[len(outcomes):], budget_s=0)
        assert len(done) == 1  # no budget: one message per transaction
        outcomes += done
    assert outcomes[4] == "refused" and outcomes[5] == "NEWS2 7: high risk, response started"
    more = clinical.handle_prefix([envelope(device_observation("pulse", 116)) for _ in range(3)], 60)
    assert len(more) == 3 and more[0] == "NEWS2 7: response already under way"  # a generous budget: all at once


def test_a_typed_in_spo2_does_not_confirm_the_pulse_oximeter(site):
    """WHO checklist sign-in "pulse oximeter on patient and functioning" is confirmed by the monitor's
    own reading; found by trying it: an SpO2 value staff POSTed counted as the device's confirmation."""
    from medplat.workloads.clinical_workflow import checklist

    _, client, token = site
    typed = {"resourceType": "Observation", "status": "final", "subject": {"reference": PATIENT},
             "effectiveDateTime": now_iso(), "code": {"coding": [{"system": "http://loinc.org", "code": "59408-5"}]},
             "valueQuantity": {"value": 97, "system": UCUM, "code": "%"}}
    assert client.post("/Observation", json=typed, headers=token(NURSE)).status_code == 201
    client.post("/surgical-checklist", json={"patient": PATIENT}, headers=token())
    [task] = [e["resource"] for e in client.get("/Task", headers=token()).json()["entry"]]
    client.post(f"/Task/{task['id']}/$claim", headers=token())
    for status in ("accepted", "in-progress"):
        client.post(f"/Task/{task['id']}/$transition", json={"status": status}, headers=token())
    staff = {link: True for link, _, device in checklist.ITEMS["sign_in"] if device is None}
    refused = client.post(f"/Task/{task['id']}/$transition", json={"status": "completed", "answers": staff},
                          headers=token())
    assert refused.status_code == 422 and "sign-in.pulse-oximeter" in refused.json()["issue"][0]["diagnostics"]


def test_on_postgresql_tasks_recipients_and_cds_replay(tmp_path, ehr_key, postgres_url):
    """The same service on the machine's real PostgreSQL (the deployed database): NEWS2 to a Task,
    a recipient claims it, a CDS client JWT is accepted once and its replay refused."""
    settings = service.Settings(data_dir=tmp_path / "pg", database_url=postgres_url,
                                device_patients={f"{DEVICE}*": PATIENT}, cds_clients={EHR: str(ehr_key[1])},
                                cds_base_url=CDS_BASE)
    app, settings = service.build(settings)
    client = TestClient(app)

    def token(subject=DOCTOR, roles=None):
        claims = {service.ROLES_CLAIM: ROLES.get(subject, []) if roles is None else roles}
        return {"authorization": "Bearer " + mint_local_token(tmp_path / "pg", service.NAME, [
            "task.read", "task.write", "observation.write", "observation.read"], subject, extra_claims=claims)}

    try:
        assert app.state.engine.db.dialect.name == "postgresql"
        assert deteriorate(app, client, token)[-1] == "NEWS2 7: high risk, response started"
        [task] = [e["resource"] for e in client.get("/Task", headers=token()).json()["entry"]]
        assert client.post(f"/Task/{task['id']}/$claim", headers=token(NURSE)).status_code == 403
        assert client.post(f"/Task/{task['id']}/$claim", headers=token()).status_code == 200
        once = cds_jwt(ehr_key[0], "news2-patient-view", jti="pg-once")
        body = cds_request("patient-view", None)
        assert client.post("/cds-services/news2-patient-view", json=body, headers=once).status_code == 200
        assert client.post("/cds-services/news2-patient-view", json=body, headers=once).status_code == 401
    finally:
        app.state.audit.close()
        app.state.engine.db.dispose()


def test_encounter_start_needs_its_encounter(site, ehr_key):
    """encounter-start's context has userId, patientId and encounterId, each 1..1 (CDS Hooks Library,
    CDSHookEncounterStartContext, build.fhir.org/ig/HL7/cds-hooks-library; the FHIR Tooling IG's older
    copy has encounterId 0..1). Values in the style of the hook examples (not checked against the page):
    PractitionerRole/A2340113, 1288992, 456."""
    _, client, _ = site
    body = cds_request("encounter-start", None)
    body["context"] = {"userId": "PractitionerRole/A2340113", "patientId": "1288992"}
    response = client.post("/cds-services/news2-encounter-start", json=body,
                           headers=cds_jwt(ehr_key[0], "news2-encounter-start"))
    assert response.status_code == 400 and "encounterId" in response.json()["issue"][0]["diagnostics"]
    body["context"]["encounterId"] = "456"
    assert client.post("/cds-services/news2-encounter-start", json=body,
                       headers=cds_jwt(ehr_key[0], "news2-encounter-start")).status_code == 200


def test_cds_hook_audit_names_the_ehr_user_and_the_cds_client(site, ehr_key):
    """Every PHI access audited with who asked: a hook call's AuditEvent names the EHR user from
    context.userId as requestor and the authenticated CDS client (the JWT's iss) as a second agent."""
    from fhir.resources.R4B.auditevent import AuditEvent

    app, client, _ = site
    assert client.post("/cds-services/news2-patient-view", json=cds_request("patient-view", None),
                       headers=cds_jwt(ehr_key[0], "news2-patient-view")).status_code == 200
    app.state.audit.flush()
    spool = [json.loads(line) for line in (app.state.settings.data_dir / "audit-spool.jsonl").read_text().splitlines()]
    [event] = [e for e in spool if any(x["what"]["reference"] == PATIENT for x in e.get("entity", []))]
    AuditEvent.model_validate(event)
    assert [(a.get("who"), a["requestor"]) for a in event["agent"]] == [
        ({"identifier": {"value": EHR}}, False), ({"reference": "Practitioner/abc"}, True)]


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
                  "iat": now, "exp": now + 300, "fhirUser": fhir_user,
                  "medplat_practitioner_roles": ["PractitionerRole/medical-team"]}  # the Task's recipient
        return {"authorization": "Bearer " + jwt.encode({"alg": "Ed25519", "kid": key.kid}, claims, key,
                                                        algorithms=ALGORITHMS)}
    task = client.get("/Task", params={"patient": PATIENT}, headers=token()).json()["entry"][0]["resource"]
    assert client.post(f"/Task/{task['id']}/$claim", headers=person("Patient/1288992")).status_code == 403
    claimed = client.post(f"/Task/{task['id']}/$claim", headers=person("Practitioner/dr-ward-a"))
    assert claimed.status_code == 200 and claimed.json()["owner"] == {"reference": "Practitioner/dr-ward-a"}
