"""medplat's research configuration on PHI-seeded FHIR: nothing identifying survives, dates
shift by one offset per patient (across resource types, runs and the DICOM anonymizer),
references stay resolvable and the output is still valid FHIR R4."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from deid_samples import (PHI, all_resources, bundle, clinical_bundle, consent, diagnostic_report, encounter,
                          observation, patient, references_in)
from medplat.deid import ConfigError, Deidentifier, KeyDomain, builtin, date_shift_days, shift
from medplat.service.db import make_engine
from medplat.workloads.pseudonymizer.keys import LocalKeyFile
from medplat.workloads.pseudonymizer.service import Pseudonymizer, metadata

KEY = bytes(range(32))
DOMAIN = "study-uni-research"


@pytest.fixture
def pseudonymizer(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'p.sqlite'}")
    metadata.create_all(engine)
    store = Pseudonymizer(engine, {"local": LocalKeyFile(tmp_path / "keys.json", "test-passphrase")})
    store.create_domain(DOMAIN, "pseudonymized", "local")
    return store


def deidentifier(store, key: bytes = KEY) -> Deidentifier:
    return Deidentifier(builtin("research"), KeyDomain(key, store.pseudonymize), domain=DOMAIN)


def test_no_phi_string_survives_in_any_resource(pseudonymizer):
    engine = deidentifier(pseudonymizer)
    outputs = [engine.deidentify(resource) for resource in all_resources()]
    text = json.dumps(outputs)
    leaked = {name: value for name, value in PHI.items() if value in text}
    assert leaked == {}
    assert "Max" not in text and "Erika" not in text


def test_outputs_are_valid_fhir(pseudonymizer):
    engine = deidentifier(pseudonymizer)
    for resource in all_resources():
        out = engine.deidentify(resource)
        get_fhir_model_class(out["resourceType"]).model_validate(out)


def test_recipient_sees_no_performer_encounter_notes_contained_or_identifiers(pseudonymizer):
    out = deidentifier(pseudonymizer).deidentify(observation())
    for element in ("performer", "encounter", "note", "contained", "identifier", "text", "extension"):
        assert element not in out
    assert out["valueQuantity"] == {"value": 97, "system": "http://unitsofmeasure.org", "code": "%"}  # unit: free text
    assert out["code"]["coding"][0]["code"] == "150456"


def test_dates_shift_by_one_offset_per_patient_across_resources_and_runs(pseudonymizer):
    days = date_shift_days(KEY, PHI["patient_id"])
    assert -3650 <= days <= -1
    first = deidentifier(pseudonymizer)
    out = {r["resourceType"]: first.deidentify(r) for r in (patient(), encounter(), observation(),
                                                           diagnostic_report(), consent())}
    assert out["Patient"]["birthDate"] == shift(PHI["birth"], days)
    assert out["Encounter"]["period"]["start"] == shift("2026-03-14T08:00:00+01:00", days, keep_time=True)
    assert out["Observation"]["effectiveDateTime"] == shift("2026-03-14T09:26:53+01:00", days, keep_time=True)
    assert out["DiagnosticReport"]["effectiveDateTime"] == shift("2026-03-15T10:00:00+01:00", days, keep_time=True)
    assert out["Consent"]["provision"]["period"] == {"start": shift("2026-01-05", days), "end": shift("2031-01-05", days)}
    # Intervals survive: admission to observation is still 1 h 26 min 53 s.
    admitted = datetime.datetime.fromisoformat(out["Encounter"]["period"]["start"])
    observed = datetime.datetime.fromisoformat(out["Observation"]["effectiveDateTime"])
    assert observed - admitted == datetime.timedelta(hours=1, minutes=26, seconds=53)
    # Another run (new engine, same project key) gives the same output; another key does not.
    assert deidentifier(pseudonymizer).deidentify(observation()) == out["Observation"]
    assert deidentifier(pseudonymizer, b"another project key".ljust(32, b"0")).deidentify(observation()) \
        != out["Observation"]


def test_dicom_anonymizer_derives_the_same_shift_from_the_same_key_domain():
    from medplat.workloads.dicom_anonymizer.deid import date_shift_days as dicom_shift
    for patient_key in ("pat-Q1234", "MRN-4711-0815", "x"):
        assert dicom_shift(KEY, patient_key) == date_shift_days(KEY, patient_key)


def test_patient_becomes_the_recipients_pseudonym_and_references_resolve(pseudonymizer):
    engine = deidentifier(pseudonymizer)
    pseudonym = pseudonymizer.pseudonymize(DOMAIN, [PHI["patient_id"]])[0]
    out_patient = engine.deidentify(patient())
    out_observation = engine.deidentify(observation())
    out_report = engine.deidentify(diagnostic_report())
    assert out_patient["id"] == pseudonym
    assert out_observation["subject"] == {"reference": f"Patient/{pseudonym}"}
    assert out_report["result"] == [{"reference": f"Observation/{out_observation['id']}"}]
    assert out_observation["id"] != PHI["observation_id"] and len(out_observation["id"]) == 64


def test_bundle_entries_reference_each_other_after_remapping(pseudonymizer):
    out = deidentifier(pseudonymizer).deidentify(bundle())
    urls = [e["fullUrl"] for e in out["entry"]]
    assert all(u.startswith("urn:uuid:") for u in urls) and len(set(urls)) == len(urls)
    references = references_in([e["resource"] for e in out["entry"]])
    assert references and set(references) <= set(urls), "every in-bundle reference names an entry's fullUrl"
    assert "identifier" not in out


def test_clinical_bundle_leaves_without_phi_and_every_reference_resolves_by_the_bundle_rules(pseudonymizer):
    """A hospital's collection Bundle (RESTful, urn:uuid and missing fullUrls; relative, absolute
    and urn:uuid references): no PHI string survives, each entry gets a keyed urn:uuid fullUrl
    and each reference that named an entry names that entry's new fullUrl (FHIR R4 2.36.4.1's
    resolution then finds it); the patient is the recipient's pseudonym, dates shift by the one
    per-patient offset, and the output is a valid R4 Bundle, the same on every run."""
    source = clinical_bundle()
    out = deidentifier(pseudonymizer).deidentify(source)
    text = json.dumps(out)
    assert {name: value for name, value in PHI.items() if value in text} == {}
    get_fhir_model_class("Bundle").model_validate(out)

    entries = {e["resource"]["resourceType"]: e for e in out["entry"]}
    assert list(entries) == [e["resource"]["resourceType"] for e in source["entry"]], "no entry lost"
    url = {kind: entry["fullUrl"] for kind, entry in entries.items()}
    assert all(u.startswith("urn:uuid:") for u in url.values()) and len(set(url.values())) == len(url)
    resource = {kind: entry["resource"] for kind, entry in entries.items()}
    assert resource["Observation"]["subject"]["reference"] == url["Patient"]          # relative, RESTful base
    assert resource["Observation"]["device"]["reference"] == url["Device"]            # entry without fullUrl
    assert resource["DiagnosticReport"]["subject"]["reference"] == url["Patient"]     # absolute
    assert resource["DiagnosticReport"]["result"] == [{"reference": url["Observation"]}]
    assert resource["Encounter"]["subject"]["reference"] == url["Patient"]            # from a urn:uuid entry
    assert resource["Consent"]["patient"]["reference"] == url["Patient"]
    assert resource["Device"]["patient"]["reference"] == url["Patient"]
    assert "encounter" not in resource["Observation"] and "encounter" not in resource["DiagnosticReport"], \
        "the research configuration removes encounter links; relinking does not bring them back"
    assert set(references_in(resource)) <= set(url.values()), "no reference points outside the Bundle"

    assert resource["Patient"]["id"] == pseudonymizer.pseudonymize(DOMAIN, [PHI["patient_id"]])[0]
    days = date_shift_days(KEY, PHI["patient_id"])
    assert resource["Encounter"]["period"]["start"] == shift("2026-03-14T08:00:00+01:00", days, keep_time=True)
    assert resource["Observation"]["effectiveDateTime"] == shift("2026-03-14T09:26:53+01:00", days, keep_time=True)
    assert resource["Patient"]["birthDate"] == shift(PHI["birth"], days)
    assert deidentifier(pseudonymizer).deidentify(clinical_bundle()) == out, "the same on every run"


def test_microsofts_configuration_keeps_its_bundle_behaviour():
    """Relinking is medplat's parameter: Microsoft's sample configuration redacts fullUrl as its
    tool does (its functional vector bundle-basic checks the rest)."""
    from medplat.deid import load_config
    config = load_config(Path(__file__).parent / "data" / "ms-fhir-anonymizer" / "configuration-sample.json")
    out = Deidentifier(config, KeyDomain(KEY)).deidentify(clinical_bundle())
    assert all("fullUrl" not in e for e in out["entry"])
    with pytest.raises(ConfigError, match="bundleReferences"):
        load_config({"fhirPathRules": [], "parameters": {"bundleReferences": "maybe"}})


def test_unknown_extensions_and_narrative_are_dropped_by_default():
    from medplat.deid import load_config
    config = load_config({"fhirPathRules": [{"path": "Patient.name", "method": "redact"}]})
    out = Deidentifier(config, KeyDomain(KEY)).deidentify(patient())
    assert "extension" not in out and "text" not in out and "name" not in out
    assert out["identifier"][0]["value"] == PHI["mrn"], "unmatched elements are kept, as in Microsoft's tool"
    keep = load_config({"fhirPathRules": [{"path": "Patient.extension.where(url='https://example.org/fhir/"
                                                    "favourite-colour')", "method": "keep"}]})
    assert Deidentifier(keep, KeyDomain(KEY)).deidentify(patient())["extension"][0]["valueString"] == \
        PHI["extension_value"]


def test_contained_reference_dropped_with_its_contained_resource(pseudonymizer):
    """Resource.contained is redacted; a '#p1' reference left behind would dangle, so it goes too."""
    resource = observation()
    resource["subject"] = {"reference": "#p1"}
    out = deidentifier(pseudonymizer).deidentify(resource)
    assert "subject" not in out and "contained" not in out


def test_free_text_in_quantity_unit_and_coding_display_does_not_survive(pseudonymizer):
    # Quantity.unit and Coding.display are R4 `string`s (hl7.org/fhir/R4/datatypes.html): free text a
    # sender can fill with anything. Values from the R4 Observation example f001 (glucose), PHI planted.
    resource = observation()
    resource["valueQuantity"] = {"value": 6.3, "unit": "mmol/l for Max Mustermann",
                                 "system": "http://unitsofmeasure.org", "code": "mmol/L"}
    resource["code"]["coding"][0]["display"] = "SpO2 taken at Hauptstr. 1, Dresden"
    out = deidentifier(pseudonymizer).deidentify(resource)
    text = json.dumps(out)
    assert "Mustermann" not in text and "Hauptstr" not in text
    assert out["valueQuantity"] == {"value": 6.3, "system": "http://unitsofmeasure.org", "code": "mmol/L"}
    assert out["code"]["coding"][0]["code"] == "150456"



def test_a_questionnaire_answer_given_as_uri_does_not_survive_at_any_depth(pseudonymizer):
    # QuestionnaireResponse.item.answer.value[x] may be a uri (R4 QuestionnaireResponse): an e-mail
    # address or a home page typed by the patient; answers nest (answer.item, item.item).
    deep = {"linkId": "1.1.1", "answer": [{"valueUri": "https://erika-mustermann.example/home"}]}
    resource = {"resourceType": "QuestionnaireResponse", "id": "qr-1", "status": "completed",
                "subject": {"reference": "Patient/qr-patient"},
                "item": [{"linkId": "1", "answer": [{"valueUri": "mailto:erika.mustermann@example.org"},
                                                    {"valueCoding": {"system": "http://loinc.org", "code": "LA33-6"}}],
                          "item": [{"linkId": "1.1", "answer": [{"valueBoolean": True, "item": [deep]}]}]}]}
    out = deidentifier(pseudonymizer).deidentify(resource)
    assert "mustermann" not in json.dumps(out)
    assert out["item"][0]["answer"] == [{"valueCoding": {"system": "http://loinc.org", "code": "LA33-6"}}]
