"""k-anonymity over what is released, cumulative per project.

One record per patient (its pseudonym), with the quasi-identifiers as they appear in the
de-identified output. Computed after quarantine, pixel checks and the leak scan, so only
patients that would really be released count.

Hold-back rule (persisted cohort state, one JSON file per policy under the state folder):
- The generalization (one level per quasi-identifier) is chosen once, by the k-anonymity
  engine's optimum over the first cohort that can reach k within the suppression limit, and
  then fixed for the project, so every release uses the same equivalence classes.
- A patient is released only when its equivalence class, counting the patients already
  released, has at least k patients and, if the policy names a sensitive attribute, at least
  l distinct values of it. A class is released whole or not at all.
- Everything else is held back: its de-identified files wait in the state folder (outside
  any released tree) and are reconsidered on every later run; nothing is released while the
  project has fewer than k patients.
The report gives k (and l) of the cumulative released set and its re-identification risk.
"""
from __future__ import annotations

import fcntl
import json
import os
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medplat.privacy.kanon import Anonymizer, Hierarchy, Risk

STAR = "*"


def _age_years(value: str) -> int | None:
    text = value.strip().upper()
    if len(text) == 4 and text[:3].isdigit():
        number, unit = int(text[:3]), text[3]
        return {"Y": number, "M": number // 12, "W": number // 52, "D": number // 365}.get(unit)
    return None


def _band(value: float, width: float) -> str:
    return f"{(value // width) * width:g}"


def levels(keyword: str, raw: str) -> list[str]:
    """Generalization levels of one value, most specific first, '*' last (fixed height per QI)."""
    if keyword == "PatientAge":
        years = _age_years(raw)
        if years is None:
            return [STAR] * 5
        return [f"{years:03d}Y", f"{years // 5 * 5:03d}Y", f"{years // 10 * 10:03d}Y", f"{years // 20 * 20:03d}Y", STAR]
    if keyword in ("PatientSize", "PatientWeight"):
        try:
            number = float(raw)
        except ValueError:
            return [STAR] * 4
        widths = (0.05, 0.1, 0.2) if keyword == "PatientSize" else (5, 10, 20)
        return [_band(number, widths[0]), _band(number, widths[1]), _band(number, widths[2]), STAR]
    if keyword == "StudyDate":
        if len(raw) != 8 or not raw.isdigit():
            return [STAR] * 4
        return [raw, raw[:6] + "01", raw[:4] + "0101", STAR]
    return [raw or STAR, STAR]


def generalized(keywords: list[str], values: dict[str, str], node: list[int]) -> dict[str, str]:
    return {kw: levels(kw, values.get(kw, ""))[level] for kw, level in zip(keywords, node)}


@dataclass
class Candidate:
    patient: str  # pseudonym
    values: dict[str, str]  # quasi-identifiers (and the sensitive attribute) as de-identified
    files: list[str] = field(default_factory=list)  # staged files, relative to the state folder


@dataclass
class Decision:
    release: list[Candidate]
    hold: list[Candidate]
    summary: dict[str, Any]


class CohortState:
    """The project's cohort under one policy: generalization node, released classes, held patients."""

    def __init__(self, folder: Path, policy) -> None:
        self.folder, self.policy = folder, policy
        self.settings = policy.k_anonymity
        self.file = folder / f"{policy.name}.cohort.json"
        self.held_folder = folder / f"{policy.name}.held"
        self.data: dict[str, Any] = {"node": None, "released": {}, "held": {}}

    @contextmanager
    def locked(self):
        """Exclusive for the whole run: two runs (or shards) never decide on the same state at once."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.folder / f".{self.policy.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.file.exists():
                self.data = json.loads(self.file.read_text(encoding="utf-8"))
            yield self

    def save(self) -> None:
        partial = self.file.with_name(self.file.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=1, sort_keys=True), encoding="utf-8")
        os.chmod(partial, 0o600)
        partial.replace(self.file)

    def held(self) -> list[Candidate]:
        return [Candidate(p, h["values"], h["files"]) for p, h in sorted(self.data["held"].items())]

    def decide(self, new: list[Candidate]) -> Decision:
        qis, sensitive = self.settings.quasi_identifiers, self.settings.sensitive_attribute
        merged: dict[str, Candidate] = {c.patient: c for c in self.held()}
        for candidate in new:
            if candidate.patient in self.data["released"]:
                # Already released: its class is fixed, later files of the patient follow it.
                merged[candidate.patient] = candidate
                continue
            known = merged.get(candidate.patient)
            if known:
                known.files += candidate.files
            else:
                merged[candidate.patient] = candidate
        if self.data["node"] is None:
            self.data["node"] = self._choose_node([c for c in merged.values()
                                                   if c.patient not in self.data["released"]])
        if self.data["node"] is None:
            return Decision([], list(merged.values()), self.summary())
        node = self.data["node"]
        classes: dict[tuple, list[str]] = defaultdict(list)
        sensitive_values: dict[tuple, set[str]] = defaultdict(set)
        for patient, record in self.data["released"].items():
            key = tuple(record["class"])
            classes[key].append(patient)
            sensitive_values[key].add(record.get("sensitive", ""))
        pending: dict[tuple, list[Candidate]] = defaultdict(list)
        release: list[Candidate] = []
        for candidate in merged.values():
            if candidate.patient in self.data["released"]:
                release.append(candidate)
                continue
            key = tuple(generalized(qis, candidate.values, node)[kw] for kw in qis)
            pending[key].append(candidate)
        hold: list[Candidate] = []
        for key, members in pending.items():
            size = len(classes[key]) + len(members)
            diverse = sensitive_values[key] | {m.values.get(sensitive, "") for m in members} if sensitive else set()
            if size >= self.settings.k and (not sensitive or len(diverse) >= self.settings.l_diversity):
                release += members
                for member in members:
                    self.data["released"][member.patient] = {"class": list(key),
                                                             "sensitive": member.values.get(sensitive, "")
                                                             if sensitive else ""}
            else:
                hold += members
        return Decision(release, hold, self.summary())

    def _choose_node(self, candidates: list[Candidate]) -> list[int] | None:
        qis = self.settings.quasi_identifiers
        if len(candidates) < self.settings.k:
            return None
        rows = [[c.values.get(kw, "") for kw in qis] for c in candidates]
        hierarchies = [Hierarchy({row[q]: levels(kw, row[q]) for row in rows}) for q, kw in enumerate(qis)]
        try:
            result = Anonymizer(rows, hierarchies).anonymize(self.settings.k, self.settings.suppression_limit)
        except ValueError:
            return None  # not even full generalization reaches k within the limit: wait for more patients
        return list(result.node)

    def summary(self) -> dict[str, Any]:
        """k, l and risk of the cumulative released set (what has left the site, not the input)."""
        released = self.data["released"]
        sizes = Counter(tuple(r["class"]) for r in released.values())
        diversity: dict[tuple, set[str]] = defaultdict(set)
        for record in released.values():
            diversity[tuple(record["class"])].add(record.get("sensitive", ""))
        risk = Risk.of(np.array(sorted(sizes.values()), dtype=np.int64), 1.0 / max(self.settings.k, 1))
        return {"quasiIdentifiers": self.settings.quasi_identifiers, "k": self.settings.k,
                "sensitiveAttribute": self.settings.sensitive_attribute,
                "node": self.data["node"], "releasedPatients": len(released), "heldPatients": len(self.data["held"]),
                "kAchieved": min(sizes.values()) if sizes else None,
                "lAchieved": min(len(v) for v in diversity.values()) if diversity and
                self.settings.sensitive_attribute else None,
                "risk": risk.__dict__}
