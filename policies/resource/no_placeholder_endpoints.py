"""Workloads are configured with real endpoints, not the blueprint's placeholders."""
import fnmatch
import json
from functools import lru_cache
from importlib import resources
from urllib.parse import urlsplit

import yaml
from pulumi_policy import Severity

from medplat.policies.base import Meta, MedplatResourcePolicy
from medplat.policies.lib import WORKLOAD_KINDS, containers, has_pod, pod_spec

ECS_TASK = "aws:ecs/taskDefinition:TaskDefinition"
META = Meta(
    id="no-placeholder-endpoints",
    description="No workload setting points at a placeholder endpoint (an OIDC issuer, JWKS, Barbican or "
                "other URL on a reserved or blueprint-only host listed in compliance/placeholders.yaml).",
    severity=Severity.HIGH,
    rationale="A service configured with a placeholder identity provider or key manager cannot authenticate "
              "anyone or fetch its keys; evidence must not pass a configuration that cannot work.",
    remediation="Set the operator's real issuer / key-manager URLs in the workload spec's env.",
    resource_types=(*WORKLOAD_KINDS, ECS_TASK),
    applies=lambda resource_type, props: resource_type == ECS_TASK or has_pod(resource_type, props),
)


@lru_cache(maxsize=1)
def placeholder_hosts() -> tuple[str, ...]:
    text = (resources.files("medplat.compliance") / "placeholders.yaml").read_text(encoding="utf-8")
    return tuple(yaml.safe_load(text)["endpoints"]["hosts"])


def placeholder_host(value: str) -> str | None:
    """The host of a URL value when it is a placeholder."""
    if "://" not in value:
        return None
    host = (urlsplit(value.strip()).hostname or "").lower()
    return host if host and any(fnmatch.fnmatchcase(host, pattern) for pattern in placeholder_hosts()) else None


def _settings(args) -> list[tuple[str, str, str]]:
    if args.resource_type == ECS_TASK:
        try:
            definitions = json.loads(args.props.get("containerDefinitions") or "[]")
        except (TypeError, ValueError):
            return []
        return [(d.get("name", "?"), e.get("name", "?"), str(e.get("value", "")))
                for d in definitions if isinstance(d, dict) for e in d.get("environment") or []]
    return [(c.get("name", "?"), e.get("name", "?"), str(e.get("value", "")))
            for c in containers(pod_spec(args.resource_type, args.props) or {}) for e in c.get("env") or []
            if isinstance(e.get("value"), str)]


def check(args, report):
    for container, name, value in _settings(args):
        host = placeholder_host(value)
        if host:
            report(f"'{args.name}', container '{container}': {name} points at placeholder host {host}")


POLICY = MedplatResourcePolicy(META, check)
