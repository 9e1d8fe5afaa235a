"""hl7-retrofit: NTE segments after an OBX become Observation.note.

Found by a fresh-eyes test: a lab's comment on a result (NTE after OBX) was acknowledged AA and
silently dropped, so "haemolysed sample" never reached the record.

Vectors written from:
- HL7 v2.5.1 chapter 7.3.1 ORU^R01 message structure (OBX followed by {NTE}), chapter 2.15.10 NTE
  (NTE-3 comment, FT, repeating) and 2.7 escape sequences;
- the HL7 v2-to-FHIR IG, Segment NTE to Annotation map (NTE-3 -> Annotation.text), used from the
  ORU_R01 message map for NTE in the OBSERVATION group -> Observation.note.
"""
from __future__ import annotations

from zoneinfo import ZoneInfo

from medplat.workloads.hl7_retrofit.mapping import SiteRules, decode, to_bundle

RULES = SiteRules(zone=ZoneInfo("Europe/Berlin"))


def observations(*body: str, charset: str = "UNICODE UTF-8", encoding: str = "utf-8") -> list[dict]:
    message = "\r".join([
        f"MSH|^~\\&|LAB|UKD|MEDPLAT|EDGE|20240315143000+0100||ORU^R01^ORU_R01|N1|P|2.5.1|||AL|NE||{charset}",
        "PID|1||123456^^^UKDD^MR", "OBR|1|||24331-1^Lipid panel^LN|||20240315120000+0100", *body]) + "\r"
    bundle = to_bundle(decode(message.encode(encoding), RULES), RULES)
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]


def test_nte_after_obx_is_the_observations_note_in_latin1():
    rows = observations(
        "OBX|1|NM|2823-3^Kalium^LN||6.1|mmol/L^^UCUM|3.5-5.1|H|||F",
        "NTE|1|L|Probe hämolysiert \\T\\ Kalium falsch hoch~Bitte Kontrolle",
        "NTE|2|L|Arzt informiert",
        "OBX|2|NM|2345-7^Glucose^LN||5.4|mmol/L^^UCUM|||||F",
        charset="8859/1", encoding="latin-1")
    assert [n["text"] for n in rows[0]["note"]] == [
        "Probe hämolysiert & Kalium falsch hoch\nBitte Kontrolle", "Arzt informiert"]
    assert "note" not in rows[1]


def test_nte_after_obr_is_not_pinned_on_an_observation():
    rows = observations("NTE|1||Order comment", "OBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L^^UCUM|||||F")
    assert "note" not in rows[0]
