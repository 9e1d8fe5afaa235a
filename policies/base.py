"""Policy metadata and the two policy kinds medplat uses.

Severity, enforcement, rationale and remediation live with each policy (one file each);
the controls a policy evidences come from `compliance/mappings/policies.yaml`, so the
mapping stays data that auditors can review apart from code.
"""
from __future__ import annotations

from dataclasses import dataclass

from pulumi_policy import (
    EnforcementLevel, PolicyComplianceFramework, ReportViolation, ResourceValidationArgs,
    ResourceValidationPolicy, Severity, StackValidationArgs, StackValidationPolicy,
)

from medplat.compliance.controls import policy_controls

FRAMEWORK = PolicyComplianceFramework(
    name="medplat", version="1", specification="MDR Annex I 17 / GDPR / NIS2 Art. 21 / ISO/IEC 27001:2022 Annex A")


@dataclass(frozen=True)
class Meta:
    id: str
    description: str
    severity: Severity
    rationale: str
    remediation: str
    enforcement: EnforcementLevel = EnforcementLevel.MANDATORY
    resource_types: tuple[str, ...] = ()  # empty: every type (the validator filters itself)


def controls_for(policy_id: str) -> list[str]:
    controls = policy_controls().get(policy_id)
    if not controls:
        raise LookupError(f"policy {policy_id!r} maps to no control in compliance/mappings/policies.yaml")
    return controls


class MedplatResourcePolicy(ResourceValidationPolicy):
    def __init__(self, meta: Meta, check) -> None:
        self.meta = meta
        self.controls = controls_for(meta.id)

        def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
            if meta.resource_types and args.resource_type not in meta.resource_types:
                return
            check(args, report)

        super().__init__(name=meta.id, description=meta.description, validate=validate,
                         enforcement_level=meta.enforcement, severity=meta.severity, framework=FRAMEWORK,
                         tags=list(self.controls), remediation_steps=meta.remediation)


class MedplatStackPolicy(StackValidationPolicy):
    def __init__(self, meta: Meta, check) -> None:
        self.meta = meta
        self.controls = controls_for(meta.id)

        def validate(args: StackValidationArgs, report: ReportViolation) -> None:
            check(args, report)

        super().__init__(name=meta.id, description=meta.description, validate=validate,
                         enforcement_level=meta.enforcement, severity=meta.severity, framework=FRAMEWORK,
                         tags=list(self.controls), remediation_steps=meta.remediation)
