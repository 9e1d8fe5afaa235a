"""End to end across ingest, consent and pseudonymizer: a denied consent stops a research
export; a granted one lets the data through de-identified (medplat.deid research
configuration); recipient and domain come from the client's registration, not the body."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from identities import INGRESS, forwarded_cert
from medplat.service.localpki import Ca

import deid_samples
from deid_samples import PHI, references_in
from fhir.resources.R4B import get_fhir_model_class
from medplat.deid import date_shift_days, load_key, shift
from medplat.service.auth import mint_local_token
from medplat.service.clients import ServiceClient
from medplat.workloads.consent.app import Settings as ConsentSettings
from medplat.workloads.consent.app import build as build_consent
from medplat.workloads.ingest.app import Settings as IngestSettings
from medplat.workloads.ingest.app import build as build_ingest
from medplat.workloads.pseudonymizer.app import Settings as PseudoSettings
from medplat.workloads.pseudonymizer.app import build as build_pseudonymizer

CLIENTS = {"uni-research-client": {"organisation": "Organization/uni-research", "domains": ["study-7"]},
           "other-client": {"organisation": "Organization/other-institute", "domains": ["study-9"]}}


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


def authed(app, data_dir, audience, scopes, subject="ingest"):
    token = mint_local_token(data_dir, audience, scopes, subject)
    return TestClient(app, headers={"authorization": f"Bearer {token}"})


@pytest.fixture
def platform(tmp_path):
    consent_app, consent_settings = build_consent(ConsentSettings(data_dir=tmp_path / "consent"))
    pseudo_app, pseudo_settings = build_pseudonymizer(PseudoSettings(data_dir=tmp_path / "pseudo"))
    consents = authed(consent_app, consent_settings.data_dir, "consent", ["consent.write", "consent.decide"])
    pseudo = authed(pseudo_app, pseudo_settings.data_dir, "pseudonymizer", ["pseudonym.admin", "pseudonym.create",
                                                                            "pseudonym.resolve"])
    for domain in ("study-7", "study-9"):
        assert pseudo.post("/domains", json={"name": domain, "dataClass": "pseudonymized",
                                             "reversible": True}).status_code == 201
    ingest_app, ingest_settings = build_ingest(
        IngestSettings(data_dir=tmp_path / "ingest", trusted_proxies=INGRESS, export_clients=CLIENTS),
        consent=ServiceClient("http://testserver", client=consents, name="consent"),
        pseudonymizer=ServiceClient("http://testserver", client=pseudo, name="pseudonymizer"))
    ingest = authed(ingest_app, ingest_settings.data_dir, "ingest", ["export.research"], "uni-research-client")
    batch = {"messages": [observation("m1", "Patient/anna", 1), observation("m2", "Patient/bert", 2),
                          observation("m3", "Patient/anna", 3)]}
    site = forwarded_cert(Ca(tmp_path, "platform"), "edge-dresden")
    assert ingest.post("/batches", json=batch, headers=site).status_code == 200
    return consents, pseudo, ingest


def exported(result: dict) -> list[dict]:
    """The exported resources: the entries of the answer's collection Bundle."""
    assert result["bundle"]["resourceType"] == "Bundle" and result["bundle"]["type"] == "collection"
    return [entry["resource"] for entry in result["bundle"]["entry"]]


def export(ingest, **body):
    response = ingest.post("/exports/research", json={"purpose": "HRESCH", **body})
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
    assert (result["actor"], result["domain"]) == ("Organization/uni-research", "study-7"), "from the registration"
    assert result["refused"] == [{"id": "m2", "reason": "consent: deny"}]
    subjects = {r["subject"]["reference"] for r in exported(result)}
    assert len(subjects) == 1
    (reference,) = subjects
    assert "anna" not in str(result["bundle"]) and "bert" not in str(result["bundle"])
    pseudonym = reference.removeprefix("Patient/")
    resolved = pseudo.post("/domains/study-7/de-pseudonymize", json={"pseudonyms": [pseudonym]}).json()["values"]
    assert resolved == ["anna"], "the pseudonym is the study domain's, resolvable only with the role"


def test_another_organisations_domain_and_a_foreign_actor_are_refused(platform):
    _consents, _pseudo, ingest = platform
    response = ingest.post("/exports/research", json={"domain": "study-9"})
    assert response.status_code == 403 and "not registered to Organization/uni-research" in response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    response = ingest.post("/exports/research", json={"actor": "Organization/other-institute"})
    assert response.status_code == 403


def test_unregistered_client_is_refused(platform, tmp_path):
    _consents, _pseudo, ingest = platform
    token = mint_local_token(tmp_path / "ingest", "ingest", ["export.research"], "someone-else")
    response = ingest.post("/exports/research", json={}, headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 403 and "not registered" in response.text


def test_export_needs_its_scope(platform):
    _consents, _pseudo, ingest = platform
    bare = TestClient(ingest.app)
    assert bare.post("/exports/research", json={"domain": "study-7"}).status_code == 401


def test_phi_seeded_resources_leave_without_phi_and_with_one_shift_per_patient(platform, tmp_path):
    consents, _pseudo, ingest = platform
    patient = f"Patient/{PHI['patient_id']}"
    assert consents.post("/Consent", json=consent_for("q-yes", patient, "permit")).status_code == 201
    resources = [deid_samples.patient(), deid_samples.encounter(), deid_samples.observation(),
                 deid_samples.diagnostic_report(), deid_samples.consent()]
    batch = {"messages": [{"id": f"phi-{i}", "device": "monitor-9", "seq": 10 + i, "dataClass": "phi",
                           "resource": r} for i, r in enumerate(resources)]}
    site = forwarded_cert(Ca(tmp_path, "platform"), "edge-dresden")
    assert ingest.post("/batches", json=batch, headers=site).status_code == 200
    first = export(ingest)
    entries = {e["resource"]["resourceType"]: e for e in first["bundle"]["entry"]}
    assert set(entries) == {"Patient", "Encounter", "Observation", "DiagnosticReport", "Consent"}
    get_fhir_model_class("Bundle").model_validate(first["bundle"])
    text = json.dumps(first)
    assert {k: v for k, v in PHI.items() if v in text} == {}
    days = date_shift_days(load_key(tmp_path / "ingest" / "deid" / "project.key"), PHI["patient_id"])
    by_type = {kind: entry["resource"] for kind, entry in entries.items()}
    url = {kind: entry["fullUrl"] for kind, entry in entries.items()}
    assert by_type["Patient"]["birthDate"] == shift(PHI["birth"], days)
    assert by_type["Observation"]["effectiveDateTime"] == shift(deid_samples.START, days, keep_time=True)
    assert by_type["Consent"]["dateTime"] == shift("2026-01-05T12:00:00+01:00", days, keep_time=True)
    # References between exported resources name their entries (resolvable by the Bundle rules).
    assert by_type["Observation"]["subject"]["reference"] == url["Patient"]
    assert by_type["DiagnosticReport"]["result"] == [{"reference": url["Observation"]}]
    assert by_type["Consent"]["patient"]["reference"] == url["Patient"]
    for element in ("performer", "encounter", "note", "contained", "identifier"):
        assert element not in by_type["Observation"]
    assert export(ingest)["bundle"] == first["bundle"], "the same export twice is the same output"


def test_a_stored_bundle_leaves_as_one_deidentified_bundle_whose_references_resolve(platform, tmp_path):
    """A hospital's clinical Bundle (Patient, Encounter, Observation with performer, contained
    Patient and notes, DiagnosticReport, Consent, Device; RESTful and urn:uuid fullUrls) stored as
    one message: refused while its patient has not consented, then exported as one Bundle without
    any PHI string, every in-bundle reference naming an entry's fullUrl, the patient a pseudonym
    of the recipient's study domain. A Bundle that also holds a patient who denied is refused whole."""
    consents, pseudo, ingest = platform
    site = forwarded_cert(Ca(tmp_path, "platform"), "edge-dresden")
    source = deid_samples.clinical_bundle()
    mixed = deid_samples.clinical_bundle()
    mixed["id"] = "bundle-mixed"
    mixed["entry"].append({"resource": {**deid_samples.observation(), "id": "obs-bert",
                                        "subject": {"reference": "Patient/bert"}}})
    batch = {"messages": [{"id": "stay-bundle", "device": "his", "seq": 20, "dataClass": "phi", "resource": source},
                          {"id": "mixed-bundle", "device": "his", "seq": 21, "dataClass": "phi", "resource": mixed}]}
    assert ingest.post("/batches", json=batch, headers=site).status_code == 200
    before = {r["id"]: r["reason"] for r in export(ingest)["refused"]}
    assert before["stay-bundle"].startswith("consent: deny") and before["mixed-bundle"].startswith("consent: deny")

    patient = f"Patient/{PHI['patient_id']}"
    assert consents.post("/Consent", json=consent_for("q-yes", patient, "permit")).status_code == 201
    assert consents.post("/Consent", json=consent_for("bert-no", "Patient/bert", "deny")).status_code == 201
    result = export(ingest)
    refused = {r["id"]: r["reason"] for r in result["refused"]}
    assert refused["mixed-bundle"] == "consent: deny", "one denying patient keeps the whole Bundle in"
    (bundle,) = [r for r in exported(result) if r["resourceType"] == "Bundle"]
    assert {k: v for k, v in PHI.items() if v in json.dumps(bundle)} == {}
    get_fhir_model_class("Bundle").model_validate(bundle)
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert len(bundle["entry"]) == len(source["entry"]) and all(u.startswith("urn:uuid:") for u in urls)
    references = references_in([e["resource"] for e in bundle["entry"]])
    assert len(references) >= 6 and set(references) <= urls, "every reference resolves inside the Bundle"
    (out_patient,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    resolved = pseudo.post("/domains/study-7/de-pseudonymize", json={"pseudonyms": [out_patient["id"]]}).json()
    assert resolved["values"] == [PHI["patient_id"]], "the patient is a pseudonym of the recipient's study domain"
    assert export(ingest)["bundle"] == result["bundle"], "the same export twice is the same output"


def test_unbounded_or_malformed_body_fields_get_a_422_operation_outcome(platform):
    """purpose is a v3-ActReason code (FHIR `code`: no leading/trailing or double whitespace);
    domain and actor are names: a 2 MB purpose must not reach the consent service or the audit log."""
    _consents, _pseudo, ingest = platform
    for body in ({"purpose": "x" * 2_000_000}, {"purpose": ""}, {"purpose": "HRESCH\n"},
                 {"domain": "d" * 10_000}, {"actor": "a" * 10_000}):
        response = ingest.post("/exports/research", json=body)
        assert response.status_code == 422, (str(body)[:40], response.status_code)
        assert response.json()["resourceType"] == "OperationOutcome"
        assert len(response.text) < 2_000


def test_a_bundle_hiding_a_denying_patient_in_a_nested_bundle_is_refused(platform, tmp_path):
    """Bundle.entry.resource may itself be a Bundle (R4 Bundle: any Resource; e.g. a document
    Bundle inside a collection). Consent was checked only on the outer entries, so a denying
    patient's Observation nested one level down left with the permitted patient's data."""
    consents, _pseudo, ingest = platform
    assert consents.post("/Consent", json=consent_for("anna-yes", "Patient/anna", "permit")).status_code == 201
    assert consents.post("/Consent", json=consent_for("bert-no", "Patient/bert", "deny")).status_code == 201
    anna = observation("n1", "Patient/anna", 1)["resource"]
    bert = {**observation("n2", "Patient/bert", 2)["resource"], "valueQuantity": {"value": 61.5}}
    inner = {"resourceType": "Bundle", "id": "inner", "type": "collection", "entry": [{"resource": bert}]}
    outer = {"resourceType": "Bundle", "id": "outer", "type": "collection",
             "entry": [{"resource": anna}, {"resource": inner}]}
    site = forwarded_cert(Ca(tmp_path, "platform"), "edge-dresden")
    message = {"id": "nested", "device": "his", "seq": 40, "dataClass": "phi", "resource": outer}
    assert ingest.post("/batches", json={"messages": [message]}, headers=site).status_code == 200
    result = export(ingest)
    assert "nested" in {r["id"] for r in result["refused"]}
    assert "61.5" not in json.dumps(result["bundle"])
