"""HL7 v2 tables the listener needs, as data. Sources:
- HL7 v2.x Table 0396 (coding system) names -> FHIR code system URIs as the HL7 v2-to-FHIR IG
  uses them ("Datatype CWE to Coding": CWE.3 -> Coding.system "via the vocabulary table"; URIs from
  HL7 Terminology's NamingSystems; MDC per ISO/IEEE 11073-10101 as the PoCD IG writes it).
- HL7 Table 0211 (alternate character sets, MSH-18) -> Python codecs (v2.5.1 section 2.15.9.18).
- HL7 Table 0085 (observation result status) -> FHIR observation-status, the v2-to-FHIR IG's
  ConceptMap "table-hl70085-to-observation-status" (R added here, see STATUS).
- HL7 Table 0125 (value type) and Table 0357 (message error condition codes).
"""
from __future__ import annotations

from medplat.service.terminology import MDC, UCUM

CODING_SYSTEMS = {
    "LN": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "MDC": MDC,
    "UCUM": UCUM,
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
}
# Names of HL7-defined tables ("HL70078") become the HL7 Terminology v2 code system of that table.
HL7_TABLE_PREFIX, HL7_TABLE_URI = "HL7", "http://terminology.hl7.org/CodeSystem/v2-"
# A name not in the table (e.g. a local "L" / "99zzz") keeps its name in a medplat URN, so a reader
# can tell it was not recognised instead of receiving a wrong system.
UNKNOWN_CODING_SYSTEM = "urn:medplat:hl7v2-coding-system:"

# MSH-18 values decoded here (single-byte and UTF-8 encodings; segment separators stay one byte).
CHARSETS = {
    "ASCII": "ascii", "ISO IR6": "ascii",
    "8859/1": "latin-1", "8859/2": "iso8859-2", "8859/3": "iso8859-3", "8859/4": "iso8859-4",
    "8859/5": "iso8859-5", "8859/6": "iso8859-6", "8859/7": "iso8859-7", "8859/8": "iso8859-8",
    "8859/9": "iso8859-9", "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
}
# Table 0211 values that are valid but not decoded by this receiver (multi-byte or 16/32-bit).
CHARSETS_NOT_SUPPORTED = {"UNICODE", "UNICODE UTF-16", "UNICODE UTF-32", "ISO IR14", "ISO IR87",
                          "ISO IR159", "GB 18030-2000", "KS X 1001", "CNS 11643-1992", "BIG-5"}

STATUS = {"A": "amended", "C": "corrected", "D": "entered-in-error", "F": "final", "P": "preliminary",
          "W": "entered-in-error", "X": "cancelled",
          # Not mapped by the IG; IHE PCD-01 devices send R for unverified periodic numerics.
          "R": "preliminary"}
TABLE_0085 = set("ABCDFINOPRSVXUW")

TABLE_0125 = {"AD", "CE", "CF", "CK", "CN", "CNE", "CP", "CWE", "CX", "DR", "DT", "DTM", "ED", "FT", "ID", "IS",
              "MA", "MO", "NA", "NM", "PN", "RP", "SN", "ST", "TM", "TN", "TS", "TX", "XAD", "XCN", "XON",
              "XPN", "XTN"}

# Table 0357 message error condition codes used in ERR-3 (v2.5+) / ERR-1.4 (v2.3, v2.4).
ERRORS = {100: "Segment sequence error", 101: "Required field missing", 102: "Data type error",
          103: "Table value not found", 104: "Value too long", 200: "Unsupported message type",
          201: "Unsupported event code", 202: "Unsupported processing id", 203: "Unsupported version id",
          207: "Application internal error"}


def coding_system(name: str) -> str:
    """Table 0396 name -> FHIR code system URI."""
    if name in CODING_SYSTEMS:
        return CODING_SYSTEMS[name]
    if name.startswith(HL7_TABLE_PREFIX) and name[3:].isdigit():
        return HL7_TABLE_URI + name[3:]
    return UNKNOWN_CODING_SYSTEM + name
