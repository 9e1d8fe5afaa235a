"""hl7-retrofit: NM, SN and DTM accept only the ASCII digits the standard allows.

Found by a fresh-eyes test: in a UTF-8 message, OBX-5 `٣` (ARABIC-INDIC DIGIT THREE, U+0663) was
acknowledged AA and published as the value 3.0 — Python's regular-expression `\\d` and float()
accept any Unicode decimal digit. HL7 v2.5.1 chapter 2A.47 NM: "a number represented as a series
of ASCII numeric characters consisting of an optional leading sign (+ or -), the digits and an
optional decimal point"; 2A.22 DTM is likewise digits 0-9. Such a value is a data type error (102)."""
from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from medplat.workloads.hl7_retrofit.errors import Hl7Error
from medplat.workloads.hl7_retrofit.mapping import SiteRules, decode, to_bundle

RULES = SiteRules(zone=ZoneInfo("Europe/Berlin"))


def mapped(obx: str):
    message = "\r".join([
        "MSH|^~\\&|MON|ICU|MEDPLAT|EDGE|20240315143000+0100||ORU^R01^ORU_R01|U1|P|2.5.1|||AL|NE||UNICODE UTF-8",
        "PID|1||42^^^UKDD^MR", "OBR|1|||x^y^LN|||20240315120000+0100", obx]) + "\r"
    return to_bundle(decode(message.encode("utf-8"), RULES), RULES)


@pytest.mark.parametrize("obx", [
    "OBX|1|NM|8867-4^Heart rate^LN||\u0663|/min^^UCUM|||||F",          # Arabic-Indic 3
    "OBX|1|NM|8867-4^Heart rate^LN||\uff17\uff12|/min^^UCUM|||||F",    # fullwidth 72
    "OBX|1|SN|2951-2^Sodium^LN||>^\u0661\u0665\u0660|mmol/L^^UCUM|||||F",
    "OBX|1|TS|24336-0^Collection time^LN||\u0662\u0660\u0662\u0664\u0660\u0663\u0661\u0665||||||F",
])
def test_non_ascii_digits_are_a_data_type_error(obx):
    with pytest.raises(Hl7Error) as caught:
        mapped(obx)
    assert caught.value.code == 102


def test_ascii_numbers_still_map():
    bundle = mapped("OBX|1|NM|8867-4^Heart rate^LN||72|/min^^UCUM|||||F")
    assert bundle["entry"][1]["resource"]["valueQuantity"]["value"] == 72
