"""k-anonymity over any table: generalization hierarchies, record suppression, and a search
of the generalization lattice with predictive tagging as in ARX's Flash (monotonicity: below
a node that is not k-anonymous within the suppression limit, no node is). The result is the
optimum: the anonymous node with the least discernibility over the whole lattice.
Risk before and after: prosecutor, journalist and marketer re-identification risk, with the
data set taken as its own population (no population table is known), so journalist risk
equals prosecutor risk.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Hierarchy:
    """levels[value] = [value, level-1 generalization, ..., '*']; all rows have the same height."""

    levels: dict[str, list[str]]

    @property
    def height(self) -> int:
        return len(next(iter(self.levels.values()))) - 1

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[str]]) -> Hierarchy:
        levels = {row[0]: list(row) for row in rows if row}
        heights = {len(v) for v in levels.values()}
        if len(heights) != 1:
            raise ValueError(f"hierarchy rows have different heights: {sorted(heights)}")
        return cls(levels)


@dataclass
class Risk:
    records: int
    classes: int
    smallest_class: int
    prosecutor_max: float
    prosecutor_avg: float
    journalist_max: float
    marketer: float
    records_at_risk: float  # share of records with risk above the threshold

    @classmethod
    def of(cls, sizes: np.ndarray, threshold: float) -> Risk:
        n = int(sizes.sum())
        if n == 0:
            return cls(0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
        classes = len(sizes)
        risky = float(sizes[(1.0 / sizes) > threshold].sum()) / n
        worst = round(1.0 / float(sizes.min()), 6)
        return cls(n, classes, int(sizes.min()), worst, round(classes / n, 6), worst, round(classes / n, 6),
                   round(risky, 6))


@dataclass
class Result:
    node: tuple[int, ...]
    k_achieved: int
    suppressed: list[int]
    discernibility: int
    precision_loss: float
    before: Risk
    after: Risk
    checked: int
    lattice_size: int
    seconds: float
    generalized: list[tuple[str, ...]] = field(repr=False, default_factory=list)


class Anonymizer:
    def __init__(self, rows: Sequence[Sequence[str]], hierarchies: Sequence[Hierarchy]) -> None:
        self.n, self.hierarchies = len(rows), list(hierarchies)
        self.heights = [h.height for h in self.hierarchies]
        # codes[q][level] = int code per row of column q generalized to `level`
        self.codes: list[list[np.ndarray]] = []
        self.labels: list[list[list[str]]] = []
        for q, hierarchy in enumerate(self.hierarchies):
            per_level, per_level_labels = [], []
            column = [row[q] for row in rows]
            missing = sorted({v for v in column if v not in hierarchy.levels})
            if missing:
                raise ValueError(f"quasi-identifier {q}: values without a hierarchy entry: {missing[:5]}")
            for level in range(hierarchy.height + 1):
                values = [hierarchy.levels[v][level] for v in column]
                uniques, inverse = np.unique(np.array(values, dtype=object), return_inverse=True)
                per_level.append(inverse.astype(np.int64))
                per_level_labels.append(list(uniques))
            self.codes.append(per_level)
            self.labels.append(per_level_labels)

    def _classes(self, node: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        key = np.zeros(self.n, dtype=np.int64)
        for q, level in enumerate(node):
            key = key * (len(self.labels[q][level]) + 1) + self.codes[q][level]
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        return inverse, counts

    def anonymize(self, k: int, suppression_limit: float, risk_threshold: float = 0.2) -> Result:
        started = time.perf_counter()
        limit = int(suppression_limit * self.n)
        # Top-down: below a node that is not anonymous nothing is (monotonicity of k-anonymity
        # with a suppression limit), so whole down-sets are tagged and never grouped. Every
        # anonymous node is evaluated: with suppression, the least loss need not sit on the
        # frontier of minimal anonymous nodes.
        lattice = sorted(itertools.product(*(range(h + 1) for h in self.heights)), key=lambda n: (-sum(n), n))
        not_anonymous: set[tuple[int, ...]] = set()
        best, best_key, checked = None, None, 0
        for node in lattice:
            if node in not_anonymous:
                continue
            checked += 1
            inverse, counts = self._classes(node)
            small = counts < k
            outliers = int(counts[small].sum())
            if outliers > limit:
                not_anonymous.update(itertools.product(*(range(level + 1) for level in node)))
                continue
            kept = counts[~small].astype(np.int64)
            key = (int((kept ** 2).sum()) + outliers * self.n, sum(node), node)
            if best_key is None or key < best_key:
                best, best_key = node, key
        if best is None:
            raise ValueError(f"no generalization reaches k={k} within the suppression limit")
        discernibility, suppressed = self._loss(best, k)
        inverse, counts = self._classes(best)
        keep = counts >= k
        after_sizes = counts[keep]
        _, before_counts = self._classes(tuple(0 for _ in self.heights))
        generalized = [tuple(self.labels[q][best[q]][self.codes[q][best[q]][i]] for q in range(len(best)))
                       for i in range(self.n)]
        precision = float(np.mean([level / h if h else 0 for level, h in zip(best, self.heights)]))
        return Result(node=best, k_achieved=int(after_sizes.min()) if len(after_sizes) else 0,
                      suppressed=suppressed, discernibility=discernibility, precision_loss=round(precision, 4),
                      before=Risk.of(before_counts, risk_threshold), after=Risk.of(after_sizes, risk_threshold),
                      checked=checked, lattice_size=len(lattice), seconds=round(time.perf_counter() - started, 3),
                      generalized=generalized)

    def _loss(self, node: tuple[int, ...], k: int) -> tuple[int, list[int]]:
        """Discernibility: sum of class sizes squared; each suppressed record counts |D|."""
        inverse, counts = self._classes(node)
        small = counts < k
        suppressed_rows = np.nonzero(small[inverse])[0]
        kept = counts[~small]
        return int((kept.astype(np.int64) ** 2).sum() + len(suppressed_rows) * self.n), suppressed_rows.tolist()
