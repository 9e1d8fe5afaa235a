"""Optional differentially private aggregates (medplat.deid.dp on OpenDP 0.16): the privacy
unit is the patient, every query's loss is OpenDP's own privacy map, and the ledger refuses a
query past the release's epsilon."""
from __future__ import annotations

import statistics

import pytest

from medplat.deid.dp import BudgetExhausted, PrivacyLedger, _count, _opendp, aggregates, per_patient_means


def rows(patients: int, per_patient: int = 5) -> list[dict]:
    out = []
    for p in range(patients):
        for n in range(per_patient):
            out.append({"patient": f"P{p}", "code": "150456", "statistic": None, "value": 90.0 + (p % 9) + n * 0.1})
            out.append({"patient": f"P{p}", "code": "147842", "statistic": None, "value": 60.0 + (p * 7) % 40})
        out.append({"patient": f"P{p}", "code": "131329", "statistic": "mean", "value": 1.0})  # aggregates: skipped
    return out


def test_one_value_per_patient_and_code_whatever_the_number_of_rows():
    means = per_patient_means(rows(10, per_patient=50))
    assert {code: len(values) for code, values in means.items()} == {"150456": 10, "147842": 10}


def test_the_budget_is_spent_exactly_by_opendps_privacy_maps_and_then_refused():
    ledger = PrivacyLedger(epsilon=1.0)
    published = aggregates(rows(200), {"150456": (80.0, 100.0), "147842": (30.0, 200.0)}, ledger)
    assert [r["code"] for r in published] == ["147842", "150456"]
    assert len(ledger.spent) == 4 and all(loss == pytest.approx(0.25, rel=1e-6) for _, loss in ledger.spent)
    assert ledger.used == pytest.approx(1.0, rel=1e-6)
    report = ledger.report()
    assert report["privacyUnit"] == "patient" and [q["query"] for q in report["queries"]] == \
        ["count 147842", "sum 147842", "count 150456", "sum 150456"]
    # Past the budget: refused before anything is computed, the ledger unchanged.
    with pytest.raises(BudgetExhausted, match="left of 1"):
        ledger.run("one more count", _count(_opendp(), 0.1), [1.0, 2.0])
    assert len(ledger.spent) == 4


def test_a_query_larger_than_the_budget_is_refused_even_first():
    with pytest.raises(BudgetExhausted):
        PrivacyLedger(epsilon=0.1).run("count", _count(_opendp(), 0.5), [1.0])


def test_noisy_answers_stay_near_the_truth_for_a_large_release():
    """Laplace scale 4 for the count (epsilon 0.25 each): |noise| > 40 has probability e^-10."""
    data = rows(200)
    truth = statistics.fmean(per_patient_means(data)["150456"])
    published = {r["code"]: r for r in aggregates(data, {"150456": (80.0, 100.0)}, PrivacyLedger(epsilon=1.0))}
    assert abs(published["150456"]["patients"] - 200) <= 40
    assert abs(published["150456"]["mean"] - truth) <= 3
    assert 80 <= published["150456"]["mean"] <= 100


def test_codes_without_bounds_are_not_published_and_the_budget_must_be_positive():
    assert aggregates(rows(5), {}, PrivacyLedger(epsilon=1.0)) == []
    with pytest.raises(ValueError):
        PrivacyLedger(epsilon=0)
