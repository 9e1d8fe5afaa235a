"""SDC MDIB descriptors and states -> FHIR R4 following the HL7 Point-of-Care Device IG:
MDS / VMD / channel -> Device (with parent), metric -> DeviceMetric, metric state ->
Observation (numeric -> valueQuantity, enumeration -> valueCodeableConcept, sample array ->
valueSampledData) with MDC codes (a missing CodingSystem means MDC), UCUM units where the MDC
dimension has one, measurement validity, the device and the determination time."""
from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

from medplat.service.terminology import MDC, MDC_TO_UCUM, UCUM, mdc_unit

VALIDITY_STATUS = {"Vld": "final", "Vldated": "final", "Ong": "preliminary", "Qst": "preliminary",
                   "Calib": "preliminary", "Inv": "entered-in-error", "Oflw": "final", "Uflw": "final",
                   "NA": "cancelled"}


def coding(coded) -> dict[str, Any]:
    """A CodedValue as a FHIR Coding; sdc11073 leaves an implied CodingSystem empty: that is MDC."""
    system = getattr(coded, "CodingSystem", None) or MDC
    found: dict[str, Any] = {"system": system, "code": str(coded.Code)}
    descriptions = getattr(coded, "ConceptDescription", None) or []
    if descriptions:
        found["display"] = str(descriptions[0].text if hasattr(descriptions[0], "text") else descriptions[0])
    return found


def device_id(epr: str, handle: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-." else "-" for c in f"{epr.split(':')[-1]}-{handle}")
    return safe[:64]


def device(epr: str, descriptor, parent_handle: str | None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Device", "id": device_id(epr, descriptor.Handle),
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": epr}, {"system": "urn:medplat:sdc-handle",
                                                                        "value": descriptor.Handle}],
        "type": {"coding": [coding(descriptor.Type)]} if descriptor.Type is not None else None,
    }
    if parent_handle:
        resource["parent"] = {"reference": f"Device/{device_id(epr, parent_handle)}"}
    return {k: v for k, v in resource.items() if v is not None}


def device_metric(epr: str, descriptor) -> dict[str, Any]:
    """A metric descriptor as DeviceMetric: type, unit, source channel, category."""
    category = {"Msrmt": "measurement", "Set": "setting", "Clc": "calculation"}.get(
        str(getattr(descriptor.MetricCategory, "value", descriptor.MetricCategory)), "unspecified")
    resource: dict[str, Any] = {"resourceType": "DeviceMetric", "id": device_id(epr, descriptor.Handle),
                                "type": {"coding": [coding(descriptor.Type)]}, "category": category,
                                "source": {"reference": f"Device/{device_id(epr, descriptor.parent_handle)}"}}
    unit = getattr(descriptor, "Unit", None)
    if unit is not None:
        code = str(unit.Code)
        resource["unit"] = {"coding": [mdc_unit(code)]}
    return resource


def _time(milliseconds) -> str | None:
    if milliseconds in (None, 0):
        return None
    moment = datetime.datetime.fromtimestamp(int(milliseconds) / 1000, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds")


def observation(epr: str, descriptor, state, observation_id: str) -> dict[str, Any] | None:
    value = getattr(state, "MetricValue", None)
    if value is None:
        return None
    validity = getattr(value, "Validity", None)
    validity = str(getattr(validity, "value", validity) or "")  # an enum member, or absent
    resource: dict[str, Any] = {
        "resourceType": "Observation", "id": observation_id,
        "status": VALIDITY_STATUS.get(validity, "final"),
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [coding(descriptor.Type)]},
        "device": {"reference": f"Device/{device_id(epr, descriptor.parent_handle or descriptor.Handle)}"},
        "extension": [{"url": "urn:medplat:sdc-measurement-validity", "valueCode": validity or "Vld"}],
    }
    when = _time(getattr(value, "DeterminationTime", None))
    if when:
        resource["effectiveDateTime"] = when
    unit = getattr(descriptor, "Unit", None)
    kind = type(descriptor).__name__
    if "Numeric" in kind:
        if value.Value is None:
            return None
        quantity: dict[str, Any] = {"value": float(Decimal(value.Value))}
        if unit is not None:
            code = str(unit.Code)
            quantity.update(mdc_unit(code))
            quantity["unit"] = coding(unit).get("display", code)
        resource["valueQuantity"] = quantity
    elif "Enum" in kind or "String" in kind:
        resource["valueString"] = str(value.Value)
    elif "SampleArray" in kind:
        samples = getattr(value, "Samples", None) or []
        period = getattr(descriptor, "SamplePeriod", None)
        resource["valueSampledData"] = {
            "origin": {"value": 0, **({"system": UCUM, "code": MDC_TO_UCUM.get(str(unit.Code), "1")} if unit else {})},
            "period": float(period.total_seconds() * 1000) if hasattr(period, "total_seconds") else 1.0,
            "dimensions": 1, "data": " ".join(str(s) for s in samples)}
    else:
        return None
    return resource
