"""Device telemetry for research: Observation time series from the adapters, de-identified by
the telemetry configuration (pseudonymous patient, keyed device key, per-patient time shift
that keeps intervals), then the policy's generalisation, down-sampling and waveform decision.
Waveforms are quasi-identifying (an ECG identifies its owner), so by default they are dropped."""
from __future__ import annotations

import datetime
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from medplat.deid.config import builtin
from medplat.deid.engine import Deidentifier
from medplat.deid.keys import KeyDomain

STATISTICS = "urn:medplat:statistic"


@dataclass(frozen=True)
class TelemetryPolicy:
    patient_domain: str
    waveform: Literal["drop", "keep", "aggregate"] = "drop"
    resample_seconds: int | None = None      # mean per patient, device, code and window
    value_step: dict[str, float] = field(default_factory=dict)  # code -> rounding step (generalisation)

    def __post_init__(self) -> None:
        if self.waveform not in ("drop", "keep", "aggregate"):
            raise ValueError(f"waveform policy must be drop, keep or aggregate, not {self.waveform!r}")
        if self.resample_seconds is not None and self.resample_seconds < 1:
            raise ValueError("resample_seconds must be at least 1")


def deidentify_series(observations: Iterable[dict[str, Any]], policy: TelemetryPolicy,
                      keys: KeyDomain) -> list[dict[str, Any]]:
    deidentifier = Deidentifier(builtin("telemetry"), keys, domain=policy.patient_domain)
    out = []
    for observation in observations:
        result = deidentifier.deidentify(observation)
        if result is None:
            continue
        if "valueSampledData" in result and not _waveform(result, policy.waveform):
            continue
        _generalize(result, policy.value_step)
        out.append(result)
    return _resample(out, policy.resample_seconds) if policy.resample_seconds else out


def _code(observation: dict[str, Any]) -> str:
    coding = ((observation.get("code") or {}).get("coding") or [{}])[0]
    return coding.get("code", "")


def _waveform(observation: dict[str, Any], policy: str) -> bool:
    """Apply the waveform policy in place; False when the observation is dropped."""
    if policy == "drop":
        return False
    if policy == "aggregate":
        sampled = observation.pop("valueSampledData")
        samples = _samples(sampled)
        unit = sampled.get("origin", {})
        observation["component"] = [
            {"code": {"coding": [{"system": STATISTICS, "code": name}]},
             "valueQuantity": {k: v for k, v in {"value": round(value, 6), "unit": unit.get("unit"),
                                                 "system": unit.get("system"), "code": unit.get("code")}.items()
                               if v is not None}}
            for name, value in (("mean", statistics.fmean(samples)), ("min", min(samples)), ("max", max(samples)),
                                ("count", float(len(samples))))] if samples else []
    return True


def _samples(sampled: dict[str, Any]) -> list[float]:
    """Decode SampledData (origin + factor * value; E, L, U mark errors and limits)."""
    origin = float((sampled.get("origin") or {}).get("value", 0))
    factor = float(sampled.get("factor", 1))
    return [origin + factor * float(v) for v in str(sampled.get("data", "")).split() if v not in ("E", "L", "U")]


def _generalize(observation: dict[str, Any], steps: dict[str, float]) -> None:
    step = steps.get(_code(observation))
    quantity = observation.get("valueQuantity")
    if step and quantity and isinstance(quantity.get("value"), (int, float)):
        quantity["value"] = round(math.floor(quantity["value"] / step) * step, 6)


def _resample(observations: list[dict[str, Any]], seconds: int) -> list[dict[str, Any]]:
    """One Observation per patient, device, code and window: the mean, dated at the window start."""
    buckets: dict[tuple, list[dict[str, Any]]] = {}
    passthrough = []
    for observation in observations:
        when, value = observation.get("effectiveDateTime"), (observation.get("valueQuantity") or {}).get("value")
        if when is None or not isinstance(value, (int, float)):
            passthrough.append(observation)
            continue
        moment = datetime.datetime.fromisoformat(when)
        window = math.floor(moment.timestamp() / seconds) * seconds
        key = ((observation.get("subject") or {}).get("reference"), (observation.get("device") or {}).get("reference"),
               _code(observation), window, moment.utcoffset())
        buckets.setdefault(key, []).append(observation)
    out = []
    for (_, _, _, window, offset), group in sorted(buckets.items(), key=lambda item: str(item[0])):
        first = dict(group[0])
        start = datetime.datetime.fromtimestamp(window, datetime.timezone(offset or datetime.timedelta()))
        first["effectiveDateTime"] = start.isoformat()
        first.pop("id", None)  # an aggregate is not any one of the originals
        first["valueQuantity"] = dict(first["valueQuantity"],
                                      value=round(statistics.fmean(o["valueQuantity"]["value"] for o in group), 6))
        out.append(first)
    return out + passthrough


def rows(observations: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows for the analytics table (one per de-identified Observation or component)."""
    table = []
    for observation in observations:
        when = observation.get("effectiveDateTime") or (observation.get("effectivePeriod") or {}).get("start")
        moment = datetime.datetime.fromisoformat(when).astimezone(datetime.timezone.utc) if when else None
        coding = ((observation.get("code") or {}).get("coding") or [{}])[0]
        base = {"patient": (observation.get("subject") or {}).get("reference", "").removeprefix("Patient/") or None,
                "device": (observation.get("device") or {}).get("reference", "").removeprefix("Device/") or None,
                "code_system": coding.get("system"), "code": coding.get("code"),
                "effective": moment, "day": moment.date().isoformat() if moment else None}
        parts = [(None, observation.get("valueQuantity"))] + [
            (((c.get("code") or {}).get("coding") or [{}])[0].get("code"), c.get("valueQuantity"))
            for c in observation.get("component") or []]
        for statistic, quantity in parts:
            if quantity and isinstance(quantity.get("value"), (int, float)):
                table.append(dict(base, statistic=statistic, value=float(quantity["value"]),
                                  unit=quantity.get("code") or quantity.get("unit")))
    return table
