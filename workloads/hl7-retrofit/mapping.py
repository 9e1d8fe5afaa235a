"""ORU^R01 (IHE PCD-01) parsed with hl7apy -> a FHIR R4 message Bundle, per the HL7 v2-to-FHIR IG:
MSH -> MessageHeader and Provenance, PID -> the subject, OBX -> Observation (OBX-3 MDC code,
OBX-5 NM -> valueQuantity with OBX-6 units, OBX-4 sub-id -> the containment path MDS.VMD.
channel.metric, OBX-11 -> status, OBX-14 -> effective time, OBX-18 -> the device).
Every resource and the Bundle are validated with fhir.resources (R4B) before anything leaves."""
from __future__ import annotations

import hashlib
import re
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message
from pydantic import ValidationError

from medplat.service.terminology import MDC, UCUM, mdc_unit

STATUS = {"F": "final", "R": "preliminary", "P": "preliminary", "C": "amended", "X": "cancelled", "D": "entered-in-error"}
NUMERIC = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class Rejected(Exception):
    """`code` AE (application error: the sender may fix and resend) or AR (rejected)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _segments(node, name: str) -> list:
    """Segments named `name` in message order, through the groups hl7apy found."""
    found = []
    for child in node.children:
        if child.classname == "Segment":
            if child.name == name:
                found.append(child)
        elif child.classname == "Group":
            found += _segments(child, name)
    return found


def _get(segment, index: int) -> str:
    try:
        return getattr(segment, f"{segment.name.lower()}_{index}").to_er7()
    except (HL7apyException, AttributeError, IndexError, ValueError):
        return ""


def _timestamp(text: str) -> str | None:
    digits = text.split("+")[0].split("-")[0].split(".")[0]
    if len(digits) < 8 or not digits.isdigit():
        return None
    offset = text[len(digits):] if text[len(digits):len(digits) + 1] in "+-" else ""
    out = f"{digits[:4]}-{digits[4:6]}-{digits[6:8]}"
    if len(digits) >= 12:
        out += f"T{digits[8:10]}:{digits[10:12]}:{digits[12:14] or '00'}"
        out += (f"{offset[:3]}:{offset[3:5]}" if len(offset) == 5 else "+00:00")
    return out


def parse(er7: str) -> Message:
    try:
        return parse_message(er7.replace("\n", "\r"), find_groups=True)
    except HL7apyException as exc:
        raise Rejected("AR", f"not a parseable HL7 v2 message: {exc}") from None


def message_type(message: Message) -> str:
    return "^".join(_get(message.msh, 9).split("^")[:2])


def to_bundle(message: Message, *, source: str) -> dict[str, Any]:
    kind = message_type(message)
    if kind != "ORU^R01":
        raise Rejected("AR", f"unsupported message type {kind or 'none'}: this listener takes ORU^R01 (PCD-01)")
    control_id = _get(message.msh, 10)
    if not control_id:
        raise Rejected("AR", "MSH-10 message control id is empty")
    sender = _get(message.msh, 3).split("^")[0] or "unknown-sender"
    sent = _timestamp(_get(message.msh, 7))
    pids = _segments(message, "PID")
    patient = pids[0] and _get(pids[0], 3).split("^")[0] if pids else ""
    obrs = _segments(message, "OBR")
    obr_time = _timestamp(_get(obrs[0], 7)) if obrs else None
    base = hashlib.sha256(f"{sender}|{control_id}".encode()).hexdigest()[:24]
    observations = []
    for index, obx in enumerate(_segments(message, "OBX")):
        if not _get(obx, 2) and not _get(obx, 5):
            continue  # a PCD-01 containment row (MDS / VMD / channel) carries no observation value
        observations.append(_observation(obx, index, base, patient, obr_time or sent))
    if not observations:
        raise Rejected("AE", "ORU^R01 without OBX segments: nothing to map")
    header_id, provenance_id = f"mh-{base}", f"prov-{base}"
    header = {"resourceType": "MessageHeader", "id": header_id,
              "eventCoding": {"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": "R01"},
              "source": {"name": sender, "endpoint": f"urn:medplat:hl7:{source}"},
              "focus": [{"reference": f"Observation/{o['id']}"} for o in observations]}
    provenance = {"resourceType": "Provenance", "id": provenance_id,
                  "target": [{"reference": f"Observation/{o['id']}"} for o in observations],
                  "recorded": sent or "1970-01-01T00:00:00+00:00",
                  "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                           "code": "CREATE"}]},
                  "agent": [{"who": {"display": sender}}],
                  "entity": [{"role": "source", "what": {"identifier": {"system": "urn:medplat:hl7v2-control-id",
                                                                        "value": control_id}}}]}
    bundle = {"resourceType": "Bundle", "id": f"msg-{base}", "type": "message",
              "timestamp": sent or None,
              "entry": [{"fullUrl": f"urn:uuid:{header_id}", "resource": header},
                        *({"fullUrl": f"urn:uuid:{o['id']}", "resource": o} for o in observations),
                        {"fullUrl": f"urn:uuid:{provenance_id}", "resource": provenance}]}
    if bundle["timestamp"] is None:
        del bundle["timestamp"]
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Rejected("AE", f"mapped FHIR is invalid at {'.'.join(str(p) for p in first['loc'])}: "
                             f"{first['msg']}") from None
    return bundle


def _observation(obx, index: int, base: str, patient: str, fallback_time: str | None) -> dict[str, Any]:
    where = f"OBX[{index + 1}]"
    value_type = _get(obx, 2)
    code_field = _get(obx, 3).split("^")
    code, display = code_field[0], code_field[1] if len(code_field) > 1 else ""
    system = code_field[2] if len(code_field) > 2 else ""
    if not code:
        raise Rejected("AE", f"{where}-3: observation identifier is empty")
    coding_system = MDC if system in ("", "MDC") else f"urn:medplat:hl7-coding-system:{system}"
    observation: dict[str, Any] = {
        "resourceType": "Observation", "id": f"obs-{base}-{index + 1}",
        "status": STATUS.get(_get(obx, 11) or "F", "final"),
        "code": {"coding": [{"system": coding_system, "code": code, **({"display": display} if display else {})}]},
    }
    raw = _get(obx, 5)
    if value_type == "NM":
        if not NUMERIC.match(raw):
            raise Rejected("AE", f"{where}-5: {raw!r} is not a number (OBX-2 is NM)")
        unit = _get(obx, 6).split("^")
        quantity: dict[str, Any] = {"value": float(raw)}
        if unit and unit[0]:
            quantity["unit"] = unit[1] if len(unit) > 1 and unit[1] else unit[0]
            if len(unit) > 2 and unit[2] == "UCUM":
                quantity.update(system=UCUM, code=unit[0])
            elif len(unit) > 2 and unit[2] == "MDC":
                quantity.update(mdc_unit(unit[0]))
        observation["valueQuantity"] = quantity
    elif value_type in ("ST", "TX", "CWE", "CE"):
        observation["valueString"] = raw
    elif value_type:
        raise Rejected("AE", f"{where}-2: value type {value_type} is not supported")
    sub_id = _get(obx, 4)
    if sub_id:
        observation["extension"] = [{"url": "urn:medplat:pcd-containment-path", "valueString": sub_id}]
    when = _timestamp(_get(obx, 14)) or fallback_time
    if when:
        observation["effectiveDateTime"] = when
    equipment = _get(obx, 18).split("^")[0]
    if equipment:
        observation["device"] = {"identifier": {"system": "urn:medplat:equipment-instance", "value": equipment}}
    if patient:
        observation["subject"] = {"identifier": {"system": "urn:medplat:patient-id", "value": patient}}
    return observation
