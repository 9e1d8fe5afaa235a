"""consent: decisions per FHIR R4 Consent semantics, on consents shaped like the R4 specification's
examples (consent-example-pkb: permit with deny exceptions; -Out: opt-out; -notTime: a period;
-notThem: an excluded actor), plus auth scopes, auditing and invalid input."""
from __future__ import annotations

import copy

import orjson
import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import OKPKey

from medplat.service.auth import LOCAL_ISSUER, mint_local_token
from medplat.workloads.consent.app import Settings, build

LOINC_PRIVACY = {"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}
SCOPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"


def consent(cid: str, patient: str, provision: dict, status: str = "active") -> dict:
    return {"resourceType": "Consent", "id": cid, "status": status, "scope": SCOPE, "category": [LOINC_PRIVACY],
            "patient": {"reference": patient}, "dateTime": "2016-06-16",
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
            "provision": provision}


def actor(reference: str) -> dict:
    return {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "PRCP"}]}, "reference": {"reference": reference}}


def purpose(code: str) -> dict:
    return {"system": ACT_REASON, "code": code}


# consent-example-pkb shape: permit, with deny exceptions for one practitioner and for
# psychiatry-labelled data.
PKB = consent("pkb", "Patient/p1", {
    "type": "permit", "purpose": [purpose("TREAT"), purpose("HRESCH")],
    "provision": [
        {"type": "deny", "actor": [actor("Practitioner/f204")]},
        {"type": "deny", "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                            "code": "PSY"}]},
    ]})
# consent-example-Out shape: opt out of everything, except treatment by the home hospital.
OUT = consent("out", "Patient/p2", {
    "type": "deny",
    "provision": [{"type": "permit", "actor": [actor("Organization/hospital")], "purpose": [purpose("TREAT")],
                   "action": [{"coding": [{"system": ACTION, "code": "access"}]}]}]})
# consent-example-notTime shape: a permit limited to a period.
NOT_TIME = consent("nottime", "Patient/p3", {"type": "permit", "period": {"start": "2015-01-01",
                                                                          "end": "2015-06-30"}})
# Three levels: research permitted, Observations excluded, except Observation/o1.
NESTED = consent("nested", "Patient/p4", {
    "type": "permit", "purpose": [purpose("HRESCH")], "actor": [actor("Organization/uni")],
    "provision": [{"type": "deny", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}],
                   "provision": [{"type": "permit", "data": [{"meaning": "instance",
                                                               "reference": {"reference": "Observation/o1"}}]}]}]})


@pytest.fixture
def service(tmp_path):
    app, settings = build(Settings(data_dir=tmp_path / "consent", when_nothing_applies={"TREAT": "not-applicable"}))
    token = mint_local_token(settings.data_dir, "consent", ["consent.read", "consent.write", "consent.decide"], "test")
    with TestClient(app, headers={"authorization": f"Bearer {token}"}) as client:
        for resource in (PKB, OUT, NOT_TIME, NESTED):
            assert client.post("/Consent", json=resource).status_code == 201
        yield client, app, settings


def decide(client, patient, purpose_code, actors=(), **extra):
    response = client.post("/decide", json={"patient": patient, "purpose": purpose_code, "actors": list(actors),
                                            **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_permit_with_deny_exceptions(service):
    client, *_ = service
    research = decide(client, "Patient/p1", "HRESCH", ["Organization/uni"])
    assert research["decision"] == "permit" and research["obligations"] == ["pseudonymize"]
    assert research["basis"] == [{"consent": "Consent/pkb", "provision": "provision"}]
    excluded = decide(client, "Patient/p1", "TREAT", ["Practitioner/f204"])
    assert excluded["decision"] == "deny" and excluded["basis"][0]["provision"] == "provision.provision[0]"
    psychiatry = decide(client, "Patient/p1", "TREAT", ["Practitioner/f001"], securityLabels=["PSY"])
    assert psychiatry["decision"] == "deny" and psychiatry["basis"][0]["provision"] == "provision.provision[1]"
    marketing = decide(client, "Patient/p1", "HMARKT", ["Organization/uni"])
    assert marketing == {**marketing, "decision": "deny", "basis": []}, "no provision covers marketing"


def test_deny_with_a_permit_exception(service):
    client, *_ = service
    treat = decide(client, "Patient/p2", "TREAT", ["Organization/hospital"], action="access")
    assert treat["decision"] == "permit" and treat["basis"][0]["provision"] == "provision.provision[0]"
    assert decide(client, "Patient/p2", "TREAT", ["Organization/hospital"], action="disclose")["decision"] == "deny"
    assert decide(client, "Patient/p2", "HRESCH", ["Organization/uni"])["decision"] == "deny"


def test_a_period_limits_the_consent(service):
    client, *_ = service
    inside = decide(client, "Patient/p3", "TREAT", time="2015-03-01T10:00:00Z")
    assert inside["decision"] == "permit"
    after = decide(client, "Patient/p3", "TREAT", time="2026-03-01T10:00:00Z")
    assert after["decision"] == "not-applicable" and after["basis"] == [], "TREAT is configured not-applicable"
    assert decide(client, "Patient/p3", "HRESCH", time="2026-03-01T10:00:00Z")["decision"] == "deny"


def test_nested_provisions_decide_at_the_deepest_match(service):
    client, *_ = service
    def research(**extra):
        return decide(client, "Patient/p4", "HRESCH", ["Organization/uni"], **extra)
    assert research(resourceType="Observation", data=["Observation/o1"])["basis"][0]["provision"] == \
        "provision.provision[0].provision[0]"
    assert research(resourceType="Observation", data=["Observation/o1"])["decision"] == "permit"
    assert research(resourceType="Observation", data=["Observation/o2"])["decision"] == "deny"
    assert research(resourceType="Condition")["decision"] == "permit"
    assert decide(client, "Patient/p4", "HRESCH", ["Organization/pharma"], resourceType="Condition")["decision"] == \
        "deny", "actor mismatch: the consent does not apply"
    assert decide(client, "Patient/p4", "HMARKT", ["Organization/uni"])["decision"] == "deny", "purpose mismatch"


def test_revocation_and_deny_overrides_across_consents(service):
    client, *_ = service
    assert decide(client, "Patient/p1", "HRESCH", ["Organization/uni"])["decision"] == "permit"
    optout = consent("p1-optout", "Patient/p1", {"type": "deny", "purpose": [purpose("HRESCH")]})
    client.post("/Consent", json=optout)
    both = decide(client, "Patient/p1", "HRESCH", ["Organization/uni"])
    assert both["decision"] == "deny" and both["basis"] == [{"consent": "Consent/p1-optout", "provision": "provision"}]
    revoked = copy.deepcopy(optout)
    revoked["status"] = "inactive"
    assert client.put("/Consent/p1-optout", json=revoked).status_code == 200
    assert decide(client, "Patient/p1", "HRESCH", ["Organization/uni"])["decision"] == "permit"
    found = client.get("/Consent", params={"patient": "Patient/p1"}).json()
    assert found["total"] == 2 and {e["resource"]["status"] for e in found["entry"]} == {"active", "inactive"}


@pytest.mark.parametrize("breakage, where", [
    (lambda c: c.pop("status"), "Consent.status"),
    (lambda c: c["provision"].update(type="maybe"), "Consent.provision.type"),
    (lambda c: c.update(patient={"reference": "Group/g1"}), "Consent.patient"),
    (lambda c: c.pop("provision"), "Consent.provision"),
])
def test_invalid_consents_get_an_operation_outcome(service, breakage, where):
    client, *_ = service
    broken = copy.deepcopy(PKB)
    broken["id"] = "broken"
    breakage(broken)
    response = client.post("/Consent", json=broken)
    assert response.status_code == 422 and response.headers["content-type"] == "application/fhir+json"
    assert response.json()["issue"][0]["expression"][0].startswith(where)
    assert client.get("/Consent/broken").status_code == 404


def test_scopes_are_enforced_and_every_decision_is_audited(service, tmp_path):
    client, app, settings = service
    bare = TestClient(app)
    assert bare.post("/decide", json={"patient": "Patient/p1", "purpose": "TREAT"}).status_code == 401
    reader = mint_local_token(settings.data_dir, "consent", ["consent.read"], "reader")
    forbidden = bare.post("/decide", json={"patient": "Patient/p1", "purpose": "TREAT"},
                          headers={"authorization": f"Bearer {reader}"})
    assert forbidden.status_code == 403 and "consent.decide" in forbidden.json()["issue"][0]["diagnostics"]
    stranger = OKPKey.generate_key("Ed25519")
    forged = jwt.encode({"alg": "Ed25519"}, {"iss": LOCAL_ISSUER, "aud": "consent", "sub": "x", "exp": 4102444800,
                                           "scope": "consent.decide"}, stranger, algorithms=["Ed25519"])
    assert bare.post("/decide", json={"patient": "Patient/p1", "purpose": "TREAT"},
                     headers={"authorization": f"Bearer {forged}"}).status_code == 401
    decide(client, "Patient/p1", "HRESCH", ["Organization/uni"])
    app.state.audit.flush()  # no audit log configured: records wait in the spool
    events = [orjson.loads(line) for line in app.state.audit.spool.read_bytes().splitlines()]
    last = events[-1]
    assert last["type"]["code"] == "110113" and last["subtype"][0]["code"] == "AuthZ-Consent"
    assert {"what": {"reference": "Consent/pkb"}} .items() <= last["entity"][0].items() or \
        any(e["what"]["reference"] == "Consent/pkb" for e in last["entity"])
    assert last["outcomeDesc"] == "consent decision: permit"
