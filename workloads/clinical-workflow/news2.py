"""NEWS2 (Royal College of Physicians, 2017) as a pure module: component scores from Chart 1,
the aggregate, the clinical risk and response from Charts 2 and 3, and the result as a FHIR R4
Observation coded as NHS England codes it (SNOMED CT UK extension; LOINC 88330-6 is a CMS mobility
item, not NEWS2).

Values are scored at the chart's resolution (whole numbers; temperature to 0.1 °C), rounded half
up, so a device's 90.6 /min pulse is charted and scored as 91.
"""
from __future__ import annotations

import datetime
import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
# NHS England NEWS2 FHIR guidance (nhsconnect.github.io/FHIR-NEWS2): total and sub-score codes.
TOTAL_CODE = ("1104051000000101", "Royal College of Physicians National Early Warning Score 2 - total score")
COMPONENT_CODES = {
    "respiration_rate": ("1104301000000104", "NEWS2 - respiration rate score"),
    "spo2_scale_1": ("1104311000000102", "NEWS2 - oxygen saturation scale 1 score"),
    "spo2_scale_2": ("1104321000000108", "NEWS2 - oxygen saturation scale 2 score"),
    "air_or_oxygen": ("1104331000000105", "NEWS2 - air or oxygen score"),
    "systolic_bp": ("1104341000000101", "NEWS2 - systolic blood pressure score"),
    "pulse": ("1104351000000103", "NEWS2 - pulse score"),
    "consciousness": ("1104361000000100", "NEWS2 - consciousness score"),
    "temperature": ("1104371000000107", "NEWS2 - temperature score"),
}
PARAMETERS = ("respiration_rate", "spo2", "air_or_oxygen", "systolic_bp", "pulse", "consciousness", "temperature")


class Risk(str, enum.Enum):
    LOW = "low"
    LOW_MEDIUM = "low-medium"  # a single red score (3) with an aggregate of 0-4
    MEDIUM = "medium"
    HIGH = "high"


# RCP Chart 3 (clinical response to NEWS trigger thresholds).
RESPONSE = {
    "zero": ("minimum 12-hourly", "continue routine NEWS monitoring"),
    Risk.LOW: ("minimum 4-6-hourly", "inform registered nurse, who must assess the patient and decide whether "
                                     "monitoring must increase or clinical care escalate"),
    Risk.LOW_MEDIUM: ("minimum 1-hourly", "registered nurse to inform the medical team caring for the patient, who "
                                          "will review and decide whether escalation of care is necessary"),
    Risk.MEDIUM: ("minimum 1-hourly", "urgent response: registered nurse to immediately inform the medical team; "
                                      "urgent assessment by a clinician with core competencies in the care of "
                                      "acutely ill patients"),
    Risk.HIGH: ("continuous monitoring of vital signs", "emergency response: registered nurse to immediately "
                "inform the medical team at specialist registrar level at least; emergency assessment by a team with "
                "critical-care competencies"),
}


def _chart(value: float, places: int = 0) -> Decimal | int:
    if places == 0 and isinstance(value, int):
        return value  # already at the chart's resolution
    return Decimal(str(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def _band(value: Decimal | int, bands: tuple[tuple[Decimal | int | None, int], ...]) -> int:
    """bands: (inclusive upper bound, score) ascending; the last bound is None (no upper limit)."""
    for upper, points in bands:
        if upper is None or value <= upper:
            return points
    raise AssertionError("unreachable: the last band is open")


# Chart 1 as (inclusive upper bound, score), ascending; None = no upper limit.
RESPIRATION = ((8, 3), (11, 1), (20, 0), (24, 2), (None, 3))
SPO2_SCALE_1 = ((91, 3), (93, 2), (95, 1), (None, 0))
SPO2_SCALE_2_LOW = ((83, 3), (85, 2), (87, 1), (None, 0))
SPO2_SCALE_2_ON_OXYGEN = ((92, 0), (94, 1), (96, 2), (None, 3))
SYSTOLIC = ((90, 3), (100, 2), (110, 1), (219, 0), (None, 3))
PULSE = ((40, 3), (50, 1), (90, 0), (110, 1), (130, 2), (None, 3))
TEMPERATURE = ((Decimal("35.0"), 3), (Decimal("36.0"), 1), (Decimal("38.0"), 0), (Decimal("39.0"), 1), (None, 2))
ACVPU = {"A": 0, "C": 3, "V": 3, "P": 3, "U": 3}


def score_respiration(rate: float) -> int:
    return _band(_chart(rate), RESPIRATION)


def score_spo2(saturation: float, *, scale: int, on_oxygen: bool) -> int:
    value = _chart(saturation)
    if scale == 1:
        return _band(value, SPO2_SCALE_1)
    if scale != 2:
        raise ValueError(f"SpO2 scale must be 1 or 2, not {scale!r}")
    if value <= 87:
        return _band(value, SPO2_SCALE_2_LOW)
    # Scale 2 at 88% and above: 88-92 scores 0, and so does >= 93 on air; on oxygen >= 93 scores 1-3.
    return _band(value, SPO2_SCALE_2_ON_OXYGEN) if on_oxygen else 0


def score_air_or_oxygen(on_oxygen: bool) -> int:
    return 2 if on_oxygen else 0


def score_systolic(pressure: float) -> int:
    return _band(_chart(pressure), SYSTOLIC)


def score_pulse(rate: float) -> int:
    return _band(_chart(rate), PULSE)


def score_consciousness(acvpu: str) -> int:
    if acvpu not in ACVPU:
        raise ValueError(f"consciousness must be one of A, C, V, P, U (ACVPU), not {acvpu!r}")
    return ACVPU[acvpu]


def score_temperature(celsius: float) -> int:
    return _band(_chart(celsius, 1), TEMPERATURE)


@dataclass(frozen=True)
class Vitals:
    respiration_rate: float
    spo2: float
    on_oxygen: bool
    systolic_bp: float
    pulse: float
    consciousness: str
    temperature: float
    spo2_scale: int = 1


@dataclass(frozen=True)
class News2:
    components: dict[str, int]
    total: int
    risk: Risk
    monitoring: str
    response: str

    @property
    def red_score(self) -> bool:
        return 3 in self.components.values()


def clinical_risk(total: int, red_score: bool) -> Risk:
    if total >= 7:
        return Risk.HIGH
    if total >= 5:
        return Risk.MEDIUM
    return Risk.LOW_MEDIUM if red_score else Risk.LOW


def score(vitals: Vitals) -> News2:
    spo2_key = f"spo2_scale_{vitals.spo2_scale}"
    components = {
        "respiration_rate": score_respiration(vitals.respiration_rate),
        spo2_key: score_spo2(vitals.spo2, scale=vitals.spo2_scale, on_oxygen=vitals.on_oxygen),
        "air_or_oxygen": score_air_or_oxygen(vitals.on_oxygen),
        "systolic_bp": score_systolic(vitals.systolic_bp),
        "pulse": score_pulse(vitals.pulse),
        "consciousness": score_consciousness(vitals.consciousness),
        "temperature": score_temperature(vitals.temperature),
    }
    total = sum(components.values())
    risk = clinical_risk(total, 3 in components.values())
    monitoring, response = RESPONSE["zero" if total == 0 else risk]
    return News2(components, total, risk, monitoring, response)


# --- inputs from Observations -------------------------------------------------------------------

# Vital-sign codes -> NEWS2 parameter. MDC codes as the DK Core IG's IEEE value set names them
# (151562 respiration rate, 150456 SpO2, 150021 NIBP systolic, 149530/149514/147842 pulse/heart
# rate, 150364/150368 temperature); LOINC vital-signs codes; SNOMED CT ACVPU (1104441000000107)
# and NEWS2's air/oxygen observable as staff record them.
CODES: dict[tuple[str, str], str] = {
    (MDC, "151562"): "respiration_rate", (MDC, "151570"): "respiration_rate", (MDC, "151578"): "respiration_rate",
    (MDC, "150456"): "spo2", (MDC, "150324"): "spo2",
    (MDC, "150021"): "systolic_bp", (MDC, "150017"): "systolic_bp",
    (MDC, "149530"): "pulse", (MDC, "149514"): "pulse", (MDC, "147842"): "pulse", (MDC, "149546"): "pulse",
    (MDC, "150364"): "temperature", (MDC, "150368"): "temperature",
    (LOINC, "9279-1"): "respiration_rate", (LOINC, "59408-5"): "spo2", (LOINC, "2708-6"): "spo2",
    (LOINC, "8480-6"): "systolic_bp", (LOINC, "8867-4"): "pulse", (LOINC, "8310-5"): "temperature",
    (SNOMED, "1104441000000107"): "consciousness", (SNOMED, "1104331000000105"): "air_or_oxygen",
    (SNOMED, "86290005"): "respiration_rate", (SNOMED, "78564009"): "pulse", (SNOMED, "72313002"): "systolic_bp",
}
# The unit each numeric parameter must arrive in (UCUM); anything else is refused, not converted.
UNITS = {"respiration_rate": {"/min"}, "spo2": {"%"}, "systolic_bp": {"mm[Hg]"}, "pulse": {"/min"},
         "temperature": {"Cel"}}
# Plausible ranges: values outside are device artefacts or unit errors, refused rather than scored.
PLAUSIBLE = {"respiration_rate": (0, 100), "spo2": (0, 100), "systolic_bp": (0, 350), "pulse": (0, 350),
             "temperature": (20, 45)}


class ReadingError(ValueError):
    """An Observation that cannot feed NEWS2 (wrong unit, implausible, unknown value)."""


@dataclass(frozen=True)
class Reading:
    parameter: str
    value: float | str | bool
    at: datetime.datetime
    source: str  # "Observation/<id>"
    device: str = ""  # the reporting device (live device messages only); "" when staff recorded it


def parameter_of(observation: Mapping[str, Any]) -> str | None:
    for coding in (observation.get("code") or {}).get("coding") or []:
        found = CODES.get((coding.get("system"), str(coding.get("code"))))
        if found:
            return found
    return None


def _when(observation: Mapping[str, Any], received: datetime.datetime | None) -> datetime.datetime:
    text = observation.get("effectiveDateTime") or observation.get("issued")
    if not text and received is not None:
        return received  # a live device stream without a determination time: timed at receipt
    if not text:
        raise ReadingError("Observation has no effectiveDateTime: its age cannot be judged")
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ReadingError("effectiveDateTime without a time zone")
    return moment


def reading(observation: Mapping[str, Any], received: datetime.datetime | None = None) -> Reading | None:
    """The NEWS2 input an Observation carries, None when it is not a NEWS2 parameter. `received`
    (live device messages only) times an Observation that carries no time of its own. Input of the
    wrong shape (a string where FHIR has an object...) is a ReadingError, never a crash."""
    try:
        return _reading(observation, received)
    except (TypeError, AttributeError) as exc:
        raise ReadingError(f"malformed Observation ({type(exc).__name__})") from None


def _reading(observation: Mapping[str, Any], received: datetime.datetime | None) -> Reading | None:
    parameter = parameter_of(observation)
    if parameter is None:
        return None
    if observation.get("status") not in ("final", "amended", "corrected"):
        raise ReadingError(f"{parameter}: status {observation.get('status')!r} is not a final result")
    source = f"Observation/{observation.get('id')}"
    at = _when(observation, received)
    if parameter == "consciousness":
        value = _acvpu(observation)
    elif parameter == "air_or_oxygen":
        value = _on_oxygen(observation)
    else:
        quantity = observation.get("valueQuantity") or {}
        if "value" not in quantity:
            raise ReadingError(f"{parameter}: no valueQuantity.value")
        if isinstance(quantity["value"], bool) or not isinstance(quantity["value"], (int, float)):
            raise ReadingError(f"{parameter}: valueQuantity.value must be a number")
        unit = quantity.get("code")
        if unit not in UNITS[parameter] or quantity.get("system") != "http://unitsofmeasure.org":
            raise ReadingError(f"{parameter}: unit {unit!r} is not UCUM {sorted(UNITS[parameter])}")
        value = float(quantity["value"])
        low, high = PLAUSIBLE[parameter]
        if not low <= value <= high:
            raise ReadingError(f"{parameter}: {value} is outside the plausible range {low}-{high}")
    return Reading(parameter, value, at, source)


def _acvpu(observation: Mapping[str, Any]) -> str:
    for coding in (observation.get("valueCodeableConcept") or {}).get("coding") or []:
        code = str(coding.get("code", ""))
        if code in ACVPU:
            return code
    text = observation.get("valueString")
    if text in ACVPU:
        return text
    raise ReadingError("consciousness: value must be A, C, V, P or U")


def _on_oxygen(observation: Mapping[str, Any]) -> bool:
    if isinstance(observation.get("valueBoolean"), bool):
        return observation["valueBoolean"]
    text = observation.get("valueString") or (observation.get("valueCodeableConcept") or {}).get("text")
    if text in ("air", "oxygen"):
        return text == "oxygen"
    raise ReadingError("air_or_oxygen: value must be valueBoolean (true = on oxygen) or 'air'/'oxygen'")


@dataclass(frozen=True)
class StalenessPolicy:
    """How old each input may be for a score (seconds); older inputs are stale, never scored."""
    device_max_age_s: float = 900.0  # continuously monitored numerics
    manual_max_age_s: float = 4 * 3600.0  # ACVPU and air/oxygen as staff record them
    future_skew_s: float = 60.0

    def max_age(self, parameter: str) -> float:
        return self.manual_max_age_s if parameter in ("consciousness", "air_or_oxygen") else self.device_max_age_s

    def refuse_future(self, found: Reading, now: datetime.datetime) -> None:
        """A reading from the future is refused at intake: kept, it would stay the 'latest' and every
        real reading after it would be dropped as older (one typo or device clock would blind NEWS2)."""
        if (found.at - now).total_seconds() > self.future_skew_s:
            raise ReadingError(f"{found.parameter}: time {found.at.isoformat()} is in the future")


@dataclass(frozen=True)
class Incomplete:
    missing: tuple[str, ...]
    stale: tuple[str, ...]

    def reason(self) -> str:
        parts = [f"missing {', '.join(self.missing)}"] if self.missing else []
        parts += [f"stale {', '.join(self.stale)}"] if self.stale else []
        return "no NEWS2: " + "; ".join(parts)


@dataclass
class PatientVitals:
    """The latest reading of each parameter for one patient."""
    latest: dict[str, Reading] = field(default_factory=dict)
    spo2_scale: int = 1

    def add(self, new: Reading) -> bool:
        current = self.latest.get(new.parameter)
        if current is not None and current.at >= new.at:
            return False  # an older or repeated reading never replaces a newer one
        self.latest[new.parameter] = new
        return True

    def snapshot(self, now: datetime.datetime, policy: StalenessPolicy) -> tuple[Vitals, list[Reading]] | Incomplete:
        missing = tuple(p for p in PARAMETERS if p not in self.latest)
        stale = tuple(p for p, r in self.latest.items()
                      if (now - r.at).total_seconds() > policy.max_age(p)
                      or (r.at - now).total_seconds() > policy.future_skew_s)
        if missing or stale:
            return Incomplete(missing, tuple(sorted(stale)))
        values = {p: self.latest[p].value for p in PARAMETERS}
        vitals = Vitals(respiration_rate=values["respiration_rate"], spo2=values["spo2"],
                        on_oxygen=values["air_or_oxygen"], systolic_bp=values["systolic_bp"], pulse=values["pulse"],
                        consciousness=values["consciousness"], temperature=values["temperature"],
                        spo2_scale=self.spo2_scale)
        return vitals, [self.latest[p] for p in PARAMETERS]


def observation(result: News2, *, patient: str, inputs: list[Reading], issued: datetime.datetime | None = None,
                observation_id: str | None = None) -> dict[str, Any]:
    """The score as a FHIR R4 Observation: total in valueInteger, sub-scores as components."""
    issued = issued or datetime.datetime.now(datetime.timezone.utc)
    effective = max(r.at for r in inputs)
    return {
        "resourceType": "Observation", "id": observation_id or f"news2-{uuid.uuid4().hex}", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "survey", "display": "Survey"}]}],
        "code": {"coding": [{"system": SNOMED, "code": TOTAL_CODE[0], "display": TOTAL_CODE[1]}],
                 "text": "NEWS2 total score"},
        "subject": {"reference": patient},
        "effectiveDateTime": effective.isoformat(), "issued": issued.isoformat(),
        "valueInteger": result.total,
        "interpretation": [{"coding": [{"system": "urn:medplat:news2-clinical-risk", "code": result.risk.value}],
                            "text": f"{result.risk.value} clinical risk; {result.monitoring}; {result.response}"}],
        "component": [{"code": {"coding": [{"system": SNOMED, "code": COMPONENT_CODES[name][0],
                                            "display": COMPONENT_CODES[name][1]}]},
                       "valueInteger": points} for name, points in result.components.items()],
        "derivedFrom": [{"reference": r.source} for r in inputs],
    }
