"""HL7 v2 data types -> FHIR R4 data types, per the HL7 v2-to-FHIR IG datatype maps
(DTM/TS -> dateTime, CWE -> CodeableConcept, SN -> Quantity / Range / Ratio) and HL7 v2.5.1
chapter 2 (2.7 escape sequences, 2A.22 DTM, 2A.74 TS, 2A.70 SN)."""
from __future__ import annotations

import datetime
import functools
import math
import re
from zoneinfo import ZoneInfo

from medplat.workloads.hl7_retrofit.errors import Hl7Error

# YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ] (2A.22)
DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$", re.ASCII)
SN_TEXT = re.compile(r"^(<=|>=|<>|<|>|=)?\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))$", re.ASCII)
NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$", re.ASCII)  # NM (2A.47): digits, optional sign and point
FHIR_COMPARATORS = {"<", "<=", ">=", ">"}
# Formatting commands as plain text: line breaks, highlighting dropped (python-hl7 writes "_").
FORMATTING = {".br": "\n", ".sp": "\n", ".ce": "\n", "H": "", "N": ""}


def date_time(text: str, site_zone: ZoneInfo, where: tuple) -> str | None:
    """A DTM (or TS component 1) as a FHIR dateTime. A time without offset is local time at the
    site (`site_zone`, DST-aware; an ambiguous hour at the autumn change reads as the first)."""
    text = text.split("^")[0].strip()
    if not text:
        return None
    try:
        return _date_time(text, site_zone)
    except ValueError as exc:
        raise Hl7Error(102, str(exc), where) from None


@functools.lru_cache(maxsize=4096)  # the rows of a message, and messages in a second, share times
def _date_time(text: str, site_zone: ZoneInfo) -> str:
    match = DTM.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        datetime.date(int(year), int(month or 1), int(day or 1))
        if hour is None:
            return "-".join(part for part in (year, month, day) if part)
        if day is None:
            raise ValueError("a time needs a full date")
        local = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0))
        if offset:
            hours, minutes = int(offset[1:3]), int(offset[3:5])
            if hours > 14 or minutes > 59:
                raise ValueError(f"offset {offset} out of range")
            zone = datetime.timezone((-1 if offset[0] == "-" else 1) * datetime.timedelta(hours=hours, minutes=minutes))
            local = local.replace(tzinfo=zone)
        else:
            local = local.replace(tzinfo=site_zone)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date/time: {exc}") from None
    stamp = local.isoformat()
    return stamp[:19] + (fraction or "") + stamp[19:]


def number(text: str, where: tuple) -> float:
    if not NUMBER.match(text):
        raise Hl7Error(102, f"{text!r} is not a number (NM)", where)
    value = float(text)
    if not math.isfinite(value):
        raise Hl7Error(102, f"{text[:20]!r}... is too large for a decimal", where)
    return value


def _mdc_shaped(code: str) -> bool:
    """An 11073-10101 code (a number) or reference id (MDC_...)."""
    return code.isascii() and (code.isdigit() or code.startswith("MDC_"))


def codeable_concept(components: list[str], coding_system, default_system: str = "") -> dict:
    """CWE/CE/CNE: identifier^text^system and alternate identifier^text^system -> codings;
    CWE.9 original text -> text (Datatype CWE to CodeableConcept)."""
    codings = []
    for first in (0, 3):
        code = components[first] if len(components) > first else ""
        display = components[first + 1] if len(components) > first + 1 else ""
        system = components[first + 2] if len(components) > first + 2 else ""
        if code:
            # the default (MDC for a PCD-01 OBX-3) only for codes shaped like MDC ones; no system
            # is no system (CWE.3 is optional), never an invented one
            system = system or (default_system if default_system != "MDC" or _mdc_shaped(code) else "")
            codings.append({**({"system": coding_system(system)} if system else {}), "code": code,
                            **({"display": display} if display else {})})
    concept: dict = {"coding": codings} if codings else {}
    text = components[8] if len(components) > 8 and components[8] else \
        (components[1] if not codings and len(components) > 1 else "")
    if text:
        concept["text"] = text
    return concept


def structured_numeric(components: list[str], unit: dict | None, where: tuple) -> dict:
    """SN (comparator^num1^separator/suffix^num2) -> the Observation.value[x] the v2-to-FHIR IG's
    OBX map chooses: "<>" or "+" -> valueString; ":" or "/" -> valueRatio; "-" -> valueRange;
    otherwise valueQuantity with the comparator."""
    if len(components) == 1:  # "<0.10" written without component separators (seen in the IG's examples)
        match = SN_TEXT.match(components[0].strip())
        components = [match.group(1) or "", match.group(2)] if match else components
    comparator, num1, separator, num2 = (components + ["", "", "", ""])[:4]
    if comparator == "<>" or separator == "+":
        return {"valueString": " ".join(part for part in components[:4] if part)}
    if comparator not in ("", "=", *FHIR_COMPARATORS):
        raise Hl7Error(102, f"SN comparator {comparator!r} is not one of > < >= <= = <>", where)
    value = number(num1, where) if num1 else None
    if separator in (":", "/"):
        numerator = {"value": value, **({"comparator": comparator} if comparator in FHIR_COMPARATORS else {})}
        return {"valueRatio": {"numerator": numerator, "denominator": {"value": number(num2, where)}}}
    if separator == "-":
        high = number(num2, where)
        return {"valueRange": {"low": {"value": value, **(unit or {})}, "high": {"value": high, **(unit or {})}}}
    if separator or num2:
        raise Hl7Error(102, f"SN separator/suffix {separator!r} is not one of - + / : (or empty)", where)
    if value is None:
        raise Hl7Error(102, "SN has no number", where)
    return {"valueQuantity": {"value": value, **({"comparator": comparator} if comparator in FHIR_COMPARATORS else {}),
                              **(unit or {})}}


def unescape(message, text: str, codec: str) -> str:
    """Decode 2.7 escape sequences with python-hl7 (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\, formatting such as
    \\.br\\ as a line break); \\Xhh..\\ bytes are decoded in the message's character set (python-hl7
    maps each byte to one character, right only for single-byte sets)."""
    if message.esc not in text:
        return text
    pieces, start = [], 0
    esc = re.escape(message.esc)
    for match in re.finditer(f"{esc}X([0-9A-Fa-f]+){esc}", text):
        pieces.append(message.unescape(text[start:match.start()], FORMATTING))
        pieces.append(bytes.fromhex(match.group(1)).decode(codec, "replace") if len(match.group(1)) % 2 == 0 else "")
        start = match.end()
    pieces.append(message.unescape(text[start:], FORMATTING))
    return "".join(pieces)
