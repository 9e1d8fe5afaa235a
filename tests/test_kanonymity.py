"""k-anonymity engine: optimum on a small table worked by hand, and UCI Adult at k = 5."""
from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest

from medplat.privacy.kanon import Anonymizer, Hierarchy

# The shared data folder sits beside the checkout (/work/shared), found upwards from a worktree too.
ADULT = next(p / "shared" / "data" for p in Path(__file__).resolve().parents
             if (p / "shared" / "data").is_dir()) / "adult"
QIS = ["sex", "age", "race", "marital-status", "education", "native-country", "workclass", "occupation"]


def _brute_force(anonymizer, k, limit, heights):
    """The least discernibility over every node of the lattice that meets k within the limit."""
    candidates = []
    for node in itertools.product(*(range(h + 1) for h in heights)):
        loss, suppressed = anonymizer._loss(node, k)
        if len(suppressed) <= limit:
            candidates.append((loss, node))
    return min(candidates)


def test_small_table_reaches_the_optimum_found_by_brute_force():
    ages = (31, 33, 34, 36, 52, 58, 41, 44, 45, 47)
    rows = [[sex, str(age)] for sex, age in zip("MMFFMFMFMF", ages)]
    age = Hierarchy.from_rows([[str(a), f"{a // 10 * 10}s", "<50" if a < 50 else ">=50", "*"] for a in ages])
    sex = Hierarchy.from_rows([["M", "*"], ["F", "*"]])
    anonymizer = Anonymizer(rows, [sex, age])
    for k, limit in ((2, 0.0), (2, 0.1), (3, 0.2), (4, 0.0)):
        result = anonymizer.anonymize(k, limit)
        loss, _node = _brute_force(anonymizer, k, int(limit * len(rows)), (1, 3))
        assert result.discernibility == loss, (k, limit, result.node)
        assert len(result.suppressed) <= int(limit * len(rows)) and result.k_achieved >= k
    relaxed = anonymizer.anonymize(2, 0.1)
    assert relaxed.before.prosecutor_max == 1.0 and relaxed.after.prosecutor_max <= 0.5


def test_hierarchies_must_cover_every_value():
    with pytest.raises(ValueError, match="without a hierarchy entry"):
        Anonymizer([["x"]], [Hierarchy.from_rows([["y", "*"]])])


def adult():
    rows = list(csv.reader(open(ADULT / "adult.csv"), delimiter=";"))
    header, body = rows[0], rows[1:]
    index = [header.index(q) for q in QIS]
    hierarchies = [Hierarchy.from_rows(list(csv.reader(open(ADULT / f"adult_hierarchy_{q}.csv"), delimiter=";")))
                   for q in QIS]
    return [[row[i] for i in index] for row in body], hierarchies


def test_adult_k5_is_reached_with_less_risk():
    rows, hierarchies = adult()
    result = Anonymizer(rows, hierarchies).anonymize(5, 0.0)
    assert result.k_achieved >= 5 and result.suppressed == []
    assert result.before.records == 30162 and result.before.prosecutor_max == 1.0
    assert result.after.prosecutor_max <= 0.2 and result.after.records_at_risk == 0.0
    assert result.checked < result.lattice_size
