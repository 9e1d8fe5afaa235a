"""SDC MDIB descriptors and states -> FHIR R4 following the HL7 Point-of-Care Device IG:
MDS / VMD / channel -> Device (with parent), metric -> DeviceMetric, metric state ->
Observation (numeric -> valueQuantity, enumeration/string -> valueString, sample array ->
valueSampledData) with MDC codes (a missing CodingSystem means MDC), UCUM units decoded from the
MDC unit code (units without UCUM keep their MDC code and are flagged), measurement validity, the
device and the determination time.

Identity: resource ids derive from the provider's endpoint reference (its EPR address, stable
for a device across reconnects and bridge restarts) and the MDIB handle; the MDS Device also
carries the UDI where the MDIB has one."""
from __future__ import annotations

import datetime
import hashlib
from functools import lru_cache
from decimal import Decimal
from typing import Any

from medplat.service.terminology import MDC, UCUM, UNMAPPED_UNIT, mdc_unit

VALIDITY_STATUS = {"Vld": "final", "Vldated": "final", "Ong": "preliminary", "Qst": "preliminary",
                   "Calib": "preliminary", "Inv": "entered-in-error", "Oflw": "final", "Uflw": "final",
                   "NA": "cancelled"}
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
METRIC_KIND = "urn:medplat:sdc-metric-kind"  # setting / device: no observation-category code fits
SCADA_PARTITION = 2  # MDC partition of physiological measurements (10101: SCADA)


def coding(coded) -> dict[str, Any]:
    """A CodedValue as a FHIR Coding; sdc11073 leaves an implied CodingSystem empty: that is MDC."""
    system = getattr(coded, "CodingSystem", None) or MDC
    found: dict[str, Any] = {"system": system, "code": str(coded.Code)}
    descriptions = getattr(coded, "ConceptDescription", None) or []
    if descriptions:
        found["display"] = str(descriptions[0].text if hasattr(descriptions[0], "text") else descriptions[0])
    return found


@lru_cache(maxsize=65536)
def device_id(epr: str, handle: str) -> str:
    """A FHIR id (<= 64 chars of [A-Za-z0-9-.]) from the provider EPR and an MDIB handle.

    Deterministic: the same device and handle give the same id after any reconnect or restart.
    Handles are arbitrary strings, so a readable prefix is followed by a digest of the pair."""
    digest = hashlib.sha256(f"{epr}\n{handle}".encode()).hexdigest()[:16]
    readable = "".join(c if c.isalnum() or c in "-." else "-" for c in f"{epr.split(':')[-1][:8]}-{handle}")
    return f"{readable[:47]}-{digest}"


def _enum(value) -> str:
    return str(getattr(value, "value", value) or "")


def _udi_carriers(descriptor) -> list[dict[str, Any]]:
    meta = getattr(descriptor, "MetaData", None)
    carriers = []
    for udi in (getattr(meta, "Udi", None) or []):
        carrier = {"deviceIdentifier": udi.DeviceIdentifier, "carrierHRF": udi.HumanReadableForm}
        root = getattr(udi.Issuer, "Root", None) if udi.Issuer is not None else None
        if root:
            carrier["issuer"] = root
        carriers.append({k: v for k, v in carrier.items() if v})
    return [c for c in carriers if c]


def device(epr: str, descriptor, parent_handle: str | None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Device", "id": device_id(epr, descriptor.Handle),
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": epr},
                       {"system": "urn:medplat:sdc-handle", "value": descriptor.Handle}],
        "type": {"coding": [coding(descriptor.Type)]} if descriptor.Type is not None else None,
        "udiCarrier": _udi_carriers(descriptor) or None,
    }
    if parent_handle:
        resource["parent"] = {"reference": f"Device/{device_id(epr, parent_handle)}"}
    return {k: v for k, v in resource.items() if v is not None}


def device_metric(epr: str, descriptor) -> dict[str, Any]:
    """A metric descriptor as DeviceMetric: type, unit, source channel, category."""
    category = {"Msrmt": "measurement", "Set": "setting", "Preset": "setting", "Clc": "calculation"}.get(
        _enum(descriptor.MetricCategory), "unspecified")
    resource: dict[str, Any] = {"resourceType": "DeviceMetric", "id": device_id(epr, descriptor.Handle),
                                "type": {"coding": [coding(descriptor.Type)]}, "category": category,
                                "source": {"reference": f"Device/{device_id(epr, descriptor.parent_handle)}"}}
    unit = getattr(descriptor, "Unit", None)
    if unit is not None:
        resource["unit"] = {"coding": [mdc_unit(str(unit.Code))]}
    return resource


def iso_time(seconds) -> str | None:
    """sdc11073 timestamps (DeterminationTime) are float seconds since the epoch, UTC."""
    if seconds in (None, 0):
        return None
    moment = datetime.datetime.fromtimestamp(float(seconds), tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds")


def category(descriptor) -> dict[str, Any]:
    """Settings are settings; physiological measurements (MDC SCADA codes) vital signs; the rest
    (device status, private codes) device observations."""
    kind = _enum(descriptor.MetricCategory)
    if kind in ("Set", "Preset"):
        return {"coding": [{"system": METRIC_KIND, "code": "setting", "display": "Device setting"}]}
    code = str(getattr(descriptor.Type, "Code", ""))
    system = getattr(descriptor.Type, "CodingSystem", None) or MDC
    if kind in ("Msrmt", "Clc") and system == MDC and code.isdigit() and int(code) >> 16 == SCADA_PARTITION:
        return {"coding": [{"system": OBSERVATION_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}
    return {"coding": [{"system": METRIC_KIND, "code": "device", "display": "Device observation"}]}


def _quantity(unit) -> dict[str, Any]:
    if unit is None:
        return {}
    found: dict[str, Any] = {**mdc_unit(str(unit.Code)), "unit": coding(unit).get("display", str(unit.Code))}
    if found["system"] != UCUM:
        found["extension"] = [{"url": UNMAPPED_UNIT, "valueBoolean": True}]
    return found


_STATIC: dict[tuple, dict[str, Any]] = {}


def _static_part(epr: str, descriptor) -> dict[str, Any]:
    """The parts of a metric's Observations that only change with its descriptor (cached per version)."""
    key = (epr, descriptor.Handle, getattr(descriptor, "DescriptorVersion", None))
    found = _STATIC.get(key)
    if found is None:
        if len(_STATIC) > 65536:
            _STATIC.clear()
        found = _STATIC[key] = {
            "category": [category(descriptor)], "code": {"coding": [coding(descriptor.Type)]},
            # PoCD IG: an Observation's device is its DeviceMetric (whose source is the channel Device).
            "device": {"reference": f"DeviceMetric/{device_id(epr, descriptor.Handle)}"},
            "quantity": _quantity(getattr(descriptor, "Unit", None)), "kind": type(descriptor).__name__}
    return found


def observation(epr: str, descriptor, state, observation_id: str) -> dict[str, Any] | None:
    value = getattr(state, "MetricValue", None)
    if value is None:
        return None
    static = _static_part(epr, descriptor)
    quality = getattr(value, "MetricQuality", None)
    validity = _enum(getattr(quality, "Validity", None))
    resource: dict[str, Any] = {
        "resourceType": "Observation", "id": observation_id,
        "status": VALIDITY_STATUS.get(validity, "final"),
        "category": static["category"], "code": static["code"], "device": static["device"],
        "extension": [{"url": "urn:medplat:sdc-measurement-validity", "valueCode": validity or "Vld"}],
    }
    when = iso_time(getattr(value, "DeterminationTime", None))
    if when:
        resource["effectiveDateTime"] = when
    kind = static["kind"]
    if "Numeric" in kind:
        if value.Value is None:
            return None
        resource["valueQuantity"] = {"value": float(Decimal(value.Value)), **static["quantity"]}
    elif "Enum" in kind or "String" in kind:
        if value.Value is None:
            return None
        resource["valueString"] = str(value.Value)
    elif "SampleArray" in kind:
        samples = getattr(value, "Samples", None) or []
        period = getattr(descriptor, "SamplePeriod", None)
        origin = {"value": 0, **{k: v for k, v in static["quantity"].items() if k != "unit"}}
        resource["valueSampledData"] = {
            "origin": origin,
            "period": float(period.total_seconds() * 1000) if hasattr(period, "total_seconds") else 1.0,
            "dimensions": 1, "data": " ".join(str(s) for s in samples) or "E"}
    else:
        return None
    return resource
