"""End to end across ingest, consent and pseudonymizer: a denied consent stops a research
export; a granted one lets the data through, with the patient pseudonymized."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from identities import INGRESS, forwarded_cert
from medplat.service.localpki import Ca

from medplat.service.auth import mint_local_token
from medplat.service.clients import ServiceClient
from medplat.workloads.consent.app import Settings as ConsentSettings
from medplat.workloads.consent.app import build as build_consent
from medplat.workloads.ingest.app import Settings as IngestSettings
from medplat.workloads.ingest.app import build as build_ingest
from medplat.workloads.pseudonymizer.app import Settings as PseudoSettings
from medplat.workloads.pseudonymizer.app import build as build_pseudonymizer


def consent_for(cid: str, patient: str, kind: str) -> dict:
    return {"resourceType": "Consent", "id": cid, "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
            "patient": {"reference": patient},
            "provision": {"type": kind, "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                                     "code": "HRESCH"}]}}


def observation(message_id: str, patient: str, seq: int) -> dict:
    return {"id": message_id, "device": "monitor-1", "seq": seq, "dataClass": "phi", "resource": {
        "resourceType": "Observation", "id": message_id, "status": "final", "subject": {"reference": patient},
        "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "150456"}]},
        "valueQuantity": {"value": 97, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}}


def authed(app, data_dir, audience, scopes):
    token = mint_local_token(data_dir, audience, scopes, "ingest")
    return TestClient(app, headers={"authorization": f"Bearer {token}"})


@pytest.fixture
def platform(tmp_path):
    consent_app, consent_settings = build_consent(ConsentSettings(data_dir=tmp_path / "consent"))
    pseudo_app, pseudo_settings = build_pseudonymizer(PseudoSettings(data_dir=tmp_path / "pseudo"))
    consents = authed(consent_app, consent_settings.data_dir, "consent", ["consent.write", "consent.decide"])
    pseudo = authed(pseudo_app, pseudo_settings.data_dir, "pseudonymizer", ["pseudonym.admin", "pseudonym.create",
                                                                            "pseudonym.resolve"])
    assert pseudo.post("/domains", json={"name": "study-7", "dataClass": "pseudonymized",
                                         "reversible": True}).status_code == 201
    ingest_app, ingest_settings = build_ingest(
        IngestSettings(data_dir=tmp_path / "ingest", trusted_proxies=INGRESS),
        consent=ServiceClient("http://testserver", client=consents, name="consent"),
        pseudonymizer=ServiceClient("http://testserver", client=pseudo, name="pseudonymizer"))
    ingest = authed(ingest_app, ingest_settings.data_dir, "ingest", ["export.research"])
    batch = {"messages": [observation("m1", "Patient/anna", 1), observation("m2", "Patient/bert", 2),
                          observation("m3", "Patient/anna", 3)]}
    site = forwarded_cert(Ca(tmp_path, "platform"), "edge-dresden")
    assert ingest.post("/batches", json=batch, headers=site).status_code == 200
    return consents, pseudo, ingest


def export(ingest):
    response = ingest.post("/exports/research", json={"purpose": "HRESCH", "actor": "Organization/uni-research",
                                                      "domain": "study-7"})
    assert response.status_code == 200, response.text
    return response.json()


def test_denied_consent_stops_the_export_and_granted_consent_lets_it_through_pseudonymized(platform):
    consents, pseudo, ingest = platform
    nothing = export(ingest)
    assert nothing["counts"] == {"considered": 3, "exported": 0, "refused": 3}, "no consent: nothing leaves"

    assert consents.post("/Consent", json=consent_for("anna-yes", "Patient/anna", "permit")).status_code == 201
    assert consents.post("/Consent", json=consent_for("bert-no", "Patient/bert", "deny")).status_code == 201
    result = export(ingest)
    assert result["counts"] == {"considered": 3, "exported": 2, "refused": 1}
    assert result["refused"] == [{"id": "m2", "reason": "consent: deny"}]
    subjects = {r["subject"]["identifier"]["value"] for r in result["exported"]}
    assert len(subjects) == 1
    (pseudonym,) = subjects
    assert "anna" not in str(result["exported"]) and "bert" not in str(result["exported"])
    assert all(r["subject"]["identifier"]["system"] == "urn:medplat:pseudonym:study-7" for r in result["exported"])
    resolved = pseudo.post("/domains/study-7/de-pseudonymize", json={"pseudonyms": [pseudonym]}).json()["values"]
    assert resolved == ["Patient/anna"], "the pseudonym is the study domain's, resolvable only with the role"


def test_export_needs_its_scope(platform):
    _consents, _pseudo, ingest = platform
    bare = TestClient(ingest.app)
    assert bare.post("/exports/research", json={"actor": "Organization/x", "domain": "study-7"}).status_code == 401
