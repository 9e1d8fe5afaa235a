"""Device telemetry de-identification: PoCD-shaped Observations (HL7 PoCD IG: MDC code,
UCUM quantity, Observation.device) and a waveform shaped like FHIR R4's
`observation-example-sample-data` (SampledData with origin, period, factor, dimensions)."""
from __future__ import annotations

import datetime
import json

import pytest

from medplat.deid import KeyDomain, date_shift_days
from medplat.deid.telemetry import TelemetryPolicy, deidentify_series, rows

KEY = b"telemetry-project-key-0123456789"
T0 = datetime.datetime(2026, 3, 14, 9, 0, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))


def pseudonymize(domain: str, values: list[str]) -> list[str]:
    import hashlib
    return [hashlib.sha256(f"{domain}|{v}".encode()).hexdigest()[:16].upper() for v in values]


def spo2(patient: str, device: str, second: int, value: float) -> dict:
    return {"resourceType": "Observation", "id": f"{device}-{second}", "status": "final",
            "identifier": [{"value": f"SN-{device}-{second}"}],
            "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "150456"}]},
            "subject": {"reference": f"Patient/{patient}"}, "device": {"reference": f"Device/{device}",
                                                                       "display": f"Monitor {device} bed 12"},
            "effectiveDateTime": (T0 + datetime.timedelta(seconds=second)).isoformat(),
            "valueQuantity": {"value": value, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}


def ecg(patient: str, device: str) -> dict:
    return {"resourceType": "Observation", "id": "ecg-1", "status": "final",
            "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "131329"}]},
            "subject": {"reference": f"Patient/{patient}"}, "device": {"reference": f"Device/{device}"},
            "effectiveDateTime": T0.isoformat(),
            "valueSampledData": {"origin": {"value": 2048, "unit": "uV", "system": "http://unitsofmeasure.org",
                                            "code": "uV"},
                                 "period": 10, "factor": 1.612, "lowerLimit": -3300, "upperLimit": 3300,
                                 "dimensions": 1, "data": "2041 2043 2037 2047 2060 2062 2051 E"}}


def keys() -> KeyDomain:
    return KeyDomain(KEY, pseudonymize)


def test_pseudonymous_keys_and_nothing_identifying():
    series = [spo2("pat-Anna-Schmidt", "monitor-SN778899", s, 97) for s in range(3)]
    out = deidentify_series(series, TelemetryPolicy("study-7"), keys())
    text = json.dumps(out)
    for secret in ("Anna-Schmidt", "SN778899", "bed 12", "SN-"):
        assert secret not in text
    assert {o["subject"]["reference"] for o in out} == {"Patient/" + pseudonymize("study-7", ["pat-Anna-Schmidt"])[0]}
    assert {o["device"]["reference"] for o in out} == {"Device/" + keys().hash("monitor-SN778899")}
    assert deidentify_series(series, TelemetryPolicy("study-7"), keys()) == out, "stable across runs"


def test_time_shift_per_patient_keeps_intervals():
    series = [spo2("anna", "m1", 0, 97), spo2("anna", "m1", 60, 96), spo2("bert", "m2", 0, 95)]
    out = deidentify_series(series, TelemetryPolicy("study-7"), keys())
    times = [datetime.datetime.fromisoformat(o["effectiveDateTime"]) for o in out]
    assert times[1] - times[0] == datetime.timedelta(seconds=60)
    assert times[0] - T0 == datetime.timedelta(days=date_shift_days(KEY, "anna"))
    assert times[2] - T0 == datetime.timedelta(days=date_shift_days(KEY, "bert"))
    assert date_shift_days(KEY, "anna") != date_shift_days(KEY, "bert")


def test_down_sampling_and_generalisation():
    series = [spo2("anna", "m1", s, 90 + (s % 10)) for s in range(120)]
    out = deidentify_series(series, TelemetryPolicy("study-7", resample_seconds=60), keys())
    # Whole-day shifts keep minute boundaries: two windows of 60 samples, each averaging 90..99.
    assert [o["valueQuantity"]["value"] for o in out] == [94.5, 94.5]
    assert all("id" not in o for o in out)
    start = datetime.datetime.fromisoformat(out[0]["effectiveDateTime"])
    assert start - T0 == datetime.timedelta(days=date_shift_days(KEY, "anna"))
    coarse = deidentify_series(series[:3], TelemetryPolicy("study-7", value_step={"150456": 5}), keys())
    assert [o["valueQuantity"]["value"] for o in coarse] == [90, 90, 90]


@pytest.mark.parametrize("policy", ["drop", "keep", "aggregate"])
def test_waveform_policy(policy):
    out = deidentify_series([ecg("anna", "m1")], TelemetryPolicy("study-7", waveform=policy), keys())
    if policy == "drop":
        assert out == []
    elif policy == "keep":
        assert out[0]["valueSampledData"]["data"] == "2041 2043 2037 2047 2060 2062 2051 E"
    else:
        stats = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in out[0]["component"]}
        samples = [2048 + 1.612 * v for v in (2041, 2043, 2037, 2047, 2060, 2062, 2051)]
        assert stats["min"] == pytest.approx(min(samples)) and stats["max"] == pytest.approx(max(samples))
        assert stats["count"] == 7 and "valueSampledData" not in out[0]


def test_rows_for_the_analytics_table():
    out = deidentify_series([spo2("anna", "m1", 0, 97), ecg("anna", "m1")],
                            TelemetryPolicy("study-7", waveform="aggregate"), keys())
    table = rows(out)
    assert {r["statistic"] for r in table} == {None, "mean", "min", "max", "count"}
    assert all(r["patient"] == pseudonymize("study-7", ["anna"])[0] for r in table)
    assert table[0]["effective"].tzinfo is not None and table[0]["day"] == table[0]["effective"].date().isoformat()


def test_bad_policy_is_refused():
    with pytest.raises(ValueError, match="drop, keep or aggregate"):
        TelemetryPolicy("study-7", waveform="stream")
