"""An OSCAL assessment-results document, built and validated with compliance-trestle's models."""
from __future__ import annotations

import json
import uuid
from typing import Any

from trestle.oscal import OSCAL_VERSION
from trestle.oscal.assessment_results import AssessmentResults, ImportAp, Result
from trestle.oscal.common import (
    ControlSelection, Finding, FindingTarget, IncludeAll, Metadata, ObjectiveStatus, Property, ReviewedControls,
)

from medplat import __version__

NAMESPACE = uuid.UUID("0b3a7c52-5b8e-4c8e-8d39-5f1f0a6e2c71")
STATE = {"pass": "satisfied", "waived": "satisfied", "fail": "not-satisfied", "not-covered": "not-satisfied"}


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "|".join(parts)))


def assessment_results(rows: list[dict[str, Any]], stacks: list[dict[str, Any]], moment, label: str) -> str:
    findings = []
    for row in rows:
        if row["status"] == "manual":
            continue  # organizational controls are evidenced by documents, listed in the matrix
        target = FindingTarget(
            type="objective-id", target_id=row["control"].lower(),
            status=ObjectiveStatus(state=STATE[row["status"]], reason=row["status"] if row["status"] != "pass" else None),
        )
        findings.append(Finding(
            uuid=_uuid("finding", row["control"]), title=f"{row['control']}: {row['title']}"[:250],
            description=f"{len(row['checks'])} automated check(s) over {len(row['resources'])} resource(s); "
                        f"status {row['status']} ({label}).",
            target=target,
            props=[Property(name="medplat-status", value=row["status"]),
                   Property(name="medplat-evidence-label", value=label)],
        ))
    stack_names = ", ".join(s["stack"] for s in stacks)
    result = Result(
        uuid=_uuid("result", stack_names, label), title=f"medplat automated assessment ({label})",
        description=f"Policy and checkov results for stacks {stack_names}; {label} infrastructure.",
        start=moment, end=moment,
        reviewed_controls=ReviewedControls(control_selections=[ControlSelection(include_all=IncludeAll())]),
        findings=findings or None,
    )
    document = AssessmentResults(
        uuid=_uuid("assessment-results", stack_names, label),
        metadata=Metadata(title=f"medplat assessment results: {stack_names}", last_modified=moment,
                          version=__version__, oscal_version=OSCAL_VERSION),
        import_ap=ImportAp(href="#medplat-automated-assessment-plan"),
        results=[result],
    )
    text = document.oscal_serialize_json(pretty=True)
    # Validate by parsing back through the same models (raises on any schema violation).
    AssessmentResults.parse_obj(json.loads(text)["assessment-results"])
    return text + ("\n" if not text.endswith("\n") else "")
