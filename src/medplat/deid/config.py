"""De-identification configuration: Microsoft FHIR Tools for Anonymization's JSON format
(`fhirVersion`, `processingErrors`, `fhirPathRules`, `parameters`) read unchanged, plus
medplat's `pseudonymize` method, `patient` date-shift scope and `bundleReferences: relink`
(Bundle entries get keyed urn:uuid fullUrls that in-bundle references point to)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from medplat.deid.types import is_resource_type

METHODS = {"keep", "redact", "dateshift", "cryptohash", "substitute", "perturb", "generalize", "pseudonymize"}
CANONICAL = {"dateshift": "dateShift", "cryptohash": "cryptoHash"}
KEY_PARAMETERS = ("dateShiftKey", "cryptoHashKey", "encryptKey")
SCOPES = {"resource", "file", "folder", "patient"}
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
START = re.compile(rf"^(?:(?P<prefix>{IDENT})\.)?(?:nodesByType\('(?P<type>{IDENT})'\))|^(?P<root>{IDENT})")
STEP = re.compile(rf"^\.(?:where\((?P<wname>{IDENT})\s*=\s*'(?P<literal>[^']*)'\)|(?P<name>{IDENT}))")
AS = re.compile(rf"^\s+as\s+(?P<type>{IDENT})$")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Step:
    kind: str  # child | where | as
    name: str
    literal: str | None = None


@dataclass(frozen=True)
class Selector:
    start_type: str | None  # nodesByType('T') start; None: the resource root
    steps: tuple[Step, ...]


@dataclass
class Rule:
    path: str
    method: str
    options: dict[str, Any]
    resource_type: str | None           # rules for one resource type skip the others quickly
    selector: Selector | None           # plain paths, evaluated natively (fast)
    fallback: tuple[str, str | None] = ("", None)  # anything else: fhirpathpy


@dataclass
class Config:
    rules: list[Rule]
    parameters: dict[str, Any] = field(default_factory=dict)
    processing_errors: str = "raise"
    source: str = ""


def parse_path(path: str) -> tuple[str | None, Selector | None, tuple[str, str | None]]:
    text = path.strip()
    match = START.match(text)
    root = match and (match["root"] or match["prefix"])
    resource_type = root if root and (root in ("Resource", "DomainResource") or is_resource_type(root)) else None
    if match and (match["type"] or resource_type):
        rest, steps = text[match.end():], []
        while rest:
            step = STEP.match(rest)
            if step:
                steps.append(Step("where", step["wname"], step["literal"]) if step["wname"]
                             else Step("child", step["name"]))
                rest = rest[step.end():]
                continue
            cast = AS.match(rest)
            if cast:
                steps.append(Step("as", cast["type"]))
                rest = ""
                continue
            break
        if not rest:
            return resource_type, Selector(match["type"], tuple(steps)), ("", None)
    last = re.search(rf"\.({IDENT})$", text)
    fallback = (text[:last.start()], last.group(1)) if last else (text, None)
    return resource_type, None, fallback


def _rule(entry: dict[str, Any], index: int) -> Rule:
    if not isinstance(entry, dict) or "path" not in entry or "method" not in entry:
        raise ConfigError(f"fhirPathRules[{index}]: needs 'path' and 'method'")
    method = str(entry["method"]).lower()
    if method == "encrypt":
        raise ConfigError(f"fhirPathRules[{index}]: 'encrypt' is reversible; use 'pseudonymize' with a "
                          "reversible pseudonymizer domain instead")
    if method not in METHODS:
        raise ConfigError(f"fhirPathRules[{index}]: unknown method {entry['method']!r}")
    options = {k: v for k, v in entry.items() if k not in ("path", "method")}
    required = {"substitute": "replaceWith", "generalize": "cases", "pseudonymize": "domain", "perturb": "span"}
    if method in required and required[method] not in options:
        raise ConfigError(f"fhirPathRules[{index}]: {method} needs {required[method]!r}")
    if method == "perturb" and (float(options["span"]) < 0 or int(options.get("roundTo", 2)) not in range(29)
                                or options.get("rangeType", "fixed") not in ("fixed", "proportional")):
        raise ConfigError(f"fhirPathRules[{index}]: perturb needs span >= 0, roundTo 0..28, "
                          "rangeType fixed|proportional")
    resource_type, selector, fallback = parse_path(str(entry["path"]))
    return Rule(str(entry["path"]), CANONICAL.get(method, method), options, resource_type, selector, fallback)


def load_config(source: dict[str, Any] | str | Path) -> Config:
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        name = str(path)
    else:
        data, name = source, "<dict>"
    version = data.get("fhirVersion") or "R4"
    if version != "R4":
        raise ConfigError(f"{name}: fhirVersion {version!r}: only R4 is supported")
    parameters = dict(data.get("parameters") or {})
    for key in KEY_PARAMETERS:
        if parameters.get(key):
            raise ConfigError(f"{name}: parameters.{key}: keys come from the project key domain, "
                              "never from a configuration file")
    if parameters.get("dateShiftScope", "resource") not in SCOPES:
        raise ConfigError(f"{name}: parameters.dateShiftScope must be one of {sorted(SCOPES)}")
    if parameters.get("bundleReferences", "keep") not in ("keep", "relink"):
        raise ConfigError(f"{name}: parameters.bundleReferences must be keep (Microsoft's behaviour) or relink")
    errors = data.get("processingErrors", "raise")
    if errors not in ("raise", "keep", "skip"):
        raise ConfigError(f"{name}: processingErrors must be raise, keep or skip")
    rules = [_rule(entry, i) for i, entry in enumerate(data.get("fhirPathRules") or [])]
    return Config(rules, parameters, errors, name)


def builtin(name: str) -> Config:
    """A configuration shipped with medplat (`research`, `telemetry`)."""
    text = resources.files("medplat.deid").joinpath("configs", f"{name}.json").read_text(encoding="utf-8")
    config = load_config(json.loads(text))
    config.source = f"medplat:{name}"
    return config
