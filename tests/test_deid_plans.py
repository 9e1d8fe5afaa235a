"""Plans (a resource shape's recorded decisions, replayed on the next resource of that shape)
give exactly what the full rule evaluation gives."""
from __future__ import annotations

import copy
import datetime

import pytest

import deid_samples
from medplat.deid import Deidentifier, KeyDomain, builtin

KEY = b"plan-test-key-0123456789abcdefgh"


def pseudonymize(domain, values):
    return [f"PS{abs(hash((domain, v))) % 10**8:08d}" for v in values]


def variants():
    """Each sample twice with different values (same shape), plus device series."""
    out = []
    for resource in deid_samples.all_resources():
        out.append(resource)
        other = copy.deepcopy(resource)
        other["id"] = other.get("id", "x") + "-2"
        if "subject" in other:
            other["subject"]["reference"] = "Patient/another-patient"
        out.append(other)
    for i in range(40):
        out.append({"resourceType": "Observation", "id": f"o{i}", "status": "final",
                    "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "150456"}]},
                    "subject": {"reference": f"Patient/p{i % 3}"}, "device": {"reference": f"Device/d{i % 2}"},
                    "effectiveDateTime": (datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
                                          + datetime.timedelta(minutes=i)).isoformat(),
                    "valueQuantity": {"value": 90 + i % 9, "unit": "%"}, "_status": {"extension": [
                        {"url": "urn:x", "valueString": "secret"}]} if i % 4 == 0 else {"id": "s"}})
    return out


@pytest.mark.parametrize("config", ["research", "telemetry"])
def test_replayed_plans_equal_full_evaluation(config):
    planned = Deidentifier(builtin(config), KeyDomain(KEY, pseudonymize), domain="d")
    assert planned._plannable
    full = Deidentifier(builtin(config), KeyDomain(KEY, pseudonymize), domain="d")
    full._plannable = False
    resources = variants()
    for resource in resources + resources:  # second round: every shape has a plan
        assert planned.deidentify(resource) == full.deidentify(resource), resource.get("id")
    assert planned._plans, "plans were recorded and used"
