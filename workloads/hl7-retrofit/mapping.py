"""ORU^R01 (IHE PCD-01) read with the lazy ER7 reader (er7.py) -> a FHIR R4 message Bundle, per the HL7 v2-to-FHIR
IG (Message ORU_R01 to Bundle, Segment OBX to Observation): MSH -> MessageHeader and Provenance,
PID-3 -> the subject, OBX -> Observation (OBX-3 -> code; OBX-5 by OBX-2: NM -> valueQuantity,
SN -> valueQuantity/valueRange/valueRatio/valueString, CWE/CE/CNE -> valueCodeableConcept,
DTM/TS/DT -> valueDateTime, ST/TX/FT -> valueString; OBX-4 -> the PCD containment path, OBX-8 ->
interpretation, OBX-11 -> status, OBX-14 -> effective time, OBX-18 -> the device).
MSH-18 chooses how the bytes are decoded. Every problem is an Hl7Error with its Table 0357 code
and location; every Bundle is validated with fhir.resources (R4B) before anything leaves."""
from __future__ import annotations

import datetime
import functools
import hashlib
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from medplat.service.terminology import UCUM, mdc_unit
from medplat.workloads.hl7_retrofit import datatypes as dt
from medplat.workloads.hl7_retrofit import er7
from medplat.workloads.hl7_retrofit import vocabulary as vocab
from medplat.workloads.hl7_retrofit.errors import Hl7Error

TEXT_TYPES, CODED_TYPES, TIME_TYPES = {"ST", "TX", "FT"}, {"CWE", "CE", "CNE"}, {"TS", "DTM", "DT"}
SUPPORTED_TYPES = {"NM", "SN"} | TEXT_TYPES | CODED_TYPES | TIME_TYPES
PROCESSING_IDS = {"P", "D", "T"}  # Table 0103
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v2-0078"
SHAPES_KEPT = 16384
FHIR_STRING = re.compile(r"^[ \r\n\t\S]+$")  # FHIR R4 string regex (datatypes.html#string)


@dataclass(frozen=True)
class SiteRules:
    """Per-site choices the standard leaves open (set through the service settings)."""
    zone: ZoneInfo = ZoneInfo("Europe/Berlin")  # local time of a DTM without offset
    default_charset: str = "ASCII"  # MSH-18 empty: HL7's default (2.15.9.18)
    versions: frozenset = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6"})
    source: str = "medplat-hl7-retrofit"


@dataclass
class Decoded:
    message: er7.Message
    codec: str
    version: str = ""
    control_id: str = ""


def header_fields(raw: bytes) -> list[str]:
    """MSH fields of a raw message (MSH-n is item n-1), read before the character set is known;
    header fields are ASCII in practice, so Latin-1 never fails here."""
    line = raw.split(b"\r", 1)[0]
    if not line.startswith(b"MSH") or len(line) < 8:
        return []
    return line.decode("latin-1").split(chr(line[3]))


def decode(raw: bytes, rules: SiteRules) -> Decoded:
    fields = header_fields(raw)
    if not fields:
        raise Hl7Error(100, "not a parseable HL7 v2 message: the first segment is not MSH", ("MSH", 1), reject=True)
    charset = fields[17].split("~")[0].split("^")[0].strip() if len(fields) > 17 else ""
    charset = charset or rules.default_charset
    codec = vocab.CHARSETS.get(charset)
    if codec is None:
        supported = charset in vocab.CHARSETS_NOT_SUPPORTED
        reason = "is not decoded by this receiver" if supported else "is not in HL7 table 0211"
        raise Hl7Error(207 if supported else 103, f"MSH-18 character set {charset!r} {reason}", ("MSH", 1, 18))
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise Hl7Error(102, f"bytes are not {charset} (MSH-18): byte 0x{raw[exc.start]:02x} at offset {exc.start}",
                       ("MSH", 1, 18)) from None
    try:
        message = er7.Message(text.replace("\r\n", "\r").replace("\n", "\r"))
    except ValueError as exc:
        raise Hl7Error(100, f"not a parseable HL7 v2 message: {exc}", ("MSH", 1), reject=True) from None
    return Decoded(message, codec)


def check_header(decoded: Decoded, rules: SiteRules) -> None:
    message = decoded.message
    msh = message.segment("MSH")
    decoded.control_id, decoded.version = msh.field(10), message.first(msh, 12)
    kind, processing = message.components(msh, 9), message.first(msh, 11)
    for index, value, name in ((9, kind and kind[0], "message type"), (10, decoded.control_id, "message control id"),
                               (11, processing, "processing id"), (12, decoded.version, "version id")):
        if not value:
            raise Hl7Error(101, f"MSH-{index} {name} is empty", ("MSH", 1, index))
    if decoded.version not in rules.versions:
        raise Hl7Error(203, f"version {decoded.version} is not supported (supported: "
                            f"{', '.join(sorted(rules.versions))})", ("MSH", 1, 12))
    if processing not in PROCESSING_IDS:
        raise Hl7Error(202, f"processing id {processing!r} is not in table 0103 (P, D, T)", ("MSH", 1, 11))
    if kind[0] != "ORU":
        raise Hl7Error(200, f"unsupported message type {'^'.join(kind[:2])}: this listener takes ORU^R01 (PCD-01)",
                       ("MSH", 1, 9))
    if len(kind) < 2 or kind[1] != "R01":
        raise Hl7Error(201, f"unsupported event {'^'.join(kind[:2])}: this listener takes ORU^R01 (PCD-01)",
                       ("MSH", 1, 9))


def to_bundle(decoded: Decoded, rules: SiteRules) -> dict[str, Any]:
    check_header(decoded, rules)
    message, msh = decoded.message, decoded.message.segment("MSH")
    sender = message.first(msh, 3).strip() or "unknown-sender"
    sent = dt.date_time(message.first(msh, 7), rules.zone, ("MSH", 1, 7))
    base = hashlib.sha256(f"{sender}|{decoded.control_id}".encode()).hexdigest()[:24]
    patient, order_time, observations, counts = None, None, [], {}
    seen_obr, commented = False, None  # commented: the Observation an NTE right after its OBX belongs to
    for segment in message.segments:
        name = segment.name
        counts[name] = sequence = counts.get(name, 0) + 1
        if name == "PID":
            if seen_obr:
                raise Hl7Error(100, "PID after OBR (ORU^R01: the PATIENT group precedes ORDER_OBSERVATION)",
                               ("PID", sequence))
            patient = _patient_identifier(message, segment)
        elif name == "OBR":
            seen_obr = True
            order_time = dt.date_time(message.first(segment, 7), rules.zone, ("OBR", sequence, 7))
        elif name == "OBX":
            if not seen_obr:
                raise Hl7Error(100, "OBX before any OBR (ORU^R01: OBX belongs to an ORDER_OBSERVATION)",
                               ("OBX", sequence))
            observation = _observation(decoded, segment, sequence, base, patient, order_time or sent, rules)
            if observation:
                observations.append(observation)
            commented = observation
        elif name == "NTE" and commented:
            _add_note(decoded, commented, segment)
            continue
        commented = None if name != "OBX" else commented
    if not observations:
        raise Hl7Error(101, "ORU^R01 without an OBX that carries a value: nothing to map", ("OBX", 1))
    return _bundle(decoded, base, sender, sent, observations, rules)


def _bundle(decoded: Decoded, base: str, sender: str, sent: str | None, observations: list, rules: SiteRules) -> dict:
    header_id, provenance_id = f"mh-{base}", f"prov-{base}"
    targets = [{"reference": f"Observation/{o['id']}"} for o in observations]
    header = {"resourceType": "MessageHeader", "id": header_id,
              "eventCoding": {"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": "R01"},
              "source": {"name": sender, "endpoint": f"urn:medplat:hl7:{rules.source}"},
              "focus": targets}
    provenance = {"resourceType": "Provenance", "id": provenance_id, "target": targets,
                  "recorded": sent if sent and "T" in sent else
                  datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                           "code": "CREATE"}]},
                  "agent": [{"who": {"display": sender}}],
                  "entity": [{"role": "source", "what": {"identifier": {"system": "urn:medplat:hl7v2-control-id",
                                                                        "value": decoded.control_id}}}]}
    bundle = {"resourceType": "Bundle", "id": f"msg-{base}", "type": "message",
              **({"timestamp": sent} if sent and "T" in sent else {}),
              "entry": [{"fullUrl": f"urn:uuid:{header_id}", "resource": header},
                        *({"fullUrl": f"urn:uuid:{o['id']}", "resource": o} for o in observations),
                        {"fullUrl": f"urn:uuid:{provenance_id}", "resource": provenance}]}
    validate(bundle, decoded.control_id)
    return bundle


_valid_shapes: dict[bytes, None] = {}


def validate(bundle: dict, control_id: str) -> None:
    """fhir.resources (R4B) validation, remembered per shape. A monitor sends the same structure
    every second and a large message repeats a few row shapes; only values this module produced
    from checked input differ between equal shapes (resource ids and references, numbers read by
    datatypes.number, times written by datatypes.date_time, the control id), so a shape
    fhir.resources accepted once is accepted again. Everything else — codes, units, texts, status,
    identifiers — is part of the shape and validated when it first occurs. Each Observation shape
    is validated as an Observation; the Bundle around them (MessageHeader, Provenance) once per
    sender with its first Observation."""
    entries = bundle["entry"]
    for entry in entries[1:-1]:
        observation = entry["resource"]
        _remember(b"O" + _observation_shape(observation), Observation, observation)
    header = entries[0]["resource"]
    skeleton = {**bundle, "entry": [entries[0], entries[1], entries[-1]]}
    _remember(orjson.dumps(["B", header["source"], control_id == control_id.strip(), "timestamp" in bundle]),
              Bundle, skeleton)


def _remember(key: bytes, model, resource: dict) -> None:
    if key in _valid_shapes:
        return
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Hl7Error(207, f"mapped FHIR is invalid at {'.'.join(str(p) for p in first['loc'])}: "
                            f"{first['msg']}") from None
    if len(_valid_shapes) >= SHAPES_KEPT:
        del _valid_shapes[next(iter(_valid_shapes))]
    _valid_shapes[key] = None


def _observation_shape(observation: dict) -> bytes:
    shape = {k: v for k, v in observation.items() if k not in ("id", "effectiveDateTime")}
    if "valueQuantity" in shape:
        shape["valueQuantity"] = {**shape["valueQuantity"], "value": 0}
    path = shape.get("extension", [{}])[0].get("valueString", "")
    if path and FHIR_STRING.match(path):  # the OBX-4 path differs per row: checked here, not per shape
        shape["extension"] = [{**shape["extension"][0], "valueString": "-"}]
    return orjson.dumps(shape)


def _add_note(decoded: Decoded, observation: dict, nte) -> None:
    """NTE after an OBX (ORU_R01: OBX {NTE}) -> Observation.note (v2-to-FHIR IG, Segment NTE to
    Annotation: NTE-3 -> text). A lab's comment such as "sample haemolysed" must not be lost."""
    text = "\n".join(_text(decoded, item) for item in decoded.message.repetitions(nte, 3))
    if text.strip():
        observation.setdefault("note", []).append({"text": text})


PATIENT_SYSTEM = "urn:medplat:patient-id"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
PATIENT_ID_TYPES = ("MR", "PI")  # preferred among PID-3 repetitions (Table 0203), over e.g. VN / AN


def _patient_identifier(message: er7.Message, pid) -> dict | None:
    """PID-3 (CX) -> Identifier per the v2-to-FHIR IG's CX map: CX.1 value, CX.4 assigning authority
    -> system (HD.2 with HD.3 ISO -> urn:oid:, a URI as is, else the namespace HD.1), CX.5 -> type.
    Without the authority one number at two hospitals would be one patient."""
    candidates = [r.split(message.component) for r in message.repetitions(pid, 3)]
    candidates = [(c + [""] * 5)[:5] for c in candidates if c and c[0]]
    if not candidates:
        return None
    chosen = next((c for kind in PATIENT_ID_TYPES for c in candidates if c[4] == kind), candidates[0])
    value, authority, kind = chosen[0], (chosen[3].split(message.subcomponent) + ["", "", ""])[:3], chosen[4]
    namespace, universal, universal_type = authority
    if universal and universal_type == "ISO":
        system = f"urn:oid:{universal}"
    elif universal and universal_type in ("URI", "URL"):
        system = universal
    elif namespace or universal:
        system = f"{PATIENT_SYSTEM}:{urllib.parse.quote(namespace or universal, safe='')}"
    else:
        system = PATIENT_SYSTEM
    identifier: dict[str, Any] = {"system": system, "value": value}
    if kind:
        identifier["type"] = {"coding": [{"system": IDENTIFIER_TYPE, "code": kind}]}
    return identifier


def _observation(decoded: Decoded, obx, sequence: int, base: str, patient: dict | None, fallback_time: str | None,
                 rules: SiteRules) -> dict[str, Any] | None:
    where, message = ("OBX", sequence), decoded.message
    value_type, has_value = obx.field(2), obx.field(5) != ""
    if not value_type and not has_value:
        return None  # a PCD-01 containment row (MDS / VMD / channel) carries no observation value
    if not value_type:
        raise Hl7Error(101, "OBX-2 value type is empty but OBX-5 has a value", (*where, 2))
    if value_type not in vocab.TABLE_0125:
        raise Hl7Error(103, f"OBX-2 value type {value_type!r} is not in table 0125", (*where, 2))
    code = obx.field(3)
    if not code or code.startswith((message.component, message.repetition)):
        raise Hl7Error(101, "OBX-3 observation identifier is empty", (*where, 3))
    status = obx.field(11)
    if not status:
        raise Hl7Error(101, "OBX-11 observation result status is empty", (*where, 11))
    if status not in vocab.TABLE_0085:
        raise Hl7Error(103, f"OBX-11 status {status!r} is not in table 0085", (*where, 11))
    if status not in vocab.STATUS:
        raise Hl7Error(207, f"OBX-11 status {status!r} has no FHIR observation status (v2-to-FHIR IG)", (*where, 11))
    observation: dict[str, Any] = {
        "resourceType": "Observation", "id": f"obs-{base}-{sequence}", "status": vocab.STATUS[status],
        "code": _coded(code, message.key, decoded.codec, "MDC"),
    }
    if has_value:
        observation.update(_value(decoded, obx, value_type, (*where, 5), rules))
    sub_id = obx.field(4)
    if sub_id:
        observation["extension"] = [{"url": "urn:medplat:pcd-containment-path", "valueString": sub_id}]
    flag = message.first(obx, 8)
    if flag:
        observation["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": flag}]}]
    when = dt.date_time(message.first(obx, 14), rules.zone, (*where, 14))
    if when or fallback_time:
        observation["effectiveDateTime"] = when or fallback_time
    equipment = message.first(obx, 18)
    if equipment:
        observation["device"] = {"identifier": {"system": "urn:medplat:equipment-instance", "value": equipment}}
    if patient:
        observation["subject"] = {"identifier": patient}
    return observation


def _text(decoded: Decoded, text: str) -> str:
    return dt.unescape(decoded.message, text, decoded.codec)


def _value(decoded: Decoded, obx, value_type: str, where: tuple, rules: SiteRules) -> dict[str, Any]:
    """OBX-5 by OBX-2 (Segment OBX to Observation, OBX-5 rows)."""
    repetitions = decoded.message.repetitions(obx, 5)
    if value_type in TEXT_TYPES:
        # Text carries no components: a stray ^ in a device's free text stays as written.
        return {"valueString": "\n".join(_text(decoded, item) for item in repetitions)}
    if len(repetitions) > 1:
        raise Hl7Error(102, f"OBX-5 repeats ({len(repetitions)} values) but value type {value_type} maps to one "
                            "FHIR value", where)
    components = repetitions[0].split(decoded.message.component)
    if value_type not in SUPPORTED_TYPES:
        raise Hl7Error(207, f"value type {value_type} is not mapped by this receiver "
                            f"(supported: {', '.join(sorted(SUPPORTED_TYPES))})", (*where[:2], 2))
    if value_type == "NM":
        return {"valueQuantity": {"value": dt.number(components[0], where), **_unit(decoded, obx)}}
    if value_type == "SN":
        return dt.structured_numeric(components, _unit(decoded, obx), where)
    if value_type in CODED_TYPES:
        return {"valueCodeableConcept": dt.codeable_concept([_text(decoded, c) for c in components],
                                                            vocab.coding_system)}
    return {"valueDateTime": dt.date_time(components[0], rules.zone, where)}


def _unit(decoded: Decoded, obx) -> dict[str, str]:
    raw = obx.field(6)
    return _unit_of(raw, decoded.message.key, decoded.codec) if raw else {}


# Rows repeat their code and unit fields message after message: their mapping is remembered by
# the raw field (with the delimiters and character set that decode it). The results are shared,
# so they are never modified after creation.
@functools.lru_cache(maxsize=8192)
def _coded(raw: str, delimiters: str, codec: str, default_system: str = "") -> dict:
    """A CWE/CE field's first repetition -> CodeableConcept."""
    message = er7.Delimiters(delimiters)
    components = raw.split(message.repetition)[0].split(message.component)
    return dt.codeable_concept([dt.unescape(message, c, codec) for c in components], vocab.coding_system,
                               default_system)


@functools.lru_cache(maxsize=8192)
def _unit_of(raw: str, delimiters: str, codec: str) -> dict[str, str]:
    """OBX-6 units (CWE): UCUM as is, MDC through the shared MDC -> UCUM table, text otherwise."""
    message = er7.Delimiters(delimiters)
    unit = raw.split(message.repetition)[0].split(message.component)
    if not unit[0]:
        return {}
    code, text, system = (unit + ["", ""])[:3]
    quantity = {"unit": dt.unescape(message, text or code, codec)}
    if system == "UCUM":
        quantity.update(system=UCUM, code=code)
    elif system == "MDC":
        quantity.update(mdc_unit(code))
    elif system:
        quantity.update(system=vocab.coding_system(system), code=code)
    return quantity
