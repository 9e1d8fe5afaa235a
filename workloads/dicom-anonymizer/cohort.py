"""Cohort k-anonymity for DICOM: one record per patient, quasi-identifiers as they will appear
in the output (read from a de-identified copy of each patient's first header), generalized
with built-in hierarchies; patients in classes smaller than k are suppressed (quarantined)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread

from medplat.privacy.kanon import Anonymizer, Hierarchy

STAR = "*"


def _age_years(value: str) -> int | None:
    text = value.strip().upper()
    if len(text) == 4 and text[:3].isdigit():
        number, unit = int(text[:3]), text[3]
        return {"Y": number, "M": number // 12, "W": number // 52, "D": number // 365}.get(unit)
    return None


def _band(value: float, width: float) -> str:
    return f"{(value // width) * width:g}"


def _levels(keyword: str, raw: str) -> list[str]:
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


@dataclass
class CohortPlan:
    quasi_identifiers: list[str]
    node: tuple[int, ...]
    values: dict[str, dict[str, str]]  # patient id -> keyword -> generalized value
    suppressed: dict[str, str]
    result: Any = field(repr=False, default=None)

    def summary(self) -> dict[str, Any]:
        r = self.result
        if r is None:
            return {"quasiIdentifiers": self.quasi_identifiers, "kAchieved": 0,
                    "suppressedPatients": len(self.suppressed), "note": next(iter(self.suppressed.values()), "")}
        return {"quasiIdentifiers": self.quasi_identifiers, "node": list(self.node), "kAchieved": r.k_achieved,
                "patients": r.before.records, "suppressedPatients": len(self.suppressed),
                "discernibility": r.discernibility, "precisionLoss": r.precision_loss,
                "riskBefore": r.before.__dict__, "riskAfter": r.after.__dict__}


def read_quasi_identifiers(paths: list[Path], policy, keys=None) -> dict[str, dict[str, str]]:
    """Per patient, the quasi-identifiers of its first readable file, after de-identification."""
    from medplat.workloads.dicom_anonymizer.deid import Deidentifier, Keys
    from medplat.workloads.dicom_anonymizer.profile import load_profile

    keys = keys or Keys(b"\0" * 32, b"\0" * 32)
    patients: dict[str, dict[str, str]] = {}
    for path in paths:
        try:
            ds = dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            continue
        patient = str(ds.get("PatientID", "") or "")
        if not patient or patient in patients or "SOPClassUID" not in ds:
            continue
        Deidentifier(load_profile(), policy, keys).apply(ds)
        patients[patient] = {kw: str(ds.get(kw, "") or "") for kw in policy.k_anonymity.quasi_identifiers}
    return patients


def plan_cohort(patients: dict[str, dict[str, str]], policy) -> CohortPlan | None:
    settings = policy.k_anonymity
    if not patients or not settings.quasi_identifiers:
        return None
    ids = sorted(patients)
    qis = settings.quasi_identifiers
    rows = [[patients[p][kw] for kw in qis] for p in ids]
    hierarchies = []
    for column, kw in enumerate(qis):
        hierarchies.append(Hierarchy({row[column]: _levels(kw, row[column]) for row in rows}))
    try:
        result = Anonymizer(rows, hierarchies).anonymize(settings.k, settings.suppression_limit)
    except ValueError:
        # Not even full generalization meets k within the limit (a cohort smaller than k):
        # every patient is suppressed rather than exported with too little protection.
        reason = f"k-anonymity: the cohort of {len(ids)} patients cannot reach k={settings.k}"
        return CohortPlan(qis, tuple(h.height for h in hierarchies), {}, {p: reason for p in ids})
    suppressed = {ids[i]: f"k-anonymity: suppressed (class smaller than k={settings.k})" for i in result.suppressed}
    values = {ids[i]: dict(zip(qis, result.generalized[i])) for i in range(len(ids))}
    return CohortPlan(qis, result.node, values, suppressed, result)


def generalize(ds, plan: CohortPlan, patient_id: str) -> None:
    """Write the patient's generalized quasi-identifiers ('*' empties the attribute)."""
    for keyword, value in plan.values.get(patient_id, {}).items():
        if keyword in ds:
            ds.data_element(keyword).value = "" if value == STAR else value
