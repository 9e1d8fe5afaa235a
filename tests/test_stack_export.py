"""A real `pulumi stack export` file yields the same inventory shape, labelled as deployed."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medplat.cli import app
from medplat.inventory import SECRET_SIG, SECRET_VALUE_SIG, from_stack_export

runner = CliRunner()
DATA = Path(__file__).parent / "data"


def test_small_export_is_read_masked_and_attributed():
    inventory = from_stack_export(DATA / "stack-export-small.json").to_json()
    assert inventory["status"] == "deployed" and inventory["note"].startswith("DEPLOYED")
    assert (inventory["project"], inventory["stack"], inventory["zone"]) == ("medplat", "analytics", "analytics")
    by_name = {r["name"]: r for r in inventory["resources"]}
    parameter = by_name["analytics-api-token"]
    assert parameter["inputs"]["value"] == "[secret]"
    assert "Qm9ndXMg" not in json.dumps(inventory)
    # The alias has no tags of its own: its labels come from the component.
    assert by_name["analytics-kms-alias"]["labels"]["medplat:owner"] == "research-platform"
    assert by_name["analytics-kms"]["provider"] == "urn:pulumi:analytics::medplat::pulumi:providers:aws::aws-eu"
    assert by_name["analytics-kms"]["region"] == "eu-central-1"
    assert by_name["analytics"]["parent"] is None


def _as_stack_export(planned: dict) -> dict:
    """Write a planned inventory the way the engine writes state (provider refs, secrets)."""
    stack_urn = f"urn:pulumi:{planned['stack']}::medplat::pulumi:pulumi:Stack::medplat-{planned['stack']}"

    def secretize(value):
        if value == "[secret]":
            return {SECRET_SIG: SECRET_VALUE_SIG, "ciphertext": "v1:c2VjcmV0"}
        if isinstance(value, dict):
            return {k: secretize(v) for k, v in value.items()}
        if isinstance(value, list):
            return [secretize(v) for v in value]
        return value

    resources = [{"urn": stack_urn, "custom": False, "type": "pulumi:pulumi:Stack", "outputs": {}}]
    for r in planned["resources"]:
        entry = {"urn": r["urn"], "custom": r["custom"], "type": r["type"], "parent": r["parent"] or stack_urn,
                 "inputs": secretize(r["inputs"]), "dependencies": r["dependencies"],
                 "propertyDependencies": r["propertyDependencies"]}
        if r["custom"]:
            entry["id"] = f"id-{r['name']}"
        if r["provider"]:
            entry["provider"] = f"{r['provider']}::0b7f6b2e-0000-4000-8000-{abs(hash(r['provider'])) % 10**12:012d}"
        if not r["custom"]:
            entry["outputs"] = r.get("componentOutputs", {})
        resources.append(entry)
    return {"version": 3, "deployment": {"manifest": {"version": "v3.205.0"}, "resources": resources}}


def test_round_trip_through_the_state_format(examples, tmp_path):
    planned_result = examples.results["eu-phi"]
    planned = planned_result.inventory.to_json()
    outputs = {r.urn: r.outputs for r in planned_result.inventory.resources if not r.custom}
    for r in planned["resources"]:
        r["componentOutputs"] = outputs.get(r["urn"], {})
    export = tmp_path / "eu-phi.export.json"
    export.write_text(json.dumps(_as_stack_export(planned)))
    result = runner.invoke(app, ["synth", "--from-export", str(export), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "DEPLOYED" in result.stdout
    deployed = json.loads((tmp_path / "out" / "eu-phi.inventory.json").read_text())
    assert deployed["status"] == "deployed"
    assert set(deployed) == set(planned)

    def key(inv):
        return {r["urn"]: (r["type"], r["parent"], r["provider"], r["region"], tuple(sorted(r["labels"].items())),
                           json.dumps(r["inputs"], sort_keys=True), tuple(r["dependencies"]))
                for r in inv["resources"]}
    assert key(deployed) == key(planned)


def test_not_an_export_is_one_line_exit_2(tmp_path):
    bogus = tmp_path / "preview.json"
    bogus.write_text('{"steps": []}')
    result = runner.invoke(app, ["synth", "--from-export", str(bogus), "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"medplat: error: {bogus}: not a `pulumi stack export` file (no deployment.resources)"
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    result = runner.invoke(app, ["synth", "--from-export", str(broken), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "not JSON" in result.stderr
