"""Realistic FHIR R4 resources seeded with distinct PHI strings (every one appears once in the
input and must appear nowhere in a de-identified output). Shapes follow the FHIR R4 examples
(patient-example, observation-example, diagnosticreport-example, consent-example-*)."""
from __future__ import annotations

PHI = {
    "name_family": "Mustermann", "name_given": "Maximilian", "contained_family": "Kowalczyk",
    "contained_given": "Jadwiga", "mrn": "MRN-4711-0815", "insurance": "A123456789", "phone": "+49 351 4567890",
    "email": "max.mustermann@example.org", "street": "Pfotenhauerstrasse 42", "city": "Dresden-Johannstadt",
    "zip": "01307", "birth": "1961-02-03", "contained_birth": "1948-11-23", "note_address": "Bautzner Str 17",
    "note_phone": "0172 5550199", "practitioner": "Dr. Erika Beispiel", "encounter_id": "enc-Z8842",
    "patient_id": "pat-Q1234", "observation_id": "obs-K9876", "report_id": "rep-T5555", "consent_id": "con-V3131",
    "report_text": "Befund fuer Herrn Mustermann unauffaellig", "attachment": "SGVsbG8gTXVzdGVybWFubg==",
    "extension_value": "Geheimnis-Lieblingsfarbe", "narrative": "Narrativ-Max-Mustermann",
    "device_serial": "SN-778899-DE", "consent_org": "Klinikum Beispielstadt",
    "server": "fhir.klinikum-beispielstadt.example", "bundle_note": "Aufnahme durch Pfleger Kunibert Wendehals",
}
SERVER = f"https://{PHI['server']}/fhir"
# Locally identified entries of the clinical Bundle (R4 bundle-references example style).
ENCOUNTER_URN = "urn:uuid:0b3a7c1e-5d2f-4e8a-9c61-2f4d8e7a1b90"
REPORT_URN = "urn:uuid:7e21c4d9-83b5-4f0a-a6d2-c95e13f0b847"
START = "2026-03-14T09:26:53+01:00"


def patient() -> dict:
    return {"resourceType": "Patient", "id": PHI["patient_id"],
            "text": {"status": "generated", "div": f"<div xmlns=\"http://www.w3.org/1999/xhtml\">{PHI['narrative']}</div>"},
            "extension": [{"url": "https://example.org/fhir/favourite-colour", "valueString": PHI["extension_value"]}],
            "identifier": [{"system": "urn:oid:1.2.276.0.76.4.8", "value": PHI["mrn"]},
                           {"system": "http://fhir.de/sid/gkv/kvid-10", "value": PHI["insurance"]}],
            "name": [{"use": "official", "family": PHI["name_family"], "given": [PHI["name_given"]]}],
            "telecom": [{"system": "phone", "value": PHI["phone"]}, {"system": "email", "value": PHI["email"]}],
            "gender": "male", "birthDate": PHI["birth"],
            "address": [{"line": [PHI["street"]], "city": PHI["city"], "postalCode": PHI["zip"], "country": "DE"}]}


def encounter() -> dict:
    return {"resourceType": "Encounter", "id": PHI["encounter_id"], "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": f"Patient/{PHI['patient_id']}", "display": PHI["name_family"]},
            "participant": [{"individual": {"display": PHI["practitioner"]}}],
            "period": {"start": "2026-03-14T08:00:00+01:00", "end": "2026-03-20T11:30:00+01:00"}}


def observation() -> dict:
    return {"resourceType": "Observation", "id": PHI["observation_id"], "status": "final",
            "contained": [{"resourceType": "Patient", "id": "p1",
                           "name": [{"family": PHI["contained_family"], "given": [PHI["contained_given"]]}],
                           "birthDate": PHI["contained_birth"]}],
            "identifier": [{"system": "urn:example:lab", "value": PHI["mrn"] + "-obs"}],
            "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "150456",
                                 "display": "MDC_PULS_OXIM_SAT_O2"}]},
            "subject": {"reference": f"Patient/{PHI['patient_id']}"},
            "encounter": {"reference": f"Encounter/{PHI['encounter_id']}"},
            "performer": [{"reference": "#p1", "display": f"{PHI['practitioner']}, born {PHI['contained_birth']}"}],
            "effectiveDateTime": START, "issued": "2026-03-14T09:27:00+01:00",
            "valueQuantity": {"value": 97, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
            "note": [{"text": f"Patient lives at {PHI['note_address']}, call {PHI['note_phone']}"}]}


def diagnostic_report() -> dict:
    return {"resourceType": "DiagnosticReport", "id": PHI["report_id"], "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "59408-5"}], "text": PHI["report_text"]},
            "subject": {"reference": f"Patient/{PHI['patient_id']}"},
            "encounter": {"reference": f"Encounter/{PHI['encounter_id']}"},
            "effectiveDateTime": "2026-03-15T10:00:00+01:00",
            "performer": [{"display": PHI["practitioner"]}],
            "result": [{"reference": f"Observation/{PHI['observation_id']}"}],
            "conclusion": PHI["report_text"],
            "presentedForm": [{"contentType": "text/plain", "data": PHI["attachment"]}]}


def consent() -> dict:
    return {"resourceType": "Consent", "id": PHI["consent_id"], "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
            "patient": {"reference": f"Patient/{PHI['patient_id']}"}, "dateTime": "2026-01-05T12:00:00+01:00",
            "organization": [{"display": PHI["consent_org"]}],
            "sourceAttachment": {"contentType": "application/pdf", "data": PHI["attachment"]},
            "provision": {"type": "permit", "period": {"start": "2026-01-05", "end": "2031-01-05"},
                          "actor": [{"role": {"coding": [{"code": "PRCP"}]}, "reference": {"display": PHI["consent_org"]}}]}}


def device() -> dict:
    return {"resourceType": "Device", "id": "dev-monitor-7", "serialNumber": PHI["device_serial"],
            "type": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "69798"}]},
            "patient": {"reference": f"Patient/{PHI['patient_id']}"}}


def bundle() -> dict:
    return {"resourceType": "Bundle", "id": "bundle-1", "type": "collection",
            "identifier": {"system": "urn:example:bundles", "value": PHI["mrn"] + "-bundle"},
            "entry": [{"fullUrl": f"https://fhir.example.org/Patient/{PHI['patient_id']}", "resource": patient()},
                      {"fullUrl": f"https://fhir.example.org/Observation/{PHI['observation_id']}",
                       "resource": observation()},
                      {"fullUrl": f"https://fhir.example.org/DiagnosticReport/{PHI['report_id']}",
                       "resource": diagnostic_report()}]}


def clinical_bundle() -> dict:
    """A collection Bundle as a hospital system sends it: a RESTful fullUrl (server and patient id
    in the URL), locally identified urn:uuid entries, and relative, absolute and urn:uuid
    references between the entries (R4 2.36.4.1), one entry without a fullUrl; PHI throughout."""
    enc, obs, rep, con, dev = encounter(), observation(), diagnostic_report(), consent(), device()
    enc.pop("id")  # a locally identified resource: known only by its urn:uuid
    obs["encounter"] = {"reference": ENCOUNTER_URN}
    obs["note"].append({"text": PHI["bundle_note"]})
    obs["device"] = {"reference": f"Device/{dev['id']}"}
    rep["subject"] = {"reference": f"{SERVER}/Patient/{PHI['patient_id']}"}  # absolute
    rep["encounter"] = {"reference": ENCOUNTER_URN}
    return {"resourceType": "Bundle", "id": "bundle-clinical", "type": "collection",
            "identifier": {"system": "urn:oid:1.2.276.0.76.4.99", "value": PHI["mrn"] + "-stay"},
            "timestamp": "2026-03-20T12:00:00+01:00",
            "entry": [{"fullUrl": f"{SERVER}/Patient/{PHI['patient_id']}", "resource": patient()},
                      {"fullUrl": ENCOUNTER_URN, "resource": enc},
                      {"fullUrl": f"{SERVER}/Observation/{PHI['observation_id']}", "resource": obs},
                      {"fullUrl": REPORT_URN, "resource": rep},
                      {"fullUrl": f"{SERVER}/Consent/{PHI['consent_id']}", "resource": con},
                      {"resource": dev}]}


def all_resources() -> list[dict]:
    return [patient(), encounter(), observation(), diagnostic_report(), consent(), device(), bundle(),
            clinical_bundle()]


def references_in(value) -> list[str]:
    """Every Reference.reference below a JSON value."""
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for v in value.values() for r in references_in(v)]
    if isinstance(value, list):
        return [r for v in value for r in references_in(v)]
    return []
