"""Run the CrossGuard pack offline against inventories (planned or deployed).

There is no official offline harness for pulumi-policy, so this builds the SDK's own
`ResourceValidationArgs` / `StackValidationArgs` / `PolicyResource` objects from an
inventory and calls each policy's `validate` exactly as the analyzer would: resource
policies per resource, stack policies once with the whole graph.
"""
from __future__ import annotations

import asyncio
import datetime
import fnmatch
import inspect
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from pulumi_policy import (
    EnforcementLevel, PolicyCustomTimeouts, PolicyProviderResource, PolicyResource, PolicyResourceOptions,
    ResourceValidationArgs, StackValidationArgs, StackValidationPolicy,
)

from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.proxy import unknown_checking_proxy

from medplat.config import MAX_WAIVER_DAYS, Waiver

WAIVER_POLICY = "waiver-valid"


@dataclass
class Finding:
    policy: str
    source: str  # "crossguard" | "checkov" | "medplat"
    severity: str
    enforcement: str  # "mandatory" | "advisory"
    stack: str
    urn: str
    resource_type: str
    name: str
    message: str
    controls: list[str] = field(default_factory=list)
    status: str = "fail"  # "fail" | "waived"
    waiver: dict[str, Any] | None = None

    @property
    def blocking(self) -> bool:
        return self.status == "fail" and self.enforcement == "mandatory"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _options(parent: str | None) -> PolicyResourceOptions:
    return PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=None, aliases=[],
                                 custom_timeouts=PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=[],
                                 parent=parent)


def analyzer_props(props: dict[str, Any]):
    """Properties exactly as the analyzer hands them to policies: deserialized, then wrapped
    in the SDK's read-only proxies (Mapping/Sequence, not dict/list)."""
    return unknown_checking_proxy(deserialize_properties(props))


def policy_resources(inventory: dict[str, Any]) -> list[PolicyResource]:
    """The inventory's resources as the SDK's PolicyResource graph (parents, dependencies linked)."""
    rows = inventory["resources"]
    by_urn: dict[str, PolicyResource] = {}
    providers = {r["urn"]: r for r in rows if r["type"].startswith("pulumi:providers:")}
    for row in rows:
        provider_row = providers.get(row.get("provider") or "")
        provider = PolicyProviderResource(provider_row["type"], analyzer_props(provider_row["inputs"]),
                                          provider_row["urn"], provider_row["name"]) if provider_row else None
        by_urn[row["urn"]] = PolicyResource(row["type"], analyzer_props(row["inputs"]), row["urn"], row["name"],
                                            _options(row.get("parent")), provider, None, [], {})
    for row in rows:
        resource = by_urn[row["urn"]]
        resource.parent = by_urn.get(row.get("parent") or "")
        resource.dependencies = [by_urn[d] for d in row.get("dependencies", []) if d in by_urn]
        resource.property_dependencies = {
            prop: [by_urn[d] for d in deps if d in by_urn]
            for prop, deps in (row.get("propertyDependencies") or {}).items()
        }
    return [by_urn[row["urn"]] for row in rows]


def _call(validate, args, report) -> None:
    result = validate(args, report)
    if inspect.isawaitable(result):
        asyncio.run(_await(result))


async def _await(awaitable) -> None:
    await awaitable


@dataclass(frozen=True)
class Evaluation:
    """One check evaluated one resource (or subject): the evidence a verdict is built from."""
    policy: str
    source: str
    stack: str
    subject: str  # a URN, or a file / waiver name for checks that are not about a resource
    resource_type: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_pack(inventory: dict[str, Any], policies: Iterable, config: dict[str, Any] | None = None) -> list[Finding]:
    """Validate one inventory (or a union of inventories) with the given policies."""
    return evaluate_pack(inventory, policies, config)[0]


def evaluate_pack(inventory: dict[str, Any], policies: Iterable,
                  config: dict[str, Any] | None = None) -> tuple[list[Finding], list[Evaluation]]:
    """Findings, and every (policy, resource) pair the policies evaluated."""
    stack = inventory.get("stack") or "?"
    resources = policy_resources(inventory)
    by_urn = {r.urn: r for r in resources}
    custom = {row["urn"] for row in inventory["resources"] if row["custom"]}
    findings: list[Finding] = []
    evaluations: list[Evaluation] = []

    def finding(policy, urn: str | None, message: str) -> Finding:
        resource = by_urn.get(urn or "")
        level = policy.enforcement_level or EnforcementLevel.ADVISORY
        return Finding(
            policy=policy.name, source="crossguard",
            severity=(policy.severity.value if policy.severity else "medium"),
            enforcement=level.value, stack=_stack_of(urn) or stack, urn=urn or "",
            resource_type=resource.resource_type if resource else "", name=resource.name if resource else "",
            message=message, controls=list(getattr(policy, "controls", [])),
        )

    def evaluated(policy, urn: str) -> None:
        resource = by_urn.get(urn)
        evaluations.append(Evaluation(policy.name, "crossguard", _stack_of(urn) or stack, urn,
                                      resource.resource_type if resource else ""))

    for policy in policies:
        if policy.enforcement_level == EnforcementLevel.DISABLED:
            continue
        if isinstance(policy, StackValidationPolicy):
            args = StackValidationArgs(resources, config or {})
            _call(policy.validate, args, lambda message, urn=None, p=policy: findings.append(finding(p, urn, message)))
            for urn in policy.scope(resources) if hasattr(policy, "scope") else []:
                evaluated(policy, urn)
            continue
        for resource in resources:
            if resource.urn not in custom:
                continue
            if hasattr(policy, "evaluates") and policy.evaluates(resource.resource_type, resource.props):
                evaluated(policy, resource.urn)
            args = ResourceValidationArgs(resource.resource_type, resource.props, resource.urn, resource.name,
                                          resource.opts, resource.provider, config or {})
            _call(policy.validate, args,
                  lambda message, urn=None, p=policy, r=resource: findings.append(finding(p, urn or r.urn, message)))
    return findings, evaluations


def _stack_of(urn: str | None) -> str | None:
    if not urn or not urn.startswith("urn:pulumi:"):
        return None
    return urn.split("::", 1)[0].rsplit(":", 1)[-1]


def apply_waivers(findings: list[Finding], waivers: dict[str, list[Waiver]], today: datetime.date) -> list[Finding]:
    """Mark waived findings; expired waivers waive nothing and fail themselves."""
    extra: list[Finding] = []
    for stack, stack_waivers in waivers.items():
        for waiver in stack_waivers:
            record = {"policy": waiver.policy, "resource": waiver.resource, "reason": waiver.reason,
                      "approver": waiver.approver, "expires": waiver.expires.isoformat(), "stack": stack}
            expired = waiver.expires < today
            matched = [f for f in findings if f.stack == stack and f.policy == waiver.policy and f.status == "fail"
                       and (fnmatch.fnmatchcase(f.urn, waiver.resource) or fnmatch.fnmatchcase(f.name, waiver.resource))]
            if expired:
                extra.append(Finding(
                    policy=WAIVER_POLICY, source="medplat", severity="high", enforcement="mandatory", stack=stack,
                    urn="", resource_type="", name=waiver.resource,
                    message=f"waiver of {waiver.policy} for {waiver.resource} approved by {waiver.approver} "
                            f"expired on {waiver.expires.isoformat()}", controls=["ISO27001-A.8.32"], waiver=record))
                continue
            if waiver.too_long(today):
                extra.append(Finding(
                    policy=WAIVER_POLICY, source="medplat", severity="high", enforcement="mandatory", stack=stack,
                    urn="", resource_type="", name=waiver.resource,
                    message=f"waiver of {waiver.policy} for {waiver.resource} approved by {waiver.approver} runs until "
                            f"{waiver.expires.isoformat()}, more than {MAX_WAIVER_DAYS} days ahead: an accepted risk is "
                            "approved again at least yearly", controls=["ISO27001-A.8.32"], waiver=record))
                continue
            if not matched:
                extra.append(Finding(
                    policy=WAIVER_POLICY, source="medplat", severity="low", enforcement="advisory", stack=stack,
                    urn="", resource_type="", name=waiver.resource,
                    message=f"waiver of {waiver.policy} for {waiver.resource} matches no finding; remove it",
                    controls=["ISO27001-A.8.32"], waiver=record))
            for item in matched:
                item.status, item.waiver = "waived", record
    return findings + extra


def sort_findings(findings: list[Finding]) -> list[Finding]:
    order = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    return sorted(findings, key=lambda f: (not f.blocking, f.status, order.get(f.severity, 9), f.stack, f.policy,
                                           f.urn, f.message))
