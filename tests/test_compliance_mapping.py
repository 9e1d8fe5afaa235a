"""Controls and mappings are consistent data: every resource and policy maps to catalog keys."""
from __future__ import annotations

from medplat.compliance.controls import catalog, policy_controls, resource_controls
from medplat.policies.registry import all_policies


def test_every_example_resource_type_is_mapped(inventories):
    mapped = resource_controls()
    unmapped = sorted({r["type"] for inv in inventories.values() for r in inv["resources"]} - set(mapped))
    assert unmapped == [], f"add these types to compliance/mappings/resources.yaml: {unmapped}"


def test_mappings_name_only_catalog_controls():
    known = set(catalog())
    for kind, controls in resource_controls().items():
        assert controls and set(controls) <= known, (kind, set(controls) - known)
    for policy, controls in policy_controls().items():
        assert controls and set(controls) <= known, (policy, set(controls) - known)


def test_every_policy_is_mapped_and_every_mapping_is_a_policy():
    ids = {p.name for p in all_policies()} | {"waiver-valid", "vulnerability-scan"}
    assert set(policy_controls()) == ids


def test_organizational_controls_name_their_evidence():
    for control in catalog().values():
        assert control.kind in ("technical", "organizational")
        if control.kind == "organizational":
            assert control.evidence, control.id
