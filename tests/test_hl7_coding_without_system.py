"""hl7-retrofit: a CWE/CE without a coding system gets no invented system.

Found by a fresh-eyes test: OBX-5 `YEL^Yellow` (CWE.3 empty) became Coding
`urn:medplat:hl7v2-coding-system:|YEL` — a system with an empty name — and an OBX-3 local code
`GLU^Glucose` without CWE.3 was published as the MDC code `GLU` (`urn:iso:std:iso:11073:10101`),
a coding the 11073-10101 nomenclature does not have. HL7 v2.5.1 2A.13 CWE: component 3 (name of
coding system) is optional; the v2-to-FHIR IG's CWE -> CodeableConcept map puts CWE.3 in
Coding.system, so with none there is no system (FHIR R4 Coding.system is 0..1). PCD-01 rows
without a system (numeric MDC codes such as 150456, or MDC reference ids) stay MDC."""
from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from medplat.workloads.hl7_retrofit.mapping import SiteRules, decode, to_bundle

RULES = SiteRules(zone=ZoneInfo("Europe/Berlin"))


def observation(obx: str) -> dict:
    message = "\r".join([
        "MSH|^~\\&|LAB|UKD|MEDPLAT|EDGE|20240315143000+0100||ORU^R01^ORU_R01|W1|P|2.5.1|||AL|NE||UNICODE UTF-8",
        "PID|1||42^^^UKDD^MR", "OBR|1|||24331-1^Lipid panel^LN|||20240315120000+0100", obx]) + "\r"
    bundle = to_bundle(decode(message.encode(), RULES), RULES)
    return bundle["entry"][1]["resource"]


def test_a_coded_value_without_system_has_no_system():
    value = observation("OBX|1|CWE|5778-6^Color of Urine^LN||YEL^Yellow||||||F")["valueCodeableConcept"]
    assert value["coding"] == [{"code": "YEL", "display": "Yellow"}]


def test_a_local_observation_code_without_system_is_not_called_mdc():
    code = observation("OBX|1|NM|GLU^Glucose||5.4|mmol/L^^UCUM|||||F")["code"]
    assert code["coding"] == [{"code": "GLU", "display": "Glucose"}]


@pytest.mark.parametrize("obx3", ["150456^MDC_PULS_OXIM_SAT_O2", "MDC_PULS_OXIM_SAT_O2"])
def test_pcd01_codes_without_system_stay_mdc(obx3):
    code = observation(f"OBX|1|NM|{obx3}||97|262688^MDC_DIM_PERCENT^MDC|||||F")["code"]
    assert code["coding"][0]["system"] == "urn:iso:std:iso:11073:10101"
