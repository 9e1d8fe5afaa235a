"""Residency rules (EU regions and providers), read from compliance/residency.yaml."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from urllib.parse import urlparse

import yaml


@dataclass(frozen=True)
class Residency:
    eu_countries: frozenset[str]
    aws_regions: dict[str, str]
    aws_refused: dict[str, str]
    openstack: dict[str, dict]

    def aws_region_problem(self, region: str) -> str | None:
        if region in self.aws_refused:
            return f"{region!r} is not an EU region: {self.aws_refused[region]}"
        country = self.aws_regions.get(region)
        if country is None:
            return f"{region!r} is not an EU region; allowed: {', '.join(sorted(self.aws_regions))}"
        if country not in self.eu_countries:
            return f"{region!r} is in {country}, not in the EU"
        return None

    def openstack_region_problem(self, provider: str, region: str) -> str | None:
        entry = self.openstack.get(provider)
        if entry is None:
            return f"unknown OpenStack provider {provider!r}; known: {', '.join(sorted(self.openstack))}"
        country = entry["regions"].get(region)
        if country is None:
            return f"region {region!r} is not an EU region of {provider}; allowed: {', '.join(sorted(entry['regions']))}"
        if country not in self.eu_countries:
            return f"region {region!r} of {provider} is in {country}, not in the EU"
        return None

    def openstack_auth_problem(self, provider: str, auth_url: str) -> str | None:
        parsed = urlparse(auth_url)
        if parsed.scheme != "https":
            return f"authUrl {auth_url!r} must use https"
        hosts = self.openstack.get(provider, {}).get("auth_hosts") or []
        if hosts and parsed.hostname not in hosts:
            return f"authUrl host {parsed.hostname!r} is not one of {provider}'s: {', '.join(hosts)}"
        return None

    def encrypted_volume_types(self, provider: str) -> list[str]:
        return list(self.openstack.get(provider, {}).get("encrypted_volume_types") or [])


@lru_cache(maxsize=1)
def residency() -> Residency:
    text = (resources.files("medplat.compliance") / "residency.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return Residency(
        eu_countries=frozenset(data["eu_countries"]),
        aws_regions=dict(data["aws"]["regions"]),
        aws_refused=dict(data["aws"].get("refused") or {}),
        openstack=dict(data["openstack"]["providers"]),
    )
