"""Optional differentially private aggregates for the analytics zone, on OpenDP.

The privacy unit is one patient: the release first reduces each patient to one value per code
(their mean), so a patient changes at most one record of each query's input (symmetric
distance 1). Every query is an OpenDP measurement whose noise scale OpenDP's binary search
picks for the query's share of the budget, and whose privacy loss is OpenDP's own privacy map
(never computed here); the ledger adds the losses (sequential composition) and refuses a
query that would take the release past its epsilon. A mean is a noisy count and a noisy sum of
the values clamped to the code's bounds (shifted to start at 0, so the sum's sensitivity is
the width of the bounds), each charged to the ledger.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable

PATIENT_CONTRIBUTION = 1  # symmetric distance a patient can cause: one value per query


class BudgetExhausted(RuntimeError):
    """The query would take the release past its privacy budget; nothing was computed."""


def _opendp():
    import opendp.prelude as dp
    dp.enable_features("contrib")  # OpenDP's Laplace/count/sum constructors are still behind this flag
    return dp


@dataclass
class PrivacyLedger:
    """A release's epsilon and what each query spent of it (pure DP, sequential composition)."""
    epsilon: float
    spent: list[tuple[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise ValueError("a privacy budget needs epsilon > 0")

    @property
    def used(self) -> float:
        return sum(loss for _, loss in self.spent)

    def run(self, name: str, measurement, data: list[float]) -> Any:
        loss = float(measurement.map(PATIENT_CONTRIBUTION))  # OpenDP's privacy map of this measurement
        if self.used + loss > self.epsilon * (1 + 1e-9):
            raise BudgetExhausted(f"{name}: needs epsilon {loss:.4g}, {self.epsilon - self.used:.4g} left "
                                  f"of {self.epsilon:.4g}")
        self.spent.append((name, loss))
        return measurement(data)

    def report(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "spent": round(self.used, 9), "mechanism": "laplace (OpenDP)",
                "privacyUnit": "patient", "queries": [{"query": n, "epsilon": round(e, 9)} for n, e in self.spent]}


def _count(dp, epsilon: float):
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    make = lambda scale: dp.t.make_count(*space) >> dp.m.then_laplace(scale)  # noqa: E731
    return make(dp.binary_search_param(make, d_in=PATIENT_CONTRIBUTION, d_out=epsilon))


def _bounded_sum(dp, epsilon: float, width: float):
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    make = lambda scale: (dp.t.make_clamp(*space, bounds=(0.0, width)) >> dp.t.then_sum()  # noqa: E731
                          >> dp.m.then_laplace(scale))
    return make(dp.binary_search_param(make, d_in=PATIENT_CONTRIBUTION, d_out=epsilon))


def per_patient_means(rows: Iterable[dict[str, Any]]) -> dict[str, list[float]]:
    """code -> one value per patient (the patient's mean), from the released observation rows."""
    values: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if row.get("statistic") is None and row.get("patient") and row.get("code"):
            values.setdefault((row["code"], row["patient"]), []).append(float(row["value"]))
    out: dict[str, list[float]] = {}
    for (code, _), series in sorted(values.items()):
        out.setdefault(code, []).append(statistics.fmean(series))
    return out


def aggregates(rows: Iterable[dict[str, Any]], bounds: dict[str, tuple[float, float]],
               ledger: PrivacyLedger) -> list[dict[str, Any]]:
    """Per code with bounds: a DP patient count and a DP mean of patients' means; the budget is
    split evenly over the queries. Codes without bounds are not published (no sensitivity)."""
    dp = _opendp()
    by_code = per_patient_means(rows)
    codes = [c for c in sorted(bounds) if c in by_code]
    if not codes:
        return []
    share = (ledger.epsilon - ledger.used) / (2 * len(codes))
    out = []
    for code in codes:
        low, high = bounds[code]
        if not high > low:
            raise ValueError(f"bounds for {code}: need low < high")
        shifted = [v - low for v in by_code[code]]
        count = ledger.run(f"count {code}", _count(dp, share), shifted)
        total = ledger.run(f"sum {code}", _bounded_sum(dp, share, high - low), shifted)
        mean = low + total / count if count > 0 else None
        out.append({"code": code, "patients": max(0, int(count)),  # clamping is post-processing: no cost
                    "mean": None if mean is None else round(min(high, max(low, mean)), 6),
                    "bounds": [low, high], "epsilon": round(2 * share, 9)})
    return out
