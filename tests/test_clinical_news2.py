"""NEWS2 against the Royal College of Physicians' chart.

The table below is written from RCP, National Early Warning Score (NEWS) 2, Chart 1 "The NEWS
scoring system" (2017), as reproduced e.g. in Thorax 2019 Table 1 for the SpO2 scales; it lists
each band as inclusive (low, high) at the chart's resolution, independently of the module's
upper-bound encoding. Trigger levels: RCP NEWS2 Chart 2 (thresholds and triggers) and Chart 3
(clinical response). Codes: NHS England NEWS2 FHIR guidance (SNOMED CT 1104051000000101 etc.).
"""
from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from fhir.resources.R4B.observation import Observation
from hypothesis import given, settings
from hypothesis import strategies as st

from medplat.workloads.clinical_workflow import news2

INF = 10_000
CHART = {  # parameter -> [(low, high, score)], inclusive, from RCP Chart 1
    "respiration_rate": [(0, 8, 3), (9, 11, 1), (12, 20, 0), (21, 24, 2), (25, INF, 3)],
    "spo2_scale_1": [(0, 91, 3), (92, 93, 2), (94, 95, 1), (96, 100, 0)],
    "systolic_bp": [(0, 90, 3), (91, 100, 2), (101, 110, 1), (111, 219, 0), (220, INF, 3)],
    "pulse": [(0, 40, 3), (41, 50, 1), (51, 90, 0), (91, 110, 1), (111, 130, 2), (131, INF, 3)],
    "temperature": [(Decimal("20.0"), Decimal("35.0"), 3), (Decimal("35.1"), Decimal("36.0"), 1),
                    (Decimal("36.1"), Decimal("38.0"), 0), (Decimal("38.1"), Decimal("39.0"), 1),
                    (Decimal("39.1"), Decimal("45.0"), 2)],
}
# SpO2 scale 2 (hypercapnic respiratory failure): (low, high, on oxygen?, score); None = either.
SCALE_2 = [(0, 83, None, 3), (84, 85, None, 2), (86, 87, None, 1), (88, 92, None, 0), (93, 100, False, 0),
           (93, 94, True, 1), (95, 96, True, 2), (97, 100, True, 3)]
SCORERS = {"respiration_rate": news2.score_respiration, "systolic_bp": news2.score_systolic,
           "pulse": news2.score_pulse, "temperature": news2.score_temperature,
           "spo2_scale_1": lambda v: news2.score_spo2(v, scale=1, on_oxygen=False)}


def _band_values(low, high):
    if isinstance(low, Decimal):
        return st.integers(int(low * 10), int(high * 10)).map(lambda tenths: float(Decimal(tenths) / 10))
    return st.integers(low, min(high, 400))


@pytest.mark.parametrize("parameter", sorted(CHART))
def test_every_band_boundary_scores_as_charted(parameter):
    for low, high, points in CHART[parameter]:
        for edge in (low, min(high, 400)):
            assert SCORERS[parameter](float(edge)) == points, (parameter, edge)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), parameter=st.sampled_from(sorted(CHART)))
def test_any_value_in_a_band_scores_as_charted(data, parameter):
    low, high, points = data.draw(st.sampled_from(CHART[parameter]))
    value = data.draw(_band_values(low, high))
    assert SCORERS[parameter](value) == points


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_spo2_scale_2_on_air_and_on_oxygen(data):
    low, high, oxygen, points = data.draw(st.sampled_from(SCALE_2))
    value = data.draw(st.integers(low, high))
    on_oxygen = data.draw(st.booleans()) if oxygen is None else oxygen
    assert news2.score_spo2(value, scale=2, on_oxygen=on_oxygen) == points


def test_scale_2_boundaries_and_oxygen_score():
    assert [news2.score_spo2(v, scale=2, on_oxygen=True) for v in (83, 84, 87, 88, 92, 93, 94, 95, 96, 97)] == \
        [3, 2, 1, 0, 0, 1, 1, 2, 2, 3]
    assert news2.score_spo2(99, scale=2, on_oxygen=False) == 0
    assert news2.score_air_or_oxygen(True) == 2 and news2.score_air_or_oxygen(False) == 0
    with pytest.raises(ValueError):
        news2.score_spo2(95, scale=3, on_oxygen=False)


@pytest.mark.parametrize("acvpu,points", [("A", 0), ("C", 3), ("V", 3), ("P", 3), ("U", 3)])
def test_acvpu(acvpu, points):
    assert news2.score_consciousness(acvpu) == points


def test_unknown_consciousness_is_refused():
    with pytest.raises(ValueError):
        news2.score_consciousness("alert")


def test_values_are_charted_at_the_charts_resolution():
    assert news2.score_pulse(90.4) == 0 and news2.score_pulse(90.5) == 1  # charted as 90 and 91
    assert news2.score_temperature(38.04) == 0 and news2.score_temperature(38.05) == 1  # 38.0 / 38.1


def vitals(**changes) -> news2.Vitals:
    normal = dict(respiration_rate=16, spo2=97, on_oxygen=False, systolic_bp=120, pulse=70, consciousness="A",
                  temperature=37.0)
    return news2.Vitals(**{**normal, **changes})


@pytest.mark.parametrize("changes,total,risk", [
    ({}, 0, news2.Risk.LOW),
    ({"pulse": 95}, 1, news2.Risk.LOW),
    ({"respiration_rate": 22, "pulse": 95, "temperature": 38.5}, 4, news2.Risk.LOW),
    ({"respiration_rate": 26}, 3, news2.Risk.LOW_MEDIUM),  # a single red score
    ({"consciousness": "C"}, 3, news2.Risk.LOW_MEDIUM),
    ({"respiration_rate": 22, "spo2": 93, "pulse": 95}, 5, news2.Risk.MEDIUM),
    ({"respiration_rate": 26, "pulse": 95, "on_oxygen": True}, 6, news2.Risk.MEDIUM),
    ({"respiration_rate": 26, "spo2": 93, "pulse": 115}, 7, news2.Risk.HIGH),
    ({"respiration_rate": 30, "spo2": 85, "on_oxygen": True, "systolic_bp": 85, "pulse": 140,
      "consciousness": "U", "temperature": 34.0}, 20, news2.Risk.HIGH),
])
def test_aggregate_and_trigger_levels(changes, total, risk):
    result = news2.score(vitals(**changes))
    assert (result.total, result.risk) == (total, risk)
    if risk is news2.Risk.HIGH:
        assert result.monitoring == "continuous monitoring of vital signs" and "emergency" in result.response
    if risk is news2.Risk.MEDIUM:
        assert "urgent" in result.response
    if risk is news2.Risk.LOW_MEDIUM:
        assert result.monitoring == "minimum 1-hourly"


NOW = datetime.datetime(2026, 11, 30, 2, 0, tzinfo=datetime.timezone.utc)


def reading(parameter, value, age_s=0):
    return news2.Reading(parameter, value, NOW - datetime.timedelta(seconds=age_s), f"Observation/{parameter}")


def full_set(**ages):
    record = news2.PatientVitals()
    values = {"respiration_rate": 26, "spo2": 93, "air_or_oxygen": False, "systolic_bp": 120, "pulse": 115,
              "consciousness": "A", "temperature": 37.0}
    for parameter, value in values.items():
        record.add(reading(parameter, value, ages.get(parameter, 0)))
    return record


def test_missing_and_stale_inputs_give_no_score():
    policy = news2.StalenessPolicy(device_max_age_s=900, manual_max_age_s=4 * 3600)
    record = full_set()
    del record.latest["temperature"]
    assert record.snapshot(NOW, policy) == news2.Incomplete(("temperature",), ())
    stale = full_set(pulse=901, consciousness=4 * 3600 + 1).snapshot(NOW, policy)
    assert stale == news2.Incomplete((), ("consciousness", "pulse"))
    assert "stale consciousness, pulse" in stale.reason()
    assert isinstance(full_set(pulse=900, consciousness=4 * 3600).snapshot(NOW, policy), tuple)  # at the limit
    future = full_set(pulse=-120).snapshot(NOW, policy)  # 2 minutes in the future: a clock error
    assert future == news2.Incomplete((), ("pulse",))


def test_an_older_reading_never_replaces_a_newer_one():
    record = news2.PatientVitals()
    assert record.add(reading("pulse", 80, age_s=10))
    assert not record.add(reading("pulse", 150, age_s=20))
    assert record.latest["pulse"].value == 80


def test_observation_readings_check_unit_status_and_time():
    base = {"resourceType": "Observation", "id": "o1", "status": "final", "effectiveDateTime": NOW.isoformat(),
            "code": {"coding": [{"system": news2.MDC, "code": "150456"}]},
            "valueQuantity": {"value": 93.0, "system": "http://unitsofmeasure.org", "code": "%"}}
    assert news2.reading(base).value == 93.0 and news2.reading(base).parameter == "spo2"
    with pytest.raises(news2.ReadingError, match="unit"):
        news2.reading({**base, "valueQuantity": {"value": 0.93, "system": "http://unitsofmeasure.org", "code": "1"}})
    with pytest.raises(news2.ReadingError, match="status"):
        news2.reading({**base, "status": "preliminary"})
    with pytest.raises(news2.ReadingError, match="effectiveDateTime"):
        news2.reading({k: v for k, v in base.items() if k != "effectiveDateTime"})
    with pytest.raises(news2.ReadingError, match="plausible"):
        news2.reading({**base, "valueQuantity": {"value": 930, "system": "http://unitsofmeasure.org", "code": "%"}})
    assert news2.reading({**base, "code": {"coding": [{"system": news2.MDC, "code": "196648"}]}}) is None


@pytest.mark.parametrize("value", [True, "80", None, [80]])
def test_a_quantity_that_is_not_a_json_number_is_refused(value):
    """Found by trying it: valueQuantity.value true arrived over MQTT (no FHIR validation on that
    path) as float(True) = 1.0, a pulse of 1/min scoring 3; FHIR decimals are JSON numbers."""
    observation = {"resourceType": "Observation", "id": "o1", "status": "final", "effectiveDateTime": NOW.isoformat(),
                   "code": {"coding": [{"system": news2.MDC, "code": "147842"}]},
                   "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "/min"}}
    with pytest.raises(news2.ReadingError, match="number"):
        news2.reading(observation)


def test_score_as_fhir_observation_validates_with_components():
    record = full_set()
    vitals_now, inputs = record.snapshot(NOW, news2.StalenessPolicy())
    result = news2.score(vitals_now)
    resource = news2.observation(result, patient="Patient/p1", inputs=inputs, issued=NOW)
    Observation.model_validate(resource)
    assert resource["code"]["coding"][0]["code"] == "1104051000000101"
    assert resource["valueInteger"] == result.total == 7
    assert sum(c["valueInteger"] for c in resource["component"]) == 7
    assert {c["code"]["coding"][0]["code"] for c in resource["component"]} >= {"1104311000000102", "1104301000000104"}
    assert len(resource["derivedFrom"]) == 7


def test_a_live_device_reading_without_time_is_timed_at_receipt_only_when_live():
    untimed = {"resourceType": "Observation", "id": "o2", "status": "final",
               "code": {"coding": [{"system": news2.MDC, "code": "147842"}]},
               "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "/min"}}
    assert news2.reading(untimed, received=NOW).at == NOW
    with pytest.raises(news2.ReadingError):
        news2.reading(untimed)


@settings(max_examples=200, deadline=None)
@given(rr=st.integers(4, 45), spo2=st.integers(70, 100), oxygen=st.booleans(), sbp=st.integers(60, 250),
       pulse=st.integers(25, 180), acvpu=st.sampled_from("ACVPU"), tenths=st.integers(330, 410),
       scale_2=st.booleans())
def test_agrees_with_an_independent_implementation(rr, spo2, oxygen, sbp, pulse, acvpu, tenths, scale_2):
    """Oracle: the third-party `vitalscore` package (PyPI, 0.1.1), written by others from the same chart."""
    from vitalscore import score_news2

    theirs = score_news2(rr, float(spo2), oxygen, sbp, pulse, acvpu, tenths / 10, use_spo2_scale2=scale_2)
    ours = news2.score(news2.Vitals(rr, spo2, oxygen, sbp, pulse, acvpu, tenths / 10, 2 if scale_2 else 1))
    assert ours.total == theirs.total
    assert [ours.components[k] for k in ("respiration_rate", "air_or_oxygen", "systolic_bp", "pulse",
                                         "consciousness", "temperature")] == \
        [theirs.rr_score, theirs.o2_score, theirs.sbp_score, theirs.hr_score, theirs.consciousness_score,
         theirs.temp_score]
