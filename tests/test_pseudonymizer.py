"""pseudonymizer: stable per domain, distinct across domains, check characters catch typos,
de-pseudonymization needs its own role and is audited, rotation keeps old pseudonyms resolvable."""
from __future__ import annotations

import json

import orjson
import pytest
from cryptography.exceptions import InvalidTag
from fastapi.testclient import TestClient

from medplat.service.auth import mint_local_token
from medplat.workloads.pseudonymizer.app import Settings, build
from medplat.workloads.pseudonymizer.keys import LocalKeyFile
from medplat.workloads.pseudonymizer.pseudonyms import CROCKFORD

ALL = ["pseudonym.admin", "pseudonym.create", "pseudonym.resolve"]


@pytest.fixture
def service(tmp_path):
    app, settings = build(Settings(data_dir=tmp_path / "pseudo"))

    def client(*scopes: str) -> TestClient:
        token = mint_local_token(settings.data_dir, "pseudonymizer", list(scopes), "tester")
        return TestClient(app, headers={"authorization": f"Bearer {token}"})

    admin = client(*ALL)
    for name, reversible in (("study-a", True), ("study-b", True), ("oneway", False)):
        assert admin.post("/domains", json={"name": name, "dataClass": "pseudonymized",
                                            "reversible": reversible}).status_code == 201
    return admin, client, app


def pseudonymize(client, domain, *values):
    response = client.post(f"/domains/{domain}/pseudonymize", json={"values": list(values)})
    assert response.status_code == 200, response.text
    return response.json()["pseudonyms"]


def test_stable_within_a_domain_and_different_across_domains(service):
    admin, *_ = service
    a1, a2 = pseudonymize(admin, "study-a", "PAT-0001", "PAT-0002")
    assert pseudonymize(admin, "study-a", "PAT-0001") == [a1]
    (b1,) = pseudonymize(admin, "study-b", "PAT-0001")
    assert len({a1, a2, b1}) == 3
    assert len(a1) == 17 and set(a1) <= set(CROCKFORD)


def test_the_check_character_catches_typos(service):
    admin, *_ = service
    (good,) = pseudonymize(admin, "study-a", "PAT-0001")
    typos = [good[:i] + c + good[i + 1:] for i in range(len(good)) for c in CROCKFORD if c != good[i]]
    caught = [admin.post("/domains/study-a/de-pseudonymize", json={"pseudonyms": [t]}) for t in typos[::7]]
    assert all(r.status_code == 422 and "check character" in r.json()["issue"][0]["diagnostics"] for r in caught)
    swaps = [good[:i] + good[i + 1] + good[i] + good[i + 2:] for i in range(len(good) - 1) if good[i] != good[i + 1]]
    detected = sum(admin.post("/domains/study-a/de-pseudonymize", json={"pseudonyms": [s]}).status_code == 422
                   for s in swaps)
    assert detected >= 0.9 * len(swaps), f"{detected} of {len(swaps)} adjacent transpositions caught"


def test_de_pseudonymization_needs_its_role_and_is_always_audited(service):
    admin, client, app = service
    (pseudonym,) = pseudonymize(admin, "study-a", "PAT-0042")
    creator = client("pseudonym.create")
    refused = creator.post("/domains/study-a/de-pseudonymize", json={"pseudonyms": [pseudonym]})
    assert refused.status_code == 403 and "pseudonym.resolve" in refused.json()["issue"][0]["diagnostics"]
    resolver = client("pseudonym.resolve")
    assert resolver.post("/domains/study-a/de-pseudonymize", json={"pseudonyms": [pseudonym]}).json()["values"] == \
        ["PAT-0042"]
    assert resolver.post("/domains/oneway/de-pseudonymize", json={"pseudonyms": [pseudonym]}).status_code == 409
    app.state.audit.flush()
    events = [orjson.loads(line) for line in app.state.audit.spool.read_bytes().splitlines()]
    descriptions = [e["outcomeDesc"] for e in events]
    assert "de-pseudonymized 1 pseudonyms in domain study-a" in descriptions
    assert any(d.startswith("de-pseudonymization refused in domain oneway") for d in descriptions)


def test_rotation_gives_new_pseudonyms_and_keeps_old_ones_resolvable(service):
    admin, *_ = service
    (before,) = pseudonymize(admin, "study-a", "PAT-0007")
    assert admin.post("/domains/study-a/rotate").json()["keyVersion"] == 2
    (after,) = pseudonymize(admin, "study-a", "PAT-0007")
    assert after != before
    values = admin.post("/domains/study-a/de-pseudonymize", json={"pseudonyms": [before, after]}).json()["values"]
    assert values == ["PAT-0007", "PAT-0007"]


def test_fhir_operations_round_trip_on_parameters(service):
    admin, *_ = service
    request = {"resourceType": "Parameters", "parameter": [
        {"name": "target", "valueString": "study-a"}, {"name": "original", "valueString": "PAT-1"},
        {"name": "original", "valueIdentifier": {"system": "urn:oid:1.2.276.0.76.4.8", "value": "PAT-2"}}]}
    result = admin.post("/$pseudonymize", json=request).json()
    parts = [{p["name"]: p["valueString"] for p in item["part"]} for item in result["parameter"]]
    assert [p["original"] for p in parts] == ["PAT-1", "PAT-2"] and all(p["target"] == "study-a" for p in parts)
    back = admin.post("/$de-pseudonymize", json={"resourceType": "Parameters", "parameter": [
        {"name": "target", "valueString": "study-a"}, *({"name": "pseudonym", "valueString": p["value"]}
                                                         for p in parts)]}).json()
    assert [{q["name"]: q["valueString"] for q in i["part"]}["original"] for i in back["parameter"]] == ["PAT-1", "PAT-2"]
    bad = admin.post("/$pseudonymize", json={"resourceType": "Parameters", "parameter": [{"name": "original"}]})
    assert bad.status_code == 422 and bad.json()["resourceType"] == "OperationOutcome"


def test_key_providers_are_enforced_and_local_keys_are_encrypted_at_rest(service, tmp_path):
    admin, *_ = service
    kms = admin.post("/domains", json={"name": "phi-in-aws", "dataClass": "pseudonymized", "provider": "aws-kms"})
    assert kms.status_code == 422 and "EU PHI zone" in kms.json()["issue"][0]["diagnostics"]
    unconfigured = admin.post("/domains", json={"name": "deid", "dataClass": "deidentified", "provider": "aws-kms"})
    assert unconfigured.status_code == 422 and "not configured" in unconfigured.json()["issue"][0]["diagnostics"]
    keys = LocalKeyFile(tmp_path / "k.json", passphrase="correct horse")
    ref = keys.create("x")
    raw = keys.get(ref)
    assert raw.hex() not in (tmp_path / "k.json").read_text() and json.loads((tmp_path / "k.json").read_text())["keys"]
    with pytest.raises(InvalidTag):
        LocalKeyFile(tmp_path / "k.json", passphrase="wrong").get(ref)
