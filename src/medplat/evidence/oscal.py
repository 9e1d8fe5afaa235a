"""An OSCAL assessment-results document, built and validated with compliance-trestle's models."""
from __future__ import annotations

import json
import uuid
from typing import Any

from trestle.oscal import OSCAL_VERSION
from trestle.oscal.assessment_results import AssessmentResults, ImportAp, Result
from trestle.oscal.common import (
    ControlSelection, Finding, FindingTarget, IncludeAll, Metadata, ObjectiveStatus, Observation, Property,
    RelatedObservation, ReviewedControls, SubjectReference,
)

from medplat import __version__

NAMESPACE = uuid.UUID("0b3a7c52-5b8e-4c8e-8d39-5f1f0a6e2c71")
STATE = {"pass": "satisfied", "waived": "satisfied", "fail": "not-satisfied", "not-covered": "not-satisfied",
         "not-evaluated": "not-satisfied"}
# OSCAL's objective-status reason: pass | fail | other (a token); medplat's own status is a property.
REASON = {"pass": "pass", "fail": "fail"}


def _observation(row: dict[str, Any], moment, label: str) -> Observation:
    """What was checked for one control: every evaluated resource with its result."""
    subjects = [SubjectReference(
        subject_uuid=_uuid("subject", r["stack"], r["urn"]), type="resource", title=r["urn"][:250] or "-",
        props=[Property(name="medplat-result", value=r["status"])],
    ) for r in row["resources"]]  # which checks passed or failed per resource: control-matrix.json
    checks = ", ".join(f"{c['id']} ({c['status']}, {c['evaluated']} evaluated)" for c in row["checks"]) or "none"
    return Observation(
        uuid=_uuid("observation", row["control"], label, moment.isoformat()), title=f"Automated checks for {row['control']}",
        description=f"Checks: {checks}. {row['reason']}.", methods=["TEST"], types=["control-objective"],
        subjects=subjects or None, collected=moment,
        props=[Property(name="medplat-evaluated-resources", value=str(len(row["resources"])))],
    )


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "|".join(parts)))


def assessment_results(rows: list[dict[str, Any]], stacks: list[dict[str, Any]], moment, label: str) -> str:
    return serialize(build_result(rows, stacks, moment, label), stacks, moment, label)


def build_result(rows: list[dict[str, Any]], stacks: list[dict[str, Any]], moment, label: str) -> Result:
    """One OSCAL result: a finding per technical control, an observation naming what was checked."""
    findings, observations = [], []
    for row in rows:
        if row["status"] == "manual":
            continue  # organizational controls are evidenced by documents, listed in the matrix
        observation = _observation(row, moment, label)
        observations.append(observation)
        target = FindingTarget(
            type="objective-id", target_id=row["control"].lower(),
            status=ObjectiveStatus(state=STATE[row["status"]], reason=REASON.get(row["status"], "other"),
                                   remarks=row["reason"]),
        )
        findings.append(Finding(
            uuid=_uuid("finding", row["control"], label, moment.isoformat()),
            title=f"{row['control']}: {row['title']}"[:250],
            description=f"{len([c for c in row['checks'] if c['evaluated']])} of {len(row['checks'])} automated "
                        f"check(s) evaluated {len(row['resources'])} resource(s); status {row['status']} ({label}).",
            target=target, related_observations=[RelatedObservation(observation_uuid=observation.uuid)],
            props=[Property(name="medplat-status", value=row["status"]),
                   Property(name="medplat-evidence-label", value=label)],
        ))
    stack_names = ", ".join(s["stack"] for s in stacks)
    return Result(
        uuid=_uuid("result", stack_names, label, moment.isoformat()), title=f"medplat automated assessment ({label})",
        description=f"Policy and checkov results for stacks {stack_names}; {label} infrastructure.",
        start=moment, end=moment,
        reviewed_controls=ReviewedControls(control_selections=[ControlSelection(include_all=IncludeAll())]),
        observations=observations or None, findings=findings or None,
    )


def serialize(result: Result, stacks: list[dict[str, Any]], moment, label: str,
              previous: list[Result] | None = None) -> str:
    """An assessment-results document holding `previous` results (oldest first) and `result`."""
    stack_names = ", ".join(s["stack"] for s in stacks)
    document = AssessmentResults(
        uuid=_uuid("assessment-results", stack_names, label),
        metadata=Metadata(title=f"medplat assessment results: {stack_names}", last_modified=moment,
                          version=__version__, oscal_version=OSCAL_VERSION),
        import_ap=ImportAp(href="#medplat-automated-assessment-plan"),
        results=[*(previous or []), result],
    )
    text = document.oscal_serialize_json(pretty=True)
    # Validate by parsing back through the same models (raises on any schema violation).
    AssessmentResults.parse_obj(json.loads(text)["assessment-results"])
    return text + ("\n" if not text.endswith("\n") else "")
