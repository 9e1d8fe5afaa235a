"""No private key in any synthesized state or output, looking inside secrets too: the inventory
masks secret values ("[secret]"), but Pulumi state holds them (encrypted), so a PEM key wrapped
in a secret would pass a scan of the inventory alone."""
from __future__ import annotations

import json

import pulumi

from conftest import STACKS
from medplat.synth import synthesize

# A hand-built, truncated PEM block (not a usable key), as in tests/policy_cases.py.
PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIByfQ0Zp5m7b9g==\n-----END EC PRIVATE KEY-----\n"


def test_no_example_stack_holds_a_private_key_even_inside_secrets(examples, inventories):
    assert set(examples.results) == set(inventories) and len(inventories) == 4
    for name, result in examples.results.items():
        assert result.private_keys_in_state == [], name
        assert "PRIVATE KEY" not in json.dumps(result.outputs, default=str), name
        assert "PRIVATE KEY" not in json.dumps(inventories[name]), name


def test_a_secret_wrapped_key_is_found_where_the_masked_inventory_hides_it():
    def leak():
        import pulumi_aws as aws

        aws.secretsmanager.SecretVersion("tamper-key-version", secret_id="tamper",
                                         secret_string=pulumi.Output.secret(PEM))
        pulumi.export("tamperKey", pulumi.Output.secret(PEM))

    result = synthesize("analytics", STACKS, extra=leak)
    assert "PRIVATE KEY" not in json.dumps(result.inventory.to_json()), "the inventory masks secrets"
    found = result.private_keys_in_state
    assert any(entry.endswith("::tamper-key-version secretString") for entry in found), found
    assert "output tamperKey value" in found, found


def test_the_gate_fails_a_key_hidden_inside_a_secret(tmp_path):
    """The offline pack sees masked secrets only; synthesis scans them unmasked, and the gate turns
    what it found into `no-private-key-in-state` failures (the policy the issue asks for)."""
    import datetime

    from medplat.gate import KEYS_IN_STATE, check_inventories, keys_in_state_findings

    def leak():
        import pulumi_aws as aws

        aws.secretsmanager.SecretVersion("tamper-key-version", secret_id="tamper",
                                         secret_string=pulumi.Output.secret(PEM))

    result = synthesize("analytics", STACKS, extra=leak)
    inventory = result.inventory.to_json()
    inventory[KEYS_IN_STATE] = list(result.private_keys_in_state)  # what gate.synthesized records
    (finding,) = keys_in_state_findings(inventory)
    assert finding.blocking and finding.urn.endswith("::tamper-key-version") and "PRIVATE KEY" not in finding.message
    gate = check_inventories([(inventory, None, list(result.config.waivers))], datetime.date(2026, 11, 23))
    assert gate.exit_code == 1
    assert any(e["policy"] == "no-private-key-in-state" and e["status"] == "fail"
               and e["subject"].endswith("::tamper-key-version") for e in gate.evaluations)
