"""medplat.deid against Microsoft FHIR Tools for Anonymization's own test vectors: its
configurations and inputs, compared with the outputs its engine produced (`*-target.json`,
tests/data/ms-fhir-anonymizer/PROVENANCE.md). Where medplat differs by design (date-shift
derivation, narrative and unhandled extensions removed) the comparison checks medplat's own
rule instead of skipping the element."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from medplat.deid import ConfigError, Deidentifier, KeyDomain, load_config, shift

DATA = Path(__file__).parent / "data" / "ms-fhir-anonymizer"
MS_KEY = b"123"  # the cryptoHashKey of Microsoft's test configurations
TODAY = datetime.date(2020, 6, 1)  # the targets were produced around 2020 (age > 89 checks)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _engine(config: dict) -> Deidentifier:
    parameters = config.setdefault("parameters", {})
    for key in ("cryptoHashKey", "dateShiftKey", "encryptKey"):
        parameters.pop(key, None)  # keys live in the key domain, not in the file
    return Deidentifier(load_config(config), KeyDomain(MS_KEY), today=TODAY)


def _compare(ours, theirs, original, days: int, path: str = "") -> list[str]:
    """Differences other than medplat's documented ones, which are checked here instead."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        problems = []
        for key in sorted(set(ours) | set(theirs)):
            mine, other, before = ours.get(key), theirs.get(key), (original or {}).get(key)
            if mine is None and key == "text":  # medplat: narrative never leaves
                continue
            if mine is None and (key == "extension" or key.startswith("_")):  # unhandled extensions removed
                continue
            problems += _compare(mine, other, before, days, f"{path}.{key}")
        return problems
    if isinstance(theirs, list) and isinstance(ours, list) and len(ours) == len(theirs):
        originals = original if isinstance(original, list) and len(original) == len(ours) else [None] * len(ours)
        return [p for i, (a, b, c) in enumerate(zip(ours, theirs, originals))
                for p in _compare(a, b, c, days, f"{path}[{i}]")]
    if ours == theirs:
        return []
    if isinstance(original, str) and isinstance(theirs, str) and len(original) >= 10 and original[4] == "-":
        # Both shifted a full date; Microsoft by its own key derivation (within 50 days), medplat by its own.
        mine_expected = shift(original, days)
        distance = abs((datetime.date.fromisoformat(theirs[:10]) - datetime.date.fromisoformat(original[:10])).days)
        if ours == mine_expected and distance <= 50 and theirs[10:] == ours[10:]:
            return []
    return [f"{path}: medplat {json.dumps(ours)[:80]} / Microsoft {json.dumps(theirs)[:80]}"]


FUNCTIONAL = [  # (configuration, input, expected) as paired in ResourceTests.cs / CollectionResourceTests.cs
    ("common-config.json", "patient-basic.json", "patient-basic-target.json"),
    ("redact-all-config.json", "patient-basic.json", "patient-redact-all-target.json"),
    ("common-no-partial-config.json", "patient-no-partial.json", "patient-no-partial-target.json"),
    ("generalize-patient-config.json", "patient-generalize.json", "patient-generalize-target.json"),
    ("substitute-complex.json", "patient-substitute-complex.json", "patient-substitute-complex-target.json"),
    ("substitute-primitive.json", "patient-substitute-primitive.json", "patient-substitute-primitive-target.json"),
    ("substitute-conflict-rules.json", "patient-substitute-conflict-rules.json",
     "patient-substitute-conflict-rules-target.json"),
    ("common-config.json", "contained-basic.json", "contained-basic-target.json"),
    ("common-config.json", "bundle-basic.json", "bundle-basic-target.json"),
]


@pytest.mark.parametrize("config,source,target", FUNCTIONAL, ids=[f[1] + ":" + f[0] for f in FUNCTIONAL])
def test_microsoft_functional_vectors(config, source, target):
    engine = _engine(_load(DATA / "functional" / config))
    original = _load(DATA / "functional" / source)
    ours = engine.deidentify(original)
    days = engine.keys.shift_days(f"resource|{original['resourceType']}/{original.get('id', '')}")
    assert _compare(ours, _load(DATA / "functional" / target), original, days) == []
    assert "text" not in ours
    assert original == _load(DATA / "functional" / source), "the input is not modified"


SAFE_HARBOR_VECTORS = ["Account-R4", "Claim-R4", "Contract-R4", "OrganizationAffiliation", "ServiceRequest"]


@pytest.mark.parametrize("name", SAFE_HARBOR_VECTORS)
def test_safe_harbor_configuration_unchanged_reproduces_microsoft_outputs(name):
    """The shipped configuration-sample.json, byte for byte (its keys are empty), with the
    project key set to the key Microsoft produced these targets with."""
    config = load_config(DATA / "configuration-sample.json")
    engine = Deidentifier(config, KeyDomain(MS_KEY), today=TODAY)
    original = _load(DATA / "safe-harbor" / f"{name}.json")
    ours = engine.deidentify(original)
    theirs = _load(DATA / "safe-harbor" / f"{name}-target.json")
    days = engine.keys.shift_days(f"resource|{original['resourceType']}/{original.get('id', '')}")
    problems = _compare(ours, theirs, original, days)
    # Contained resources have their own resource scope (and so their own shift), as in Microsoft's tool.
    for index, inner in enumerate(original.get("contained", [])):
        inner_days = engine.keys.shift_days(f"resource|{inner['resourceType']}/{inner.get('id', '')}")
        prefix = f".contained[{index}]"
        problems = [p for p in problems if not p.startswith(prefix)] + \
            _compare(ours["contained"][index], theirs["contained"][index], inner, inner_days, prefix)
    assert problems == []


def test_safe_harbor_configuration_is_the_published_file():
    text = (DATA / "configuration-sample.json").read_bytes()
    assert __import__("hashlib").sha256(text).hexdigest() == \
        "82e91cb5746c144b073371d9403d08fae7b4519c30f2459ff07aba07e0ff6fa1"
    assert len(load_config(DATA / "configuration-sample.json").rules) == 193


def test_keys_in_a_configuration_file_are_refused():
    config = _load(DATA / "functional" / "common-config.json")
    with pytest.raises(ConfigError, match="Key: keys come from the project key domain"):
        load_config(config)


def test_encrypt_is_refused_with_the_alternative_named():
    with pytest.raises(ConfigError, match="pseudonymize"):
        load_config({"fhirPathRules": [{"path": "nodesByType('Address').city", "method": "encrypt"}]})
