"""hl7-retrofit conformance: messages taken or written from the standards, mapped per the HL7
v2-to-FHIR IG, and sent over real TCP/MLLP to the listener with the real Mosquitto.

Sources of the test vectors (cited again where used):
- [IG-ORU]  HL7 v2-to-FHIR IG, "Test Conversions" page, Result Messages / ORU_R01
            (input/pagecontent/test_conversions.md in github.com/HL7/v2-to-fhir).
- [IG-MDM]  same page, Medical Records / MDM_T02 (the FT OBX with \\.br\\).
- [IG-VXU]  same page, Immunization / VXU_V04 (CE and DT OBX values, MSH-18 ASCII).
- [POCD]    HL7 Point-of-Care Device IG (draft), "Mapping v2" page: "HL7 IHE Message Example" — an
            IHE PCD-01 ORU^R01 v2.6 with MSH-18 8859/1 (github.com/BillLHolden/Kb-uv-pocd,
            input/pagecontent/mappingv2.md).
- [2A]      HL7 v2.5.1 chapter 2A data type examples: TS/DTM "|19760704010159-0500|" (1:01:59 on
            July 4, 1976, US Eastern Standard Time), SN "|>^100|", "|^100^-^200|", "|^1^:^128|",
            "|^2^+|".
- [2.7]     HL7 v2.5.1 section 2.7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\, \\.br\\).
- [2.10.3]  HL7 v2.5.1 section 2.10.3 batch protocol (FHS/BHS ... BTS/FTS; a batch answered by a
            batch of ACKs with FHS-12/BHS-12 naming the original control ids).
- [0357]    HL7 Table 0357 message error condition codes; Table 0008 for AE vs AR.
"""
from __future__ import annotations

import datetime
import socket
import time
from zoneinfo import ZoneInfo

import hl7
import orjson
import paho.mqtt.client as mqtt
import pytest

from medplat.service.terminology import mdc_unit
from medplat.workloads.hl7_retrofit import er7
from medplat.workloads.hl7_retrofit.errors import Hl7Error
from medplat.workloads.hl7_retrofit.mapping import SiteRules, decode, to_bundle
from services import Mosquitto, Service, free_port, wait_for_port

VT, END = b"\x0b", b"\x1c\r"
UTC = datetime.timezone.utc
RULES = SiteRules(zone=ZoneInfo("Europe/Berlin"))


def segments(*lines: str) -> str:
    return "\r".join(lines) + "\r"


# [IG-ORU] verbatim (long PID/PV1/PV2/ORC fields kept; the <br> line breaks become segment ends).
IG_ORU = segments(
    r"MSH|^~\&#|LabApp^9.8.7.6.5^ISO|LabFac^8.7.6.4^ISO|OrdApp^1.2.3.4.5^ISO|OrdFac^2.3.4.4^ISO|20150602100012.43+0100|DEADBEEF|ORU^R01^ORU_R01|20251014154001-425|P|2.5.1|||AL|AL|USA|UNICODE UTF-8|en-US^^ISO639||LRI..get...|",
    r"PID|1||1032702^^^OrdOrg&3.4.5.6.7&ISO^MR^OrdFac&2.3.4.5.6&ISO^20190101^20290101||Everywoman^Eve^L^Jr^Dr^^L^^^^G^20000909^20301231^PhD~Original^Eve^L^Jr^^^M^^^19700601&20000908^G||197006010912|F||1002-5^American Indian or Alaska Native^HL70005~2106-3^White^HL70005|1000 House Lane^Appt 123^Ann Arbor^MI^99999^USA^H^^WA||^PRN^PH^^1^555^555-8473~^NET^Internet^eve@test.test|^WPN^PH^^1^555^555-1126^12|en-US^^ISO639|M^Married^HL70002|CHR^Christian^HL70006|12345^^^OrdFac&2.3.4.5.6&ISO^AN||12345^MI^20180219||N^Not Hispanic or Latino&HL70189|1025 House Lane^^Ann Arbor^MI^99999^USA^H^^WA|Y|2|NL^Netherlands^ISO3166||||N|",
    r"PV1|1|E^EMERGENCY^HL70004|EMERG^101^01^^^^^^^^DEPID|E^Emergency^HL70007|||857432^Jones^Emily^^^MD^^OrdOrg&3.4.5.6.7.8&ISO^L^9^1000^DN^OrdFac&2.3.4.5.6&ISO^^G^20100101000000^20330101000000^doctor||||||||||||81456267^^^AssignAuth&1.2.3.4.5.6&ISO^VN|T^Third Party Bill^HL70064||||||||||||||||||||||||20150601135800|",
    r"ORC|RE|ORD777888^OrdFac^2.3.4.4^ISO|LAB4432^LabFac^8.7.6.4^ISO|GORD874244^OrdFac^2.3.4.4^ISO|CM||1^^^20150601^^R ||201506011608|1234567890^PhysicianAssistant^Will^John^III^Mr.^PA^&372526&L^L^^^NPI^^^^G^20140129^^FHL7|5742200012^Radon^Nicholas^^^^^^&372526&L^L^^^NPI|5742200012^Radon^Nicholas^^^^^^&372526&L^L^^^NPI|||||^^^^^^^^Emergency Department|||2^Patient has been informed of responsibility, and agrees to pay for service^HL70339|OrdFac^2.3.4.4^ISO",
    r"OBR|1|ORD777888^OrdFac^2.3.4.4^ISO|LAB4432^LabFac^8.7.6.4^ISO|51523-9^Grass Pollen Mix^LN|R|201506011608|201506011608|||||||||5742200012^Radon^Nicholas^^^^^^&372526&L^L^^^NPI|^WPN^PH^^1^555^5559908^34|||||201506011811|||F||1^^^20150601^^R|10092000194^Hamlin^Pafford^^^^^^&372526&L^L^^^NPI",
    r"NTE|1||Allergy test interpretations are subjective.|RE|8945432^Gonzalez^Maria^^^^^^&372526&L^L^^^NPI|201506011810",
    r"PRT|1^^372520^L|AD||RCT^Result Copies To^HL70912^^^^^^Send blind carbon copies to|10092000194^Hamlin^Pafford^^^^^^&372526&L^L^^^NPI||||||||||^^FX^^^323^5555555",
    r"OBX|1|NM|6153-1^IgE Blue Grass Kentucky^LN|1|3.9|kU/L|<0.10|A^Abnormal^HL70078||N^None - generic normal range^HL70080|F|||201506011608|CentralLab^Central Laboratory^HL70624|1234^Observer^Test^^^^^^LabFac&8.7.6.5.4&&ISO|||201506011605||||||||||RSLT",
    r"OBX|2|NM|6041-8^IgE Bermuda Grass^LN|2|0.59|kU/L|<0.10|A^Abnormal^HL70078||N^None - generic normal range^HL70080|F|||201506011608|CentralLab^Central Laboratory^HL70624|1234^Observer^Test^^^^^^LabFac&8.7.6.5.4&&ISO||||201506011605|||||||||RSLT",
    r"OBX|3|SN|6265-3^IgE Timothy Grass^LN|3|<0.10|kU/L|<0.10|N^Normal^HL70078||N^None - generic normal range^HL70080|F|||201506011608|CentralLab^Central Laboratory^HL70624|1234^Observer^Test^^^^^^LabFac&8.7.6.5.4&&ISO||||201506011605|||||||||RSLT",
).encode()

# [POCD] the example's first ORDER_OBSERVATION (the second carries an NA waveform, see below),
# verbatim including its stray spaces; MSH-18 8859/1, processing id D, version 2.6.
POCD_HEADER = (r"MSH|^~\&| SendingApplication|SendingFacility|ReceivingApplication|ReceivingFacility |"
               r"20210425230332.872-0400||ORU^R01^ORU_R01|HP0425230332.872USDANRMMD1NBR488|D|2.6|||AL|NE||8859/1|"
               r"EN^English^ISO639||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO")
POCD = segments(
    POCD_HEADER,
    r'PID|1||12345^^^Philips^MR~6789^^^Philips^VN ||LastName^FirstName^""^^^^L||19710108|U',
    r"PV1|2|I|My Unit^^Bed1^Institution||||||||||||||||23456",
    r"OBR|3||0009fbFFFF9b42b3^^^EUI-64|69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|||20210425230331.496-0400",
    r"OBX|4||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||7f2586c7-0506-46cd-a612-d8e75b838faa-IntelliVue MX500 - 866064",
    r"OBX|5||70666^MDC_DEV_ECG_RESP_VMD^MDC|1.2.0.0|||||||X|||||||XW25200213",
    r"OBX|6||70739^MDC_DEV_CARD_RATE_CHAN^MDC|1.2.1.0|||||||X",
    r"OBX|7|NM|147842^MDC_ECG_CARD_BEAT_RATE^MDC|1.2.1.1|60|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120||||F",
    r"OBX|8|ST|184327^MDC_ECG_STAT_RHY^MDC|1.2.4.20|MDC_ECG_PACED_RHY||||||F",
).encode("latin-1")
# [POCD] the waveform row: NA (numeric array) is not mapped by this receiver.
POCD_WAVE = r"OBX|11|NA|131329^MDC_ECG_ELEC_POTL_I^MDC|1.1.1.2|-10^-10^-5^1^14^22|10.mV/4096^10.mV/4096^UCUM|||||F|"

# [IG-MDM] the FT row (formatted text with \.br\), in an ORU^R01 envelope of the same version.
IG_FT = (r"OBX|2|FT|1055860039^Critical Values - Text||Critical Values Entered On:  08/22/2023 2:11 EDT \.br\ "
         r"Performed On:  08/22/2023 2:11 EDT by BOYLE, KRISTEN C \.br\Called Critical Value Reported||||||F|||"
         r"20230822021111||")
# [IG-VXU] CE and DT rows (MSH-18 ASCII in that example).
IG_CE = r"OBX|1|CE|30963-3^Vaccine Funding Source^LN|1|PHC70^Private^CDCPHINVS||||||F|||20150624"
IG_DT = r"OBX|4|DT|29769-7^Date Vis Presented^LN|3|20150624||||||F|||20150624"


def oru(*obx: str, version: str = "2.6", charset: str = "UNICODE UTF-8", control: str = "CTRL1",
        kind: str = "ORU^R01^ORU_R01", processing: str = "P", pid: str = "PID|||12345^^^HOSP^PI||Doe^John",
        msh_time: str = "20261123101500+0100") -> str:
    """An ORU^R01 envelope per v2.x chapter 7 (MSH, PID, OBR, OBX...) around rows from the sources."""
    return segments(
        f"MSH|^~\\&|MONITOR-GW^ACDE48234567ABCD^EUI-64|ICU-B|MEDPLAT|EDGE|{msh_time}||{kind}|{control}|"
        f"{processing}|{version}|||NE|AL||{charset}",
        pid, "OBR|1|||182777000^monitoring of patient^SCT|||20261123101500+0100", *obx)


def bundle_of(message: str | bytes, rules: SiteRules = RULES) -> dict:
    raw = message.encode() if isinstance(message, str) else message
    return to_bundle(decode(raw, rules), rules)


def observations(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]


def error_of(message: str | bytes) -> Hl7Error:
    with pytest.raises(Hl7Error) as caught:
        bundle_of(message)
    return caught.value


def instant(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).astimezone(UTC)


# --- mapping, per the v2-to-FHIR IG -------------------------------------------------------------

def test_ig_oru_r01_example_maps_loinc_units_interpretation_and_the_sn_comparator():
    """[IG-ORU]: LN -> http://loinc.org, NM -> valueQuantity, OBX-8 -> interpretation (0078),
    SN "<0.10" -> valueQuantity with comparator, OBX-14 without offset -> site local time."""
    bundle = bundle_of(IG_ORU)
    blue, bermuda, timothy = observations(bundle)
    assert blue["code"]["coding"] == [{"system": "http://loinc.org", "code": "6153-1", "display": "IgE Blue Grass Kentucky"}]
    assert blue["valueQuantity"] == {"value": 3.9, "unit": "kU/L"}  # OBX-6 without coding system: text only
    assert blue["interpretation"][0]["coding"][0] == {"system": "http://terminology.hl7.org/CodeSystem/v2-0078", "code": "A"}
    assert bermuda["valueQuantity"]["value"] == 0.59 and blue["status"] == "final"
    assert timothy["valueQuantity"] == {"value": 0.1, "comparator": "<", "unit": "kU/L"}
    # 201506011608 has no offset: Europe/Berlin in June is UTC+2.
    assert blue["effectiveDateTime"] == "2015-06-01T16:08:00+02:00"
    assert bundle["timestamp"] == "2015-06-02T10:00:12.43+01:00"
    assert instant(bundle["timestamp"]) == datetime.datetime(2015, 6, 2, 9, 0, 12, 430000, tzinfo=UTC)
    assert blue["subject"]["identifier"]["value"] == "1032702"
    assert bundle["entry"][-1]["resource"]["entity"][0]["what"]["identifier"]["value"] == "20251014154001-425"


def test_pocd_pcd01_example_latin1_mdc_codes_and_containment_rows():
    """[POCD]: MSH-18 8859/1, MDC codes and units, containment rows (no value) skipped, ST value,
    OBX-14 absent -> OBR-7 with its -0400 offset."""
    bundle = bundle_of(POCD)
    rate, rhythm = observations(bundle)
    assert rate["code"]["coding"][0] == {"system": "urn:iso:std:iso:11073:10101", "code": "147842",
                                         "display": "MDC_ECG_CARD_BEAT_RATE"}
    # MDC units go through the platform's one MDC -> UCUM table (medplat.service.terminology).
    assert rate["valueQuantity"] == {"value": 60.0, "unit": "MDC_DIM_BEAT_PER_MIN", **mdc_unit("264864")}
    assert rate["extension"][0]["valueString"] == "1.2.1.1"
    assert rhythm["valueString"] == "MDC_ECG_PACED_RHY"
    assert rate["effectiveDateTime"] == "2021-04-25T23:03:31.496-04:00"
    assert instant(rate["effectiveDateTime"]) == datetime.datetime(2021, 4, 26, 3, 3, 31, 496000, tzinfo=UTC)


def test_pocd_waveform_row_is_an_application_error_naming_the_value_type():
    error = error_of(POCD.decode("latin-1") + POCD_WAVE + "\r")
    assert (error.code, error.ack, error.location[:3]) == (207, "AE", ("OBX", 6, 2))
    assert "value type NA is not mapped" in str(error)


@pytest.mark.parametrize("system, uri", [("LN", "http://loinc.org"), ("SCT", "http://snomed.info/sct"),
                                         ("MDC", "urn:iso:std:iso:11073:10101"),
                                         ("UCUM", "http://unitsofmeasure.org"),
                                         ("HL70078", "http://terminology.hl7.org/CodeSystem/v2-0078"),
                                         ("99ZZZ", "urn:medplat:hl7v2-coding-system:99ZZZ")])
def test_coding_systems_of_table_0396(system, uri):
    """CWE.3 -> Coding.system through the table (Datatype CWE to Coding); an unknown local system
    keeps its name in a medplat URN instead of a wrong URI."""
    value = f"OBX|1|CWE|8867-4^Heart rate^LN||C123^Some concept^{system}||||||F"
    concept = observations(bundle_of(oru(value)))[0]["valueCodeableConcept"]
    assert concept == {"coding": [{"system": uri, "code": "C123", "display": "Some concept"}]}


def test_cwe_and_ce_become_codeable_concepts_with_alternate_coding_and_original_text():
    """[IG-VXU] CE row, and a CWE with alternate identifier (CWE.4-6) and original text (CWE.9)."""
    ce = observations(bundle_of(oru(IG_CE, version="2.5.1", charset="ASCII")))[0]
    assert ce["valueCodeableConcept"] == {"coding": [{"system": "urn:medplat:hl7v2-coding-system:CDCPHINVS",
                                                      "code": "PHC70", "display": "Private"}]}
    cwe = "OBX|1|CWE|8867-4^Heart rate^LN||271636001^Pulse irregular^SCT^IRR^Irregular^L^^^Pulse irregular, per nurse||||||F"
    concept = observations(bundle_of(oru(cwe)))[0]["valueCodeableConcept"]
    assert concept["coding"][0] == {"system": "http://snomed.info/sct", "code": "271636001", "display": "Pulse irregular"}
    assert concept["coding"][1]["code"] == "IRR" and concept["text"] == "Pulse irregular, per nurse"


@pytest.mark.parametrize("value, expected", [
    (">^100", {"valueQuantity": {"value": 100.0, "comparator": ">", "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}),
    ("^100^-^200", {"valueRange": {"low": {"value": 100.0, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
                                   "high": {"value": 200.0, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}}),
    ("^1^:^128", {"valueRatio": {"numerator": {"value": 1.0}, "denominator": {"value": 128.0}}}),
    ("<=^1^/^64", {"valueRatio": {"numerator": {"value": 1.0, "comparator": "<="}, "denominator": {"value": 64.0}}}),
    ("^2^+", {"valueString": "2 +"}),
    ("<>^5", {"valueString": "<> 5"}),
    ("=^7.5", {"valueQuantity": {"value": 7.5, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}),
])
def test_sn_examples_of_chapter_2a_follow_the_ig_obx_map(value, expected):
    """[2A] SN examples -> Quantity (comparator) / Range / Ratio / string per the IG's OBX-5 rows."""
    row = f"OBX|1|SN|2345-7^Glucose^LN||{value}|mg/dL^^UCUM|||||F"
    observation = observations(bundle_of(oru(row)))[0]
    assert {k: v for k, v in observation.items() if k.startswith("value")} == expected


@pytest.mark.parametrize("text, utc", [
    ("19760704010159-0500", datetime.datetime(1976, 7, 4, 6, 1, 59, tzinfo=UTC)),  # [2A] TS/DTM example
    ("20261123101455+0100", datetime.datetime(2026, 11, 23, 9, 14, 55, tzinfo=UTC)),
    ("20260715120000", datetime.datetime(2026, 7, 15, 10, 0, tzinfo=UTC)),  # no offset: CEST (site setting)
    ("20261123120000", datetime.datetime(2026, 11, 23, 11, 0, tzinfo=UTC)),  # no offset: CET
    ("20261025023000", datetime.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),  # ambiguous hour: the first
    ("202611231015", datetime.datetime(2026, 11, 23, 9, 15, tzinfo=UTC)),  # minute precision
    ("20261123101455.1234+0530", datetime.datetime(2026, 11, 23, 4, 44, 55, 123400, tzinfo=UTC)),
])
def test_ts_dtm_values_are_the_right_instant(text, utc):
    for value_type in ("TS", "DTM"):
        row = f"OBX|1|{value_type}|8716-3^Vital signs^LN||{text}||||||F|||{text}"
        observation = observations(bundle_of(oru(row)))[0]
        assert instant(observation["valueDateTime"]) == utc
        assert instant(observation["effectiveDateTime"]) == utc


def test_date_only_values_stay_dates():
    """[IG-VXU] DT row: a date has no time and no zone."""
    observation = observations(bundle_of(oru(IG_DT, version="2.5.1", charset="ASCII")))[0]
    assert observation["valueDateTime"] == "2015-06-24" and observation["effectiveDateTime"] == "2015-06-24"


def test_a_site_in_another_zone_reads_local_times_there():
    rules = SiteRules(zone=ZoneInfo("America/New_York"))
    row = "OBX|1|NM|8867-4^Heart rate^LN||72|/min^per minute^UCUM|||||F|||20260715120000"
    observation = observations(bundle_of(oru(row), rules))[0]
    assert instant(observation["effectiveDateTime"]) == datetime.datetime(2026, 7, 15, 16, 0, tzinfo=UTC)


def test_text_escape_sequences_are_decoded():
    """[2.7] \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ in ST/TX, \\.br\\ in FT ([IG-MDM] row), \\Xhh\\ in the message's
    character set (UTF-8 bytes C3 BC = u-umlaut), repetitions of TX as lines."""
    st = r"OBX|1|ST|8251-1^Service comment^LN||a\F\b\S\c\T\d\R\e\E\f||||||F"
    tx = r"OBX|2|TX|8251-1^Service comment^LN||first line~second \Xc3bc\ line||||||F"
    ft = IG_FT
    string, text, formatted = (o["valueString"] for o in observations(bundle_of(oru(st, tx, ft))))
    assert string == "a|b^c&d~e\\f"
    assert text == "first line\nsecond \u00fc line"
    assert formatted == ("Critical Values Entered On:  08/22/2023 2:11 EDT \n Performed On:  08/22/2023 2:11 EDT "
                         "by BOYLE, KRISTEN C \nCalled Critical Value Reported")


@pytest.mark.parametrize("charset, encoding", [("ASCII", "ascii"), ("8859/1", "latin-1"),
                                               ("UNICODE UTF-8", "utf-8")])
def test_msh18_character_sets_decode_the_bytes(charset, encoding):
    name = "Gro\u00dfe" if encoding != "ascii" else "Grosse"
    text = "Station Dresden-L\u00f6btau, \u00dcberwachung" if encoding != "ascii" else "Station Dresden"
    raw = oru(f"OBX|1|ST|8251-1^Service comment^LN||{text}||||||F", charset=charset,
              pid=f"PID|||12345^^^HOSP^PI||{name}^J\u00fcrgen" if encoding != "ascii" else "PID|||1||Grosse^J").encode(encoding)
    assert observations(bundle_of(raw))[0]["valueString"] == text


def test_a_message_without_msh18_uses_the_site_default_charset():
    raw = oru("OBX|1|ST|8251-1^Service comment^LN||Leipzig-Gr\u00fcnau||||||F", charset="").encode("latin-1")
    assert error_of(raw).code == 102  # HL7's default is ASCII
    latin = SiteRules(default_charset="8859/1")
    assert observations(bundle_of(raw, latin))[0]["valueString"] == "Leipzig-Gr\u00fcnau"


@pytest.mark.parametrize("version", ["2.3", "2.5", "2.6"])
def test_versions_2_3_2_5_2_6(version):
    """v2.3 has CE (no CWE), TS with a precision component and no OBX-18; v2.5/2.6 CWE and DTM."""
    coded = "CE" if version == "2.3" else "CWE"
    rows = [f"OBX|1|NM|8867-4^Heart rate^LN||72|/min^per minute^UCUM|||||F|||20261123101455+0100^S",
            f"OBX|2|{coded}|8884-9^Heart rhythm^LN||271636001^Pulse irregular^SCT||||||F",
            f"OBX|3|{'TS' if version == '2.3' else 'DTM'}|8716-3^Time^LN||20261123101455+0100||||||F"]
    kind = "ORU^R01" if version == "2.3" else "ORU^R01^ORU_R01"
    rate, rhythm, when = observations(bundle_of(oru(*rows, version=version, kind=kind)))
    assert rate["valueQuantity"]["code"] == "/min" and rate["effectiveDateTime"] == "2026-11-23T10:14:55+01:00"
    assert rhythm["valueCodeableConcept"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert when["valueDateTime"] == "2026-11-23T10:14:55+01:00"


@pytest.mark.parametrize("case, message, code, ack, where", [
    ("OBX before OBR", segments("MSH|^~\\&|GW|ICU|||20261123101500+0100||ORU^R01^ORU_R01|C|P|2.6",
                                "PID|||1", "OBX|1|NM|8867-4^HR^LN||72||||||F", "OBR|1"), 100, "AE", ("OBX", 1)),
    ("PID after OBR", oru("OBX|1|NM|8867-4^HR^LN||72||||||F", "PID|||2"), 100, "AE", ("PID", 2)),
    ("MSH-10 empty", oru("OBX|1|NM|8867-4^HR^LN||72||||||F", control=""), 101, "AE", ("MSH", 1, 10)),
    ("OBX-3 empty", oru("OBX|1|NM|||72||||||F"), 101, "AE", ("OBX", 1, 3)),
    ("OBX-11 empty", oru("OBX|1|NM|8867-4^HR^LN||72||||||"), 101, "AE", ("OBX", 1, 11)),
    ("OBX-2 empty with a value", oru("OBX|1||8867-4^HR^LN||72||||||F"), 101, "AE", ("OBX", 1, 2)),
    ("NM not a number", oru("OBX|1|NM|8867-4^HR^LN||seventy||||||F"), 102, "AE", ("OBX", 1, 5)),
    ("NM too large", oru("OBX|1|NM|8867-4^HR^LN||" + "9" * 400 + "||||||F"), 102, "AE", ("OBX", 1, 5)),
    ("TS not a DTM", oru("OBX|1|TS|8716-3^T^LN||2026-11-23||||||F"), 102, "AE", ("OBX", 1, 5)),
    ("TS impossible date", oru("OBX|1|NM|8867-4^HR^LN||72||||||F|||20260231101455+0100"), 102, "AE", ("OBX", 1, 14)),
    ("SN bad separator", oru("OBX|1|SN|2345-7^G^LN||^1^*^2||||||F"), 102, "AE", ("OBX", 1, 5)),
    ("NM repeats", oru("OBX|1|NM|8867-4^HR^LN||72~73||||||F"), 102, "AE", ("OBX", 1, 5)),
    ("bytes not UTF-8", oru("OBX|1|ST|8251-1^C^LN||Gr\u00fcnau||||||F").encode("latin-1"), 102, "AE", ("MSH", 1, 18)),
    ("OBX-2 not in table 0125", oru("OBX|1|XY|8867-4^HR^LN||72||||||F"), 103, "AE", ("OBX", 1, 2)),
    ("OBX-11 not in table 0085", oru("OBX|1|NM|8867-4^HR^LN||72||||||Q"), 103, "AE", ("OBX", 1, 11)),
    ("MSH-18 not in table 0211", oru("OBX|1|NM|8867-4^HR^LN||72||||||F", charset="KLINGON"), 103, "AE", ("MSH", 1, 18)),
    ("ADT", oru("OBX|1|NM|8867-4^HR^LN||72||||||F", kind="ADT^A01^ADT_A01"), 200, "AR", ("MSH", 1, 9)),
    ("ORU^R30", oru("OBX|1|NM|8867-4^HR^LN||72||||||F", kind="ORU^R30^ORU_R30"), 201, "AR", ("MSH", 1, 9)),
    ("processing id", oru("OBX|1|NM|8867-4^HR^LN||72||||||F", processing="X"), 202, "AR", ("MSH", 1, 11)),
    ("version 2.2", oru("OBX|1|NM|8867-4^HR^LN||72||||||F", version="2.2"), 203, "AR", ("MSH", 1, 12)),
    ("NA not mapped", oru("OBX|1|NA|131329^ECG^MDC||1^2^3||||||F"), 207, "AE", ("OBX", 1, 2)),
])
def test_errors_carry_the_table_0357_code_of_the_real_cause(case, message, code, ack, where):
    error = error_of(message)
    assert (error.code, error.ack, error.location[:len(where)]) == (code, ack, where), str(error)


def test_invalid_fhir_is_caught_even_after_a_valid_message_of_the_same_device():
    """Validation is remembered per shape (mapping.validate); a new code with a double space is a
    new shape, so fhir.resources still sees it."""
    bundle_of(oru("OBX|1|NM|8867-4^HR^LN||72||||||F", control="OK1"))
    error = error_of(oru("OBX|1|NM|8867-4  x^HR^LN||72||||||F", control="BAD1"))
    assert error.code == 207 and "mapped FHIR is invalid" in str(error)


@pytest.mark.parametrize("message", [IG_ORU, POCD, oru(IG_FT, IG_CE, IG_DT).encode()])
def test_the_er7_reader_agrees_with_python_hl7(message):
    """python-hl7 as the oracle: every field, repetition and component the lazy reader returns is
    what python-hl7's full parse returns for the same message."""
    text = message.decode("latin-1")
    ours, theirs = er7.Message(text), hl7.parse(text)
    assert len(ours.segments) == len(theirs)
    for mine, segment in zip(ours.segments, theirs):
        assert mine.name == str(segment[0]) and len(mine) == len(segment)
        for index in range(1, len(segment)):
            assert mine.field(index) == str(segment[index]), (mine.name, index)
            if mine.name == "MSH" and index <= 2:
                continue
            field = segment[index]
            repetitions = ours.repetitions(mine, index)
            expected = [str(field)] if not str(field) or len(field) == 1 else [str(r) for r in field]
            assert (repetitions or [""]) == expected, (mine.name, index)
            for number, repetition in enumerate(field if len(field) > 1 else [field[0]]):
                components = ours.components(mine, index, number)
                expected = [repetition] if isinstance(repetition, str) else [str(c) for c in repetition]
                assert (components or [""]) == expected, (mine.name, index, number)


def test_mangled_spec_messages_always_get_an_ack_never_an_exception():
    """Every truncation and 300 seeded byte mutations of [IG-ORU] and [POCD] framed as MLLP blocks:
    the listener answers each with MSA AE or AR (no broker configured, so nothing is AA) and
    raises nothing."""
    import asyncio
    import random

    from medplat.workloads.hl7_retrofit.app import Listener, Settings

    listener = Listener(Settings(), publisher=None)
    rng = random.Random(14)
    blocks = []
    for message in (IG_ORU, POCD):
        blocks += [VT + message[:cut] for cut in range(0, len(message), 19)]
        for _ in range(150):
            mutated = bytearray(message)
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.choice(b"|^~\\&\r\x0b\x1c\xff0A ")
            blocks.append(VT + bytes(mutated))

    async def answer_all() -> list[bytes]:
        return [await listener.answer(block) for block in blocks]

    for reply in asyncio.run(answer_all()):
        assert reply.startswith(b"MSH|") or reply.startswith(b"BHS|") or reply.startswith(b"FHS|"), reply[:80]
        assert b"\rMSA|AE|" in reply or b"\rMSA|AR|" in reply, reply[:300]


# --- over TCP/MLLP with the real Mosquitto -----------------------------------------------------

class Sender:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.buffer = b""

    def send(self, payload: bytes, prefix: bytes = b"") -> None:
        self.sock.sendall(prefix + VT + payload + END)

    def reply(self) -> str:
        while END not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "listener closed the connection"
            self.buffer += chunk
        block, self.buffer = self.buffer.split(END, 1)
        assert block.startswith(VT)
        return block[1:].decode("latin-1")

    def close(self) -> None:
        self.sock.close()


def field(reply: str, segment: str, index: int, occurrence: int = 0) -> str:
    lines = [line for line in reply.split("\r") if line.startswith(segment + "|")]
    parts = lines[occurrence].split("|")
    if segment in ("MSH", "FHS", "BHS"):  # field 1 is the separator itself
        return parts[index - 1]
    return parts[index] if len(parts) > index else ""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hl7conf")
    broker = Mosquitto(folder / "broker")
    received: list[dict] = []
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hl7-conformance-subscriber")
    subscriber.on_message = lambda _c, _u, message: received.append(orjson.loads(message.payload))
    broker.login(subscriber, "edge-forwarder")  # the one reader of device data
    subscriber.connect("127.0.0.1", broker.port)
    subscriber.subscribe("medplat/devices/#", qos=1)
    subscriber.loop_start()
    mllp = free_port()
    service = Service("hl7-retrofit", {"mllp_port": mllp, "broker_url": broker.url_for("hl7-retrofit"), "data_dir": folder / "data",
                                       "site_timezone": "Europe/Berlin"}, free_port(), folder / "hl7.log").start()
    wait_for_port(mllp)
    time.sleep(0.5)
    yield mllp, received
    service.stop()
    subscriber.loop_stop()
    broker.stop()


def published(received: list, control_ids: set[str], timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in received if _control(e) in control_ids]
        if len(found) >= len(control_ids):
            return found
        time.sleep(0.05)
    return [e for e in received if _control(e) in control_ids]


def _control(envelope: dict) -> str:
    return envelope["resource"]["entry"][-1]["resource"]["entity"][0]["what"]["identifier"]["value"]


@pytest.mark.slow
def test_spec_messages_over_mllp_are_acknowledged_and_published(site):
    """[IG-ORU], [POCD] (Latin-1) and v2.3/v2.5/v2.6 envelopes over TCP: AA after the PUBACK,
    the ACK in the sender's version and character set, the Bundle on the broker."""
    port, received = site
    sender = Sender(port)
    messages = {"20251014154001-425": IG_ORU, "HP0425230332.872USDANRMMD1NBR488": POCD}
    for version in ("2.3", "2.5", "2.6"):
        messages[f"V{version}"] = oru("OBX|1|NM|8867-4^Heart rate^LN||72|/min^per minute^UCUM|||||F",
                                      version=version, control=f"V{version}",
                                      kind="ORU^R01" if version == "2.3" else "ORU^R01^ORU_R01").encode()
    for control, message in messages.items():
        sender.send(message)
        reply = sender.reply()
        assert field(reply, "MSA", 1) == "AA" and field(reply, "MSA", 2) == control, reply
    sender.close()
    assert field(reply, "MSH", 12) == "2.6"
    envelopes = {_control(e): e for e in published(received, set(messages))}
    assert set(envelopes) == set(messages)
    pocd = observations(envelopes["HP0425230332.872USDANRMMD1NBR488"]["resource"])
    assert pocd[0]["valueQuantity"]["code"] == mdc_unit("264864")["code"]


@pytest.mark.slow
def test_latin1_umlauts_from_dresden_and_leipzig_over_mllp(site):
    port, received = site
    text = "Herzfrequenz \u00fcberpr\u00fcft, Station Dresden-L\u00f6btau / Leipzig-Gr\u00fcnau"
    message = oru(f"OBX|1|ST|8251-1^Kommentar^LN||{text}||||||F", charset="8859/1", control="LATIN1",
                  pid="PID|||4711^^^UKD^PI||M\u00fcller^J\u00fcrgen").encode("latin-1")
    sender = Sender(port)
    sender.send(message)
    reply = sender.reply()
    assert field(reply, "MSA", 1) == "AA" and field(reply, "MSH", 18) == "8859/1"
    sender.send(oru("OBX|1|ST|8251-1^K^LN||Gr\u00fcnau||||||F", control="NOTUTF8").encode("latin-1"))
    reply = sender.reply()
    sender.close()
    assert field(reply, "MSA", 1) == "AE" and field(reply, "ERR", 3).startswith("102^"), reply
    assert field(reply, "ERR", 2) == "MSH^1^18"
    envelope = published(received, {"LATIN1"})[0]
    assert observations(envelope["resource"])[0]["valueString"] == text


@pytest.mark.slow
def test_a_batch_is_answered_with_a_batch_of_one_ack_per_message(site):
    """[2.10.3]: FHS/BHS with three messages, the second unmappable: AA, AE, AA in a batch whose
    FHS-12/BHS-12 name the original control ids; only the two good messages are published."""
    port, received = site
    good1 = oru("OBX|1|NM|8867-4^HR^LN||72|/min^^UCUM|||||F", control="B-1")
    bad = oru("OBX|1|NM|8867-4^HR^LN||seventy|/min^^UCUM|||||F", control="B-2")
    good2 = oru("OBX|1|NM|8867-4^HR^LN||74|/min^^UCUM|||||F", control="B-3")
    batch = ("FHS|^~\\&|GW|ICU|MEDPLAT|EDGE|20261123101500+0100||||FILE-7\r"
             "BHS|^~\\&|GW|ICU|MEDPLAT|EDGE|20261123101500+0100||||BATCH-9\r"
             + good1 + bad + good2 + "BTS|3\rFTS|1\r").encode()
    sender = Sender(port)
    sender.send(batch)
    reply = sender.reply()
    sender.close()
    assert [line[:3] for line in reply.split("\r") if line] == \
        ["FHS", "BHS", "MSH", "MSA", "MSH", "MSA", "ERR", "MSH", "MSA", "BTS", "FTS"]
    assert field(reply, "FHS", 12) == "FILE-7" and field(reply, "BHS", 12) == "BATCH-9"
    assert [(field(reply, "MSA", 1, i), field(reply, "MSA", 2, i)) for i in range(3)] == \
        [("AA", "B-1"), ("AE", "B-2"), ("AA", "B-3")]
    assert field(reply, "ERR", 2) == "OBX^1^5" and field(reply, "BTS", 1) == "3"
    time.sleep(0.5)
    assert sorted(_control(e) for e in published(received, {"B-1", "B-3"})) == ["B-1", "B-3"]
    assert not [e for e in received if _control(e) == "B-2"]


@pytest.mark.slow
def test_stray_bytes_before_the_start_block_are_discarded(site):
    port, received = site
    sender = Sender(port)
    sender.send(oru("OBX|1|NM|8867-4^HR^LN||72||||||F", control="JUNK-1").encode(), prefix=b"\x00\xff\r\nnoise")
    first = sender.reply()
    # An aborted frame (start block, half a message) followed by a complete one.
    partial = oru("OBX|1|NM|8867-4^HR^LN||72||||||F", control="LOST").encode()[:40]
    sender.send(oru("OBX|1|NM|8867-4^HR^LN||73||||||F", control="JUNK-2").encode(), prefix=VT + partial)
    second = sender.reply()
    sender.close()
    assert (field(first, "MSA", 1), field(first, "MSA", 2)) == ("AA", "JUNK-1")
    assert (field(second, "MSA", 1), field(second, "MSA", 2)) == ("AA", "JUNK-2")
    assert len(published(received, {"JUNK-1", "JUNK-2"})) == 2


@pytest.mark.slow
def test_error_codes_over_mllp_in_the_senders_version(site):
    """[0357] over the wire: v2.5+ puts the code in ERR-3 and the location in ERR-2, v2.3 in ERR-1."""
    port, _ = site
    sender = Sender(port)
    cases = [(oru("OBX|1|NM|8867-4^HR^LN||72||||||F", kind="ADT^A01^ADT_A01", control="E200"), "AR", "200", "MSH^1^9"),
             (oru("OBX|1|NM|8867-4^HR^LN||72||||||F", version="2.2", control="E203"), "AR", "203", "MSH^1^12"),
             (oru("OBX|1|XY|8867-4^HR^LN||72||||||F", control="E103"), "AE", "103", "OBX^1^2"),
             (oru("OBX|1|NM|||72||||||F", control="E101"), "AE", "101", "OBX^1^3")]
    for message, ack, code, where in cases:
        sender.send(message.encode())
        reply = sender.reply()
        assert field(reply, "MSA", 1) == ack and field(reply, "ERR", 3).split("^")[::2] == [code, "HL70357"], reply
        assert field(reply, "ERR", 2) == where
    sender.send(oru("OBX|1|NM|8867-4^HR^LN||seventy||||||F", version="2.3", kind="ORU^R01", control="E102").encode())
    legacy = sender.reply()
    sender.close()
    assert field(legacy, "MSA", 1) == "AE" and field(legacy, "ERR", 1) == "OBX^1^5^102&Data type error&HL70357"
    assert "seventy" in field(legacy, "MSA", 3)


@pytest.mark.slow
def test_pipelined_messages_are_acknowledged_in_order(site):
    """A sender that does not wait for each ACK: 50 frames in one write, 50 ACKs in order."""
    port, received = site
    sender = Sender(port)
    controls = [f"PIPE-{i:03d}" for i in range(50)]
    payload = b"".join(VT + oru("OBX|1|NM|8867-4^HR^LN||" + str(60 + i % 40) + "||||||F", control=c).encode() + END
                       for i, c in enumerate(controls))
    sender.sock.sendall(payload)
    replies = [sender.reply() for _ in controls]
    sender.close()
    assert [(field(r, "MSA", 1), field(r, "MSA", 2)) for r in replies] == [("AA", c) for c in controls]
    assert len(published(received, set(controls))) == 50


@pytest.mark.slow
def test_broker_down_is_ar_207_and_nothing_is_acknowledged_as_stored(tmp_path):
    mllp = free_port()
    service = Service("hl7-retrofit", {"mllp_port": mllp, "broker_url": f"mqtt://127.0.0.1:{free_port()}",
                                       "data_dir": tmp_path / "data"}, free_port(), tmp_path / "hl7.log").start()
    try:
        wait_for_port(mllp)
        sender = Sender(mllp)
        sender.send(oru("OBX|1|NM|8867-4^HR^LN||72||||||F", control="DOWN").encode())
        reply = sender.reply()
        sender.close()
    finally:
        service.stop()
    assert field(reply, "MSA", 1) == "AR" and field(reply, "ERR", 3).startswith("207^"), reply
    assert "send again" in field(reply, "ERR", 8)


@pytest.mark.slow
def test_a_broker_that_does_not_acknowledge_gets_ar_207_after_the_timeout(tmp_path):
    """Mosquitto frozen (SIGSTOP) keeps the TCP connection but sends no PUBACK: the listener
    answers AR 207 after `publish_timeout_s`, never AA, and recovers when the broker does."""
    import signal
    broker = Mosquitto(tmp_path / "broker")
    mllp = free_port()
    service = Service("hl7-retrofit", {"mllp_port": mllp, "broker_url": broker.url_for("hl7-retrofit"), "data_dir": tmp_path / "data",
                                       "publish_timeout_s": 1.5}, free_port(), tmp_path / "hl7.log").start()
    try:
        wait_for_port(mllp)
        time.sleep(0.5)
        sender = Sender(mllp)
        broker.process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        sender.send(oru("OBX|1|NM|8867-4^HR^LN||72||||||F", control="FROZEN").encode())
        frozen = sender.reply()
        waited = time.monotonic() - started
        broker.process.send_signal(signal.SIGCONT)
        sender.send(oru("OBX|1|NM|8867-4^HR^LN||72||||||F", control="THAWED").encode())
        thawed = sender.reply()
        sender.close()
    finally:
        broker.process.send_signal(signal.SIGCONT)
        service.stop()
        broker.stop()
    assert field(frozen, "MSA", 1) == "AR" and field(frozen, "ERR", 3).startswith("207^"), frozen
    assert "did not acknowledge" in field(frozen, "ERR", 8) and 1.4 < waited < 5
    assert (field(thawed, "MSA", 1), field(thawed, "MSA", 2)) == ("AA", "THAWED")


@pytest.mark.slow
def test_a_large_frame_mapped_aside_keeps_the_connections_publish_order(site):
    """A frame over 256 KiB is mapped in a worker thread; the small frames behind it on the same
    connection are published after it, and every ACK comes back in order."""
    port, received = site
    rows = [f"OBX|{i + 1}|NM|8867-4^HR^LN|1.1.1.{i}|{60 + i % 40}|/min^^UCUM|||||F" for i in range(5000)]
    big = oru(*rows, control="ORDER-BIG").encode()
    assert len(big) > 256 * 1024
    smalls = [oru("OBX|1|NM|8867-4^HR^LN||72||||||F", control=f"ORDER-{i}").encode() for i in range(3)]
    sender = Sender(port)
    sender.sock.sendall(b"".join(VT + m + END for m in (big, *smalls)))
    replies = [sender.reply() for _ in range(4)]
    sender.close()
    controls = ["ORDER-BIG", "ORDER-0", "ORDER-1", "ORDER-2"]
    assert [(field(r, "MSA", 1), field(r, "MSA", 2)) for r in replies] == [("AA", c) for c in controls]
    published(received, set(controls))
    assert [_control(e) for e in received if _control(e) in controls] == controls
