"""Release-level privacy: a table whose quasi-identifiers violate k (or ℓ) is refused or
generalised, with a risk report; checked on a hand-made cohort and on UCI Adult (ARX's
hierarchies, /work/shared/data/adult)."""
from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from medplat.deid.release import ReleasePolicy, ReleaseRefused, age_hierarchy, check_release, suppression_hierarchy
from medplat.privacy.kanon import Hierarchy

ADULT = next(p / "shared" / "data" for p in Path(__file__).resolve().parents
             if (p / "shared" / "data").is_dir()) / "adult"


def cohort():
    ages = [34, 35, 36, 37, 38, 61, 62, 63, 64, 93, 41, 42, 43, 44, 45, 46]
    return [{"patient": f"P{i}", "age": a, "sex": "F" if i % 2 else "M", "code": ["I10", "E11", "J45"][i % 3]}
            for i, a in enumerate(ages)]


def qis(rows):
    return {"age": age_hierarchy([r["age"] for r in rows]), "sex": suppression_hierarchy([r["sex"] for r in rows])}


def test_a_table_violating_k_is_refused_with_the_risk_report():
    rows = cohort()
    with pytest.raises(ReleaseRefused) as refused:
        check_release(rows, qis(rows), ReleasePolicy(k=3, on_violation="refuse"))
    report = refused.value.report
    assert report["decision"] == "refused" and report["kAchieved"] == 1
    assert report["before"]["prosecutor_max"] == 1.0


def test_a_table_violating_k_is_generalised_until_it_complies():
    rows = cohort()
    released, report = check_release(rows, qis(rows), ReleasePolicy(k=3, suppression_limit=0.1))
    classes = Counter((r["age"], r["sex"]) for r in released)
    assert min(classes.values()) == report["kAchieved"] >= 3
    assert report["decision"] == "generalized" and report["suppressed"] <= 1
    assert report["after"]["prosecutor_max"] <= 1 / 3
    assert all(r["age"] != "93" for r in released), "the 93-year-old is generalised or suppressed"
    assert {r["patient"] for r in released} <= {r["patient"] for r in rows}


def test_l_diversity_removes_classes_with_one_sensitive_value():
    rows = [{"age": 30 + i % 5, "sex": "F", "code": "C50"} for i in range(10)] + \
           [{"age": 60 + i % 5, "sex": "M", "code": c} for i, c in enumerate(["I10", "E11"] * 5)]
    released, report = check_release(rows, qis(rows), ReleasePolicy(k=5, l_diversity=2, suppression_limit=0.5),
                                     sensitive="code")
    assert report["lAchieved"] >= 2
    assert all(r["code"] != "C50" for r in released), "a class where everyone has C50 discloses it"
    with pytest.raises(ReleaseRefused, match="l=2"):
        check_release(rows, qis(rows), ReleasePolicy(k=5, l_diversity=2, suppression_limit=0.1), sensitive="code")


def test_a_compliant_table_is_released_unchanged():
    rows = [{"age": 40, "sex": "F"}] * 5 + [{"age": 50, "sex": "M"}] * 5
    released, report = check_release(rows, qis(rows), ReleasePolicy(k=5))
    assert released == rows and report["decision"] == "released as is"


def _hierarchy(name):
    with open(ADULT / f"adult_hierarchy_{name}.csv", newline="") as handle:
        return Hierarchy.from_rows(list(csv.reader(handle, delimiter=";")))


def test_uci_adult_k5_l2_with_arx_hierarchies():
    with open(ADULT / "adult.csv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))[:5000]
    quasi = {name: _hierarchy(name) for name in ("age", "sex", "race", "marital-status")}
    released, report = check_release(rows, quasi, ReleasePolicy(k=5, l_diversity=2, suppression_limit=0.05),
                                     sensitive="occupation")
    groups = defaultdict(set)
    for row in released:
        groups[tuple(row[q] for q in quasi)].add(row["occupation"])
    sizes = Counter(tuple(row[q] for q in quasi) for row in released)
    assert min(sizes.values()) >= 5 and min(len(v) for v in groups.values()) >= 2
    assert report["suppressed"] <= 250 and len(released) == 5000 - report["suppressed"]
    assert report["before"]["prosecutor_max"] == 1.0 and report["after"]["prosecutor_max"] <= 0.2
