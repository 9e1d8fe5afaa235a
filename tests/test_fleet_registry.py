"""fleet registry: GS1 UDIs parsed with biip (real GS1 examples, malformed ones refused with a
reason), onboarding bound to a PlatformPki-style client certificate, heartbeats, inventory."""
from __future__ import annotations

import datetime
import urllib.parse

import pytest
from fastapi.testclient import TestClient

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
import base64

from identities import INGRESS, bearer
from medplat.service.localpki import Ca
from medplat.workloads.fleet.app import Settings, build
from medplat.workloads.fleet.udi import UdiError, parse_udi

# The GS1/FDA UDI example (GTIN 10884521062856 with lot, dates and serial), in the
# human-readable form and as barcode data (symbology identifier ]d2, FNC1 as GS).
HRI = "(01)10884521062856(11)141231(17)290707(10)A213B1(21)1234"
BARCODE = "]d2" + "0110884521062856" + "11141231" + "17290707" + "10A213B1\x1d" + "211234"


def test_gs1_udi_strings_give_di_and_pi():
    for value in (HRI, BARCODE):
        udi = parse_udi(value)
        assert (udi.di, udi.serial, udi.lot) == ("10884521062856", "1234", "A213B1")
        assert udi.manufactured == datetime.date(2014, 12, 31) and udi.expiry == datetime.date(2029, 7, 7)
        assert udi.device_id == "10884521062856.1234"


@pytest.mark.parametrize("value, reason", [
    ("(01)10884521062857(21)1234", "check digit"),
    ("(01)1088452106285(21)1234", "pattern"),
    ("(01)10884521062856(17)291399(21)1234", "(17)"),
    ("(01)10884521062856(10)A213B1", "serial number"),
    ("(21)1234", "UDI-DI"),
    ("(01)10884521062856(99)promo(21)1234", "not part of a UDI"),
    ("pump-42", "GS1"),
    ("   ", "empty"),
])
def test_malformed_udis_are_refused_with_a_reason(value, reason):
    with pytest.raises(UdiError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_udi(value)


@pytest.fixture
def fleet(tmp_path):
    ca = Ca(tmp_path, "platform")
    app, _ = build(Settings(data_dir=tmp_path / "fleet", device_ca=ca.cert_path, trusted_proxies=INGRESS))
    with TestClient(app, headers=bearer(tmp_path / "fleet", "fleet", "fleet.admin", "fleet.read",
                                        "fleet.onboard")) as client:
        yield client, ca, tmp_path
    app.state.audit.close()


def onboard(client, device_id, cert_pem: str, key_path, **extra):
    """The device's side of onboarding: sign the server's challenge with its own key."""
    challenge = client.post(f"/devices/{device_id}/challenge").json()
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    signature = key.sign(challenge["sign"].encode(), ec.ECDSA(hashes.SHA256()))
    return client.post(f"/devices/{device_id}/onboard", json={
        "certificate": cert_pem, "challenge": challenge["challenge"],
        "signature": base64.b64encode(signature).decode(), **extra})


def register(client, udi=HRI, **extra):
    return client.post("/devices", json={"udi": udi, "site": "dresden", "hardware": "pump-x",
                                         "rolloutGroup": "canary", "maintenanceIntervalDays": 180, **extra})


def test_registration_refuses_bad_udis_and_duplicates_with_operation_outcomes(fleet):
    client, _ca, _ = fleet
    created = register(client)
    assert created.status_code == 201 and created.json()["id"] == "10884521062856.1234"
    assert register(client).status_code == 409
    bad = register(client, udi="(01)10884521062857(21)1")
    assert bad.status_code == 422 and "check digit" in bad.json()["issue"][0]["diagnostics"]
    assert bad.json()["issue"][0]["expression"] == ["udi"]


def test_onboarding_binds_the_certificate_and_heartbeats_must_present_it(fleet):
    client, ca, tmp_path = fleet
    device_id = register(client).json()["id"]
    cert_path, key_path, _ = ca.issue(device_id)
    pem = cert_path.read_text()
    header = {"x-forwarded-tls-client-cert": urllib.parse.quote(pem)}
    assert client.post(f"/devices/{device_id}/heartbeat", json={"status": "ok"},
                       headers=header).status_code == 403  # not onboarded
    onboarded = onboard(client, device_id, pem, key_path).json()
    assert onboarded["status"] == "onboarded" and len(onboarded["certificateFingerprint"]) == 64
    beat = client.post(f"/devices/{device_id}/heartbeat", headers=header, json={
        "status": "ok", "telemetry": {"battery": 87},
        "software": [{"component": "pump-fw", "version": "1.0.0", "sbom": "urn:uuid:4f1c-sbom"}]})
    assert beat.status_code == 200
    device = client.get(f"/devices/{device_id}").json()
    assert device["telemetry"] == {"battery": 87} and device["software"][0]["version"] == "1.0.0"
    assert device["maintenanceDue"] == (datetime.date.today() + datetime.timedelta(days=180)).isoformat()
    other, _, _ = ca.issue("someone-else")
    stolen = client.post(f"/devices/{device_id}/heartbeat", json={"status": "ok"},
                         headers={"x-forwarded-tls-client-cert": urllib.parse.quote(other.read_text())})
    assert stolen.status_code == 403
    assert client.post(f"/devices/{device_id}/heartbeat", json={"status": "ok"}).status_code == 401


@pytest.mark.parametrize("problem", ["foreign-ca", "expired", "other-device", "garbage"])
def test_onboarding_refuses_certificates_that_do_not_belong(fleet, problem):
    client, ca, tmp_path = fleet
    device_id = register(client).json()["id"]
    if problem == "foreign-ca":
        cert, key, _ = Ca(tmp_path, "stranger").issue(device_id)
    elif problem == "expired":
        cert, key, _ = ca.issue(device_id, expired=True)
    elif problem == "other-device":
        cert, key, _ = ca.issue("10884521062856.9999")
    else:
        cert, key, _ = ca.issue("garbage")
        cert.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    response = onboard(client, device_id, cert.read_text(), key)
    assert response.status_code == 422, response.text
    assert client.get(f"/devices/{device_id}").json()["status"] == "registered"


def test_onboarding_needs_proof_of_possession_and_cannot_take_over_an_onboarded_device(fleet):
    client, ca, _ = fleet
    device_id = register(client).json()["id"]
    cert, key, _ = ca.issue(device_id)
    # An attacker holding only the certificate (it is public) signs with another key: refused.
    _other_cert, other_key, _ = ca.issue("attacker")
    assert onboard(client, device_id, cert.read_text(), other_key).status_code == 403
    assert client.get(f"/devices/{device_id}").json()["status"] == "registered"
    assert onboard(client, device_id, cert.read_text(), key).status_code == 200
    bound = client.get(f"/devices/{device_id}").json()["certificateFingerprint"]
    # Takeover: onboarding an onboarded device again is refused...
    again = onboard(client, device_id, cert.read_text(), key)
    assert again.status_code == 409, "already onboarded"
    # ...and re-provisioning needs its own scope.
    assert onboard(client, device_id, cert.read_text(), key, reprovision=True).status_code == 403
    assert client.get(f"/devices/{device_id}").json()["certificateFingerprint"] == bound
    for path in ("/devices", f"/devices/{device_id}"):
        assert client.get(path, headers={"authorization": ""}).status_code == 401


def test_forwarded_certificates_count_only_from_the_trusted_ingress(tmp_path):
    ca = Ca(tmp_path, "platform")
    app, _ = build(Settings(data_dir=tmp_path / "fleet", device_ca=ca.cert_path, trusted_proxies=["10.0.0.0/8"]))
    admin = bearer(tmp_path / "fleet", "fleet", "fleet.admin", "fleet.onboard")
    with TestClient(app, headers=admin) as client:
        device_id = register(client).json()["id"]
        cert, key, _ = ca.issue(device_id)
        assert onboard(client, device_id, cert.read_text(), key).status_code == 200
        forged = {"x-forwarded-tls-client-cert": urllib.parse.quote(cert.read_text())}
        response = client.post(f"/devices/{device_id}/heartbeat", json={"status": "ok"}, headers=forged)
        assert response.status_code == 401 and "ingress" in response.json()["issue"][0]["diagnostics"]
    app.state.audit.close()


def replica(tmp_path, ca, database_url=None):
    """One fleet service process over the shared data folder (issuer key) and database."""
    app, _ = build(Settings(data_dir=tmp_path / "fleet", device_ca=ca.cert_path, trusted_proxies=INGRESS,
                            database_url=database_url))
    client = TestClient(app, headers=bearer(tmp_path / "fleet", "fleet", "fleet.admin", "fleet.read",
                                            "fleet.onboard"))
    return app, client


def answer(challenge: dict, cert_pem: str, key_path) -> dict:
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    signature = key.sign(challenge["sign"].encode(), ec.ECDSA(hashes.SHA256()))
    return {"certificate": cert_pem, "challenge": challenge["challenge"],
            "signature": base64.b64encode(signature).decode()}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_challenge_survives_a_restart_and_is_redeemed_once_across_replicas(tmp_path, database):
    from conftest import fresh_database
    import contextlib

    ca = Ca(tmp_path, "platform")
    with (fresh_database("medplat_fleet") if database == "postgresql" else contextlib.nullcontext()) as url:
        first, client = replica(tmp_path, ca, url)
        with client:
            device_id = register(client).json()["id"]
            challenge = client.post(f"/devices/{device_id}/challenge").json()
        first.state.audit.close()  # the process that issued the challenge is gone
        cert, key, _ = ca.issue(device_id)
        body = answer(challenge, cert.read_text(), key)
        restarted, client_b = replica(tmp_path, ca, url)
        other, client_c = replica(tmp_path, ca, url)  # a second live replica on the same database
        try:
            with client_b, client_c:
                assert client_b.post(f"/devices/{device_id}/onboard", json=body).status_code == 200
                # Single use: the same answer replayed to the other replica is refused.
                replayed = client_c.post(f"/devices/{device_id}/onboard", json={**body, "reprovision": True},
                                         headers={"authorization": bearer(
                                             tmp_path / "fleet", "fleet", "fleet.onboard",
                                             "fleet.reprovision")["authorization"]})
                assert replayed.status_code == 403 and "challenge" in replayed.json()["issue"][0]["diagnostics"]
        finally:
            restarted.state.audit.close()
            other.state.audit.close()


def test_challenges_expire_are_used_up_by_any_attempt_and_are_stored_only_as_digests(fleet, monkeypatch):
    import time as clock

    from sqlalchemy import create_engine, text

    client, ca, tmp_path = fleet
    device_id = register(client).json()["id"]
    cert, key, _ = ca.issue(device_id)
    challenge = client.post(f"/devices/{device_id}/challenge").json()
    engine = create_engine(f"sqlite:///{tmp_path / 'fleet' / 'fleet.sqlite'}")
    with engine.connect() as connection:
        stored = [tuple(row) for row in connection.execute(text("SELECT * FROM onboarding_challenges"))]
    engine.dispose()
    assert len(stored) == 1 and challenge["challenge"] not in repr(stored)
    # Expired: the wall clock moved past the TTL (as it would for every replica).
    later = clock.time() + challenge["expiresInSeconds"] + 1
    monkeypatch.setattr("medplat.workloads.fleet.app.time.time", lambda: later)
    expired = client.post(f"/devices/{device_id}/onboard", json=answer(challenge, cert.read_text(), key))
    assert expired.status_code == 403 and "expired" in expired.json()["issue"][0]["diagnostics"]
    monkeypatch.undo()
    # A wrong answer uses the challenge up: the right answer to the same challenge no longer works.
    challenge = client.post(f"/devices/{device_id}/challenge").json()
    _other, other_key, _ = ca.issue("attacker")
    assert client.post(f"/devices/{device_id}/onboard",
                       json=answer(challenge, cert.read_text(), other_key)).status_code == 403
    assert client.post(f"/devices/{device_id}/onboard",
                       json=answer(challenge, cert.read_text(), key)).status_code == 403
    assert client.get(f"/devices/{device_id}").json()["status"] == "registered"
    assert onboard(client, device_id, cert.read_text(), key).status_code == 200
