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
