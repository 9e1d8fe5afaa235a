"""ingest: idempotent, all-or-nothing FHIR batches on SQLite and real PostgreSQL; mTLS only."""
from __future__ import annotations

import ssl

import httpx
import pytest
from fastapi.testclient import TestClient

from medplat.workloads.ingest.app import Settings, build
from medplat.service.localpki import Ca
from identities import INGRESS, bearer, forwarded_cert
from services import Service, free_port

def observation(value: float) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "150456"}]},
            "valueQuantity": {"value": value, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}


def batch(*items):
    return {"messages": [{"id": i, "device": "pump-1", "seq": s, "dataClass": "phi", "resource": observation(s)}
                         for i, s in items]}


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request, tmp_path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    app, _settings = build(Settings(data_dir=tmp_path, database_url=url, trusted_proxies=INGRESS))
    site = forwarded_cert(Ca(tmp_path, "platform"), "edge-dresden")
    with TestClient(app, headers={**site, **bearer(tmp_path, "ingest", "ingest.read")}) as test_client:
        yield test_client


def test_duplicates_are_acknowledged_and_stored_once(client):
    first = client.post("/batches", json=batch(("a", 1), ("b", 2)))
    assert first.status_code == 200 and first.json() == {"committed": ["a", "b"], "duplicates": []}
    again = client.post("/batches", json=batch(("b", 2), ("c", 3)))
    assert again.json() == {"committed": ["c"], "duplicates": ["b"]}
    stored = client.get("/messages", params={"device": "pump-1"}).json()["messages"]
    assert [m["id"] for m in stored] == ["a", "b", "c"]
    assert client.get("/readyz").json()["hasData"] is True


def test_one_invalid_resource_rejects_the_whole_batch(client):
    bad = batch(("x", 1), ("y", 2))
    bad["messages"][1]["resource"] = {"resourceType": "Observation", "status": "final"}  # no code
    response = client.post("/batches", json=bad)
    assert response.status_code == 422 and response.headers["content-type"] == "application/fhir+json"
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["messages[1].resource.code"]
    assert client.get("/messages").json()["messages"] == [], "nothing of a rejected batch is stored"


def test_key_material_and_unknown_types_are_refused(client):
    message = batch(("k", 1))
    message["messages"][0]["dataClass"] = "key-material"
    response = client.post("/batches", json=message)
    assert response.status_code == 422 and response.json()["issue"][0]["code"] == "business-rule"
    message = batch(("u", 1))
    message["messages"][0]["resource"] = {"resourceType": "Spaceship"}
    assert "unknown FHIR resourceType" in client.post("/batches", json=message).json()["issue"][0]["diagnostics"]
    assert client.get("/messages/nope").status_code == 404


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, other = Ca(folder, "platform"), Ca(folder, "stranger")
    server_cert, server_key, _ = ca.issue("localhost", server=True)
    good = ca.issue("edge-dresden")
    revoked = ca.issue("edge-revoked")
    expired = ca.issue("edge-expired", expired=True)
    foreign = other.issue("edge-foreign")
    crl = ca.crl([revoked[2]])
    # The server's CA file holds the CA and its CRL (VERIFY_CRL_CHECK_LEAF needs both).
    health = free_port()
    service = Service("ingest", {"data_dir": folder / "data", "tls_cert": server_cert, "tls_key": server_key,
                                 "tls_client_ca": ca.cert_path, "tls_crl": crl, "health_port": health},
                      free_port(), folder / "ingest.log").start()
    yield {"url": f"https://127.0.0.1:{service.port}", "port": service.port, "health": health, "ca": ca.cert_path,
           "good": good, "revoked": revoked, "expired": expired, "foreign": foreign}
    service.stop()


def _client(server, cert=None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(server["ca"]))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return httpx.Client(verify=context, timeout=5)


def test_valid_client_certificate_is_accepted(mtls_server):
    with _client(mtls_server, mtls_server["good"]) as client:
        response = client.post(f"{mtls_server['url']}/batches", json=batch(("tls-1", 1)))
    assert response.status_code == 200 and response.json()["committed"] == ["tls-1"]


@pytest.mark.parametrize("which", [None, "foreign", "expired", "revoked"],
                         ids=["no-client-cert", "other-ca", "expired", "revoked"])
def test_bad_client_certificates_are_refused(mtls_server, which):
    cert = mtls_server[which] if which else None
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)):
        with _client(mtls_server, cert) as client:
            client.post(f"{mtls_server['url']}/batches", json=batch((f"bad-{which}", 1)))


def test_probes_reach_health_over_plain_http_but_nothing_else(mtls_server):
    url = f"http://127.0.0.1:{mtls_server['health']}"
    assert httpx.get(f"{url}/healthz", timeout=5).json()["status"] == "ok"
    assert httpx.post(f"{url}/batches", json=batch(("probe", 1)), timeout=5).status_code in (404, 405)


def test_plain_http_is_refused(mtls_server):
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
        httpx.post(f"http://127.0.0.1:{mtls_server['port']}/batches", json=batch(("plain", 1)), timeout=5)


def test_serve_names_the_runnable_workloads():
    from typer.testing import CliRunner

    from medplat.cli import app
    from medplat.workloads import runnable

    result = CliRunner().invoke(app, ["serve", "no-such-workload"])
    assert result.exit_code == 2
    assert {"ingest", "edge-forwarder", "audit-log", "fleet"} <= set(runnable())
    assert result.stderr.strip() == ("medplat: error: no runnable workload 'no-such-workload'; runnable: "
                                     + ", ".join(runnable()))
