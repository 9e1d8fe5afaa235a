"""Dataset-level privacy for a release: k-anonymity (medplat.privacy.kanon, optimal lattice
search) and distinct ℓ-diversity over the released table's quasi-identifiers, with a risk
report. A table that violates the policy is refused, or — if the policy says so —
generalised (and outliers suppressed within the limit) until it complies."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence

import numpy as np

from medplat.privacy.kanon import Anonymizer, Hierarchy, Risk


class ReleaseRefused(ValueError):
    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ReleasePolicy:
    k: int = 5
    l_diversity: int = 1          # distinct sensitive values per equivalence class (1: not checked)
    suppression_limit: float = 0.05
    on_violation: Literal["refuse", "generalize"] = "generalize"
    risk_threshold: float = 0.2   # records with prosecutor risk above this count as at risk


def age_hierarchy(ages: Sequence[int | str]) -> Hierarchy:
    """exact → 5-year → 10-year → 20-year band → '*'. Ages ≥ 90 share one band ("90+") above
    exact (release them already capped, as HIPAA Safe Harbor requires); a non-numeric value
    ("90+", "unknown") stays itself until '*'."""
    def band(age: int, width: int) -> str:
        low = age // width * width
        return "90+" if age >= 90 else f"{low}-{low + width - 1}"

    rows = []
    for value in sorted({str(a) for a in ages}):
        if value.isdigit():
            age = int(value)
            rows.append([value, band(age, 5), band(age, 10), band(age, 20), "*"])
        else:
            rows.append([value, value, value, value, "*"])
    return Hierarchy.from_rows(rows)


def suppression_hierarchy(values: Sequence[str]) -> Hierarchy:
    return Hierarchy.from_rows([[v, "*"] for v in sorted(set(values))])


def _classes(table: list[tuple[str, ...]]) -> np.ndarray:
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for row in table:
        counts[row] += 1
    return np.array(list(counts.values()), dtype=np.int64)


def _diversity(table: list[tuple[str, ...]], sensitive: Sequence[str]) -> dict[tuple[str, ...], int]:
    values: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for row, value in zip(table, sensitive):
        values[row].add(value)
    return {row: len(v) for row, v in values.items()}


def check_release(rows: list[dict[str, Any]], quasi_identifiers: dict[str, Hierarchy], policy: ReleasePolicy,
                  sensitive: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows to release (possibly generalised, outliers removed) and the risk report;
    ReleaseRefused (with the report) when the policy cannot be met."""
    names = list(quasi_identifiers)
    table = [tuple(str(row[name]) for name in names) for row in rows]
    labels = [str(row[sensitive]) for row in rows] if sensitive else []
    before = Risk.of(_classes(table), policy.risk_threshold) if rows else Risk.of(np.array([]), 1)
    report: dict[str, Any] = {"policy": asdict(policy), "quasiIdentifiers": names, "sensitive": sensitive,
                              "records": len(rows), "before": asdict(before)}
    l_before = min(_diversity(table, labels).values()) if labels else None
    if rows and before.smallest_class >= policy.k and (not labels or l_before >= policy.l_diversity):
        report.update(decision="released as is", generalization=dict.fromkeys(names, 0), suppressed=0,
                      after=asdict(before), kAchieved=before.smallest_class, lAchieved=l_before)
        return rows, report
    if policy.on_violation == "refuse" or not rows:
        report.update(decision="refused", kAchieved=before.smallest_class, lAchieved=l_before)
        raise ReleaseRefused(f"release violates k={policy.k}" + (f", l={policy.l_diversity}" if labels else "")
                             + f": smallest class {before.smallest_class}", report)
    try:
        result = Anonymizer(table, list(quasi_identifiers.values())).anonymize(
            policy.k, policy.suppression_limit, policy.risk_threshold)
    except ValueError as exc:
        report.update(decision="refused", reason=str(exc))
        raise ReleaseRefused(str(exc), report) from None
    suppressed = set(result.suppressed)
    if labels:  # classes that are k-anonymous but not ℓ-diverse go too, within the same limit
        diversity = _diversity([result.generalized[i] for i in range(len(rows)) if i not in suppressed],
                               [labels[i] for i in range(len(rows)) if i not in suppressed])
        suppressed |= {i for i in range(len(rows)) if i not in suppressed
                       and diversity[result.generalized[i]] < policy.l_diversity}
        if len(suppressed) > policy.suppression_limit * len(rows):
            report.update(decision="refused", reason=f"l={policy.l_diversity} needs more suppression than allowed")
            raise ReleaseRefused(report["reason"], report)
    kept = [i for i in range(len(rows)) if i not in suppressed]
    released = [dict(rows[i], **dict(zip(names, result.generalized[i]))) for i in kept]
    generalized = [result.generalized[i] for i in kept]
    after = Risk.of(_classes(generalized), policy.risk_threshold)
    report.update(decision="generalized", generalization=dict(zip(names, result.node)), suppressed=len(suppressed),
                  after=asdict(after), kAchieved=after.smallest_class, discernibility=result.discernibility,
                  lAchieved=min(_diversity(generalized, [labels[i] for i in kept]).values()) if labels else None)
    return released, report
