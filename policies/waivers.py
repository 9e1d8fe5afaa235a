"""`medplat:waivers` honoured when the pack runs under the Pulumi CLI.

The CLI hands a policy pack its stack's configuration in the `PULUMI_CONFIG` environment
variable (JSON: key -> string, structured values JSON-encoded; see pulumi's
sdk/go/common/resource/plugin/analyzer_plugin.go, constructEnv). The pack reads the same
`medplat:waivers` the offline gate reads and wraps every policy: a violation that a valid,
unexpired waiver names is not reported as mandatory; it is re-reported, never silently, by an
advisory policy `medplat-waived` with the waiver's reason, approver and expiry.
"""
from __future__ import annotations

import datetime
import fnmatch
import json
import os
from typing import Any

from pulumi_policy import (
    EnforcementLevel, ResourceValidationPolicy, Severity, StackValidationPolicy,
)

WAIVED_POLICY = "medplat-waived"
CONFIG_KEY = "medplat:waivers"


def waivers_from_env(environ=os.environ) -> list[Any]:
    """The stack's waivers from PULUMI_CONFIG, validated by medplat's config schema."""
    from medplat.config import Waiver

    raw = json.loads(environ.get("PULUMI_CONFIG") or "{}").get(CONFIG_KEY)
    if raw is None:
        return []
    items = json.loads(raw) if isinstance(raw, str) else raw
    return [Waiver.model_validate(item) for item in items]


def _match(waivers, policy: str, urn: str, name: str, today: datetime.date):
    for waiver in waivers:
        if waiver.policy == policy and waiver.in_force(today) and (
                fnmatch.fnmatchcase(urn, waiver.resource) or fnmatch.fnmatchcase(name, waiver.resource)):
            return waiver
    return None


def _name_of(urn: str) -> str:
    return urn.rsplit("::", 1)[-1] if urn else ""


def honour(policies, waivers, today: datetime.date | None = None) -> list:
    """The policies, wrapped so waived violations move to the advisory `medplat-waived` policies."""
    if not waivers:
        return list(policies)
    today = today or datetime.date.today()
    stash: list[tuple[str, str, str, Any]] = []  # (urn, policy, message, waiver)

    def wrap(policy):
        def validate(args, report):
            def filtered(message, urn=None):
                target = urn or getattr(args, "urn", "") or ""
                name = getattr(args, "name", None) if target == getattr(args, "urn", None) else _name_of(target)
                waiver = _match(waivers, policy.name, target, name or _name_of(target), today)
                if waiver is None:
                    report(message, urn)
                else:
                    stash.append((target, policy.name, message, waiver))
            return policy.validate(args, filtered)
        kind = StackValidationPolicy if isinstance(policy, StackValidationPolicy) else ResourceValidationPolicy
        return kind(name=policy.name, description=policy.description, validate=validate,
                    enforcement_level=policy.enforcement_level, severity=policy.severity,
                    framework=policy.framework, tags=policy.tags, remediation_steps=policy.remediation_steps)

    def line(entry) -> str:
        _urn, name, message, waiver = entry
        return (f"WAIVED {name}: {message} — accepted by {waiver.approver} until {waiver.expires.isoformat()}: "
                f"{waiver.reason}")

    def report_resource(args, report):
        for entry in [e for e in stash if e[0] == args.urn]:
            stash.remove(entry)
            report(line(entry))

    def report_stack(args, report):
        while stash:
            entry = stash.pop(0)
            report(line(entry), entry[0] or None)

    common = {"enforcement_level": EnforcementLevel.ADVISORY, "severity": Severity.LOW,
              "description": "Violations accepted by a medplat:waivers entry (reason, approver, expiry shown)."}
    return [wrap(p) for p in policies] + [
        ResourceValidationPolicy(name=WAIVED_POLICY, validate=report_resource, **common),
        StackValidationPolicy(name=f"{WAIVED_POLICY}-stack", validate=report_stack, **common)]
