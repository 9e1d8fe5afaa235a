"""Policy metadata and the two policy kinds medplat uses.

Severity, enforcement, rationale and remediation live with each policy (one file each);
the controls a policy evidences come from `compliance/mappings/policies.yaml`, so the
mapping stays data that auditors can review apart from code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

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
    # Which resources the policy evaluates (evidence: a verdict names what was checked).
    # Resource policies: applies(resource_type, props) -> bool (default: resource_types, or every
    # resource when that is empty); stack policies: scope(resources) -> [urn, ...].
    applies: Callable[[str, Any], bool] | None = None
    scope: Callable[[Any], Iterable[str]] | None = None


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
            if not self.evaluates(args.resource_type, args.props):
                return
            check(args, report)

        super().__init__(name=meta.id, description=meta.description, validate=validate,
                         enforcement_level=meta.enforcement, severity=meta.severity, framework=FRAMEWORK,
                         tags=list(self.controls), remediation_steps=meta.remediation)

    def evaluates(self, resource_type: str, props) -> bool:
        """Whether this policy inspects the resource (it is in the policy's scope)."""
        if self.meta.resource_types and resource_type not in self.meta.resource_types:
            return False
        return self.meta.applies(resource_type, props) if self.meta.applies else True


class MedplatStackPolicy(StackValidationPolicy):
    def __init__(self, meta: Meta, check) -> None:
        self.meta = meta
        self.controls = controls_for(meta.id)

        def validate(args: StackValidationArgs, report: ReportViolation) -> None:
            check(args, report)

        super().__init__(name=meta.id, description=meta.description, validate=validate,
                         enforcement_level=meta.enforcement, severity=meta.severity, framework=FRAMEWORK,
                         tags=list(self.controls), remediation_steps=meta.remediation)

    def scope(self, resources) -> list[str]:
        """URNs of the resources this policy evaluates in a stack."""
        if self.meta.scope is None:
            raise LookupError(f"stack policy {self.meta.id!r} declares no scope")
        return list(self.meta.scope(resources))
