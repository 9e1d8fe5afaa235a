"""hl7-retrofit: PID-3 (CX) -> the Observation subject's Identifier, per the HL7 v2-to-FHIR IG's
CX -> Identifier map (CX.1 -> value, CX.4 assigning authority -> system, CX.5 -> type).

Found by a fresh-eyes test: the subject was `urn:medplat:patient-id|<CX.1 of the first repetition>`
whatever the assigning authority, so MRN 123456 of the Dresden hospital and MRN 123456 of the
Leipzig hospital became one patient, and a visit number sent before the MRN became the patient id.

Vectors:
- [IG-ORU] v2-to-FHIR IG test conversions, ORU_R01 (input/pagecontent/test_conversions.md in
  github.com/HL7/v2-to-fhir): PID-3 `1032702^^^OrdOrg&3.4.5.6.7&ISO^MR^...` — the IG's FHIR output
  carries system `urn:oid:3.4.5.6.7`, value 1032702, type MR.
- v2.5.1 chapter 2A.14 CX (ID, check digit, scheme, HD assigning authority, identifier type from
  Table 0203) and 2A.33 HD (namespace ID & universal ID & universal ID type, Table 0301); written
  here with two German sites' namespaces and a visit number (VN) repeated before the MRN.
"""
from __future__ import annotations

from zoneinfo import ZoneInfo

from medplat.workloads.hl7_retrofit.mapping import SiteRules, decode, to_bundle

RULES = SiteRules(zone=ZoneInfo("Europe/Berlin"))


def subject_of(pid: str) -> dict:
    message = "\r".join([
        "MSH|^~\\&|LAB|UKD|MEDPLAT|EDGE|20240315143000+0100||ORU^R01^ORU_R01|C1|P|2.5.1|||AL|NE||UNICODE UTF-8",
        pid, "OBR|1|||24331-1^Lipid panel^LN|||20240315120000+0100",
        "OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L^^UCUM|||||F"]) + "\r"
    bundle = to_bundle(decode(message.encode(), RULES), RULES)
    observation = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    return observation["subject"]["identifier"]


def test_ig_oru_assigning_authority_with_an_iso_oid_is_the_identifier_system():
    identifier = subject_of("PID|1||1032702^^^OrdOrg&3.4.5.6.7&ISO^MR^OrdFac&2.3.4.5.6&ISO^20190101^20290101")
    assert identifier["system"] == "urn:oid:3.4.5.6.7"
    assert identifier["value"] == "1032702"
    assert identifier["type"]["coding"][0] == {"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                "code": "MR"}


def test_one_number_at_two_hospitals_is_two_patients():
    dresden = subject_of("PID|1||123456^^^UKDD^MR")
    leipzig = subject_of("PID|1||123456^^^UKL^MR")
    assert dresden["value"] == leipzig["value"] == "123456"
    assert dresden["system"] != leipzig["system"]


def test_the_medical_record_number_is_chosen_over_a_visit_number_sent_first():
    identifier = subject_of("PID|1||999^^^UKL^VN~123456^^^UKL^MR")
    assert identifier["value"] == "123456"
    assert identifier["type"]["coding"][0]["code"] == "MR"


def test_an_identifier_without_assigning_authority_keeps_the_site_system():
    assert subject_of("PID|1||123456")["system"] == "urn:medplat:patient-id"
