"""Microsoft's HIPAA Safe Harbor configuration (tests/data/ms-fhir-anonymizer, unchanged) on
medplat's PHI-seeded resources: one test per rule family of that file."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from deid_samples import PHI, all_resources, bundle, consent, device, diagnostic_report, observation, patient
from medplat.deid import Deidentifier, KeyDomain, load_config, shift

CONFIG = Path(__file__).parent / "data" / "ms-fhir-anonymizer" / "configuration-sample.json"
KEY = b"safe-harbor-test-key-32-bytes-xx"
TODAY = datetime.date(2026, 11, 30)


@pytest.fixture(scope="module")
def engine() -> Deidentifier:
    return Deidentifier(load_config(CONFIG), KeyDomain(KEY), today=TODAY)


def test_no_phi_string_survives(engine):
    text = json.dumps([engine.deidentify(r) for r in all_resources()])
    assert {k: v for k, v in PHI.items() if v in text} == {}


def test_names_telecom_and_identifiers(engine):
    out = engine.deidentify(patient())
    assert out["name"] == [{"use": "official"}]  # HumanName.use is kept, the rest redacted
    assert "telecom" not in out
    assert all("value" not in i for i in out.get("identifier", []))
    assert [i["system"] for i in out["identifier"]] == ["urn:oid:1.2.276.0.76.4.8", "http://fhir.de/sid/gkv/kvid-10"]


def test_addresses_keep_state_and_country_and_a_partial_zip(engine):
    address = engine.deidentify(patient())["address"][0]
    assert address == {"postalCode": "01300", "country": "DE"}  # first three digits, Safe Harbor's partial zip
    resource = patient()
    resource["address"][0]["postalCode"] = "03601"  # 036 is a restricted three-digit area in the file
    assert engine.deidentify(resource)["address"][0]["postalCode"] == "00000"


def test_dates_shift_per_resource_and_ages_over_89_are_removed(engine):
    out = engine.deidentify(patient())
    days = engine.keys.shift_days(f"resource|Patient/{PHI['patient_id']}")
    assert -3650 <= days <= -1
    assert out["birthDate"] == shift(PHI["birth"], days)
    old = patient()
    old["birthDate"] = "1930-05-01"  # indicative of an age over 89: year removed too
    assert "birthDate" not in engine.deidentify(old)
    obs = engine.deidentify(observation())
    assert obs["effectiveDateTime"].endswith("T00:00:00+01:00")  # time of day removed, zone kept


def test_resource_ids_and_references_are_hashed_consistently(engine):
    out_patient, out_observation = engine.deidentify(patient()), engine.deidentify(observation())
    assert out_patient["id"] == engine.keys.hash(PHI["patient_id"])
    assert out_observation["subject"]["reference"] == f"Patient/{out_patient['id']}"
    assert out_observation["encounter"]["reference"] == f"Encounter/{engine.keys.hash(PHI['encounter_id'])}"
    assert out_observation["performer"] == [{"reference": "#" + engine.keys.hash("p1")}]  # display redacted
    assert out_observation["contained"][0]["id"] == engine.keys.hash("p1")


def test_narrative_extensions_annotations_attachments_and_free_text(engine):
    out_patient, out_observation = engine.deidentify(patient()), engine.deidentify(observation())
    assert "text" not in out_patient and "extension" not in out_patient
    assert "note" not in out_observation and "valueQuantity" not in out_observation  # Observation.value redacted
    report = engine.deidentify(diagnostic_report())
    assert "conclusion" not in report and "text" not in report["code"]
    assert report["presentedForm"] == [{"contentType": "text/plain"}]  # base64 data redacted
    assert "sourceAttachment" not in engine.deidentify(consent()) or \
        "data" not in engine.deidentify(consent())["sourceAttachment"]


def test_codings_are_redacted_as_the_file_says(engine):
    """The sample configuration also redacts Coding.code and Coding.display (so much for analytics)."""
    coding = engine.deidentify(observation())["code"]["coding"][0]
    assert coding == {"system": "urn:iso:std:iso:11073:10101"}


def test_device_identity(engine):
    assert "serialNumber" not in engine.deidentify(device())


def test_bundle_urls_and_contained_resources(engine):
    out = engine.deidentify(bundle())
    assert all("fullUrl" not in e for e in out["entry"])
    contained = out["entry"][1]["resource"]["contained"][0]
    assert "name" not in contained and contained["birthDate"] != PHI["contained_birth"]  # shifted (age 78)


def test_security_labels_say_what_was_done(engine):
    codes = {c["code"] for c in engine.deidentify(patient())["meta"]["security"]}
    assert {"REDACTED", "CRYTOHASH", "PERTURBED"} <= codes
