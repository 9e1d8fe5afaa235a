"""The attacks of issue 13, run against the real services on loopback: the ingest served by
uvicorn over mutual TLS on the real PostgreSQL server, the audit log as its own process.
Each asserts the refusal (401/403/413/4xx OperationOutcome) and that nothing was stored or lost."""
from __future__ import annotations

import ssl
import stat
import time
import uuid

import httpx
import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from conftest import fresh_database
from identities import bearer
from medplat.service.audit import AuditClient, balp_event
from medplat.service.auth import Authenticator, mint_local_token
from medplat.service.localpki import Ca
from services import Service, free_port

pytestmark = pytest.mark.slow


def observation(value: int) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "150456"}]},
            "valueQuantity": {"value": value, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}


def batch(*ids: str, seq: int = 1, **extra) -> dict:
    return {**extra, "messages": [{"id": i, "device": "pump-1", "seq": seq, "dataClass": "phi",
                                   "resource": observation(97)} for i in ids]}


def assert_outcome(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    diagnostics = outcome["issue"][0]["diagnostics"]
    assert "Traceback" not in diagnostics and "/work" not in diagnostics and "site-packages" not in diagnostics
    return outcome


@pytest.fixture(scope="module")
def database():
    with fresh_database("medplat_attacks") as url:
        yield url


@pytest.fixture(scope="module")
def ingest(tmp_path_factory, database):
    folder = tmp_path_factory.mktemp("ingest-attacks")
    ca = Ca(folder, "platform")
    server = ca.issue("localhost", server=True)
    sites = {name: ca.issue(f"edge-{name}") for name in ("dresden", "leipzig")}
    workload = ca.issue("consent")
    data = folder / "data"
    service = Service("ingest", {"data_dir": data, "database_url": database, "tls_cert": server[0],
                                 "tls_key": server[1], "tls_client_ca": ca.cert_path, "max_body_bytes": 1_000_000},
                      free_port(), folder / "ingest.log").start()

    def client(cert) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(ca.cert_path))
        context.load_cert_chain(str(cert[0]), str(cert[1]))
        return httpx.Client(base_url=f"https://127.0.0.1:{service.port}", verify=context, timeout=20)

    yield {"dresden": client(sites["dresden"]), "leipzig": client(sites["leipzig"]), "workload": client(workload),
           "database": database, "data": data, "service": service, "log": folder / "ingest.log"}
    service.stop()


def rows(database: str) -> list[tuple]:
    with psycopg.connect(database) as connection:
        return connection.execute("SELECT site, id, seq FROM messages ORDER BY site, id").fetchall()


def test_ingest_sites_read_nothing_write_only_their_own_and_cannot_poison_ids(ingest):
    dresden, leipzig = ingest["dresden"], ingest["leipzig"]
    # No bearer token: a site's certificate does not let it read anybody's PHI.
    assert_outcome(dresden.get("/messages"), 401)
    assert_outcome(dresden.get("/messages/m-1"), 401)
    # A workload certificate is not a site credential: it may not write.
    assert_outcome(ingest["workload"].post("/batches", json=batch("w-1")), 403)
    # Leipzig posts Dresden's next message id first (the pre-emptive duplicate attack)...
    assert leipzig.post("/batches", json=batch("m-1")).json()["committed"] == ["m-1"]
    # ...and Dresden's real message is still stored, not acknowledged as a duplicate and dropped.
    assert dresden.post("/batches", json=batch("m-1")).json() == {"committed": ["m-1"], "duplicates": []}
    # A batch claiming another site is refused whole.
    assert_outcome(leipzig.post("/batches", json=batch("m-2", site="dresden")), 403)
    assert rows(ingest["database"]) == [("dresden", "m-1", 1), ("leipzig", "m-1", 1)]


def test_ingest_bad_input_is_a_4xx_outcome_and_stores_nothing(ingest):
    dresden = ingest["dresden"]
    before = rows(ingest["database"])
    assert_outcome(dresden.post("/batches", json=batch("big", seq=2**63)), 422)  # beyond int64
    surrogate = b'{"messages": [{"id": "\\ud800", "device": "p", "seq": 1, "dataClass": "phi", "resource": {}}]}'
    assert_outcome(dresden.post("/batches", content=surrogate, headers={"content-type": "application/json"}), 400)
    huge = orjson.dumps(batch("huge")) + b" " * 2_000_000  # past the 1 MB limit, refused while streaming
    outcome = assert_outcome(dresden.post("/batches", content=huge, headers={"content-type": "application/json"}), 413)
    assert "exceeds" in outcome["issue"][0]["diagnostics"]
    assert_outcome(dresden.post("/batches", json={"messages": None}), 422)
    echoed = assert_outcome(dresden.post("/batches", json=batch("x" * 5000)), 422)
    assert len(echoed["issue"][0]["diagnostics"]) < 400, "input is echoed only truncated"
    assert rows(ingest["database"]) == before
    assert dresden.get("/healthz", timeout=1).json()["status"] == "ok", "the service stays healthy"


def test_ingest_audit_names_the_authenticated_site(ingest):
    ingest["leipzig"].post("/batches", json=batch("audited-0"))
    ingest["dresden"].post("/batches", json=batch("audited-1"))
    spool = ingest["data"] / "audit-spool.jsonl"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and b"audited-1" not in (spool.read_bytes() if spool.exists() else b""):
        time.sleep(0.2)
    events = [orjson.loads(line) for line in spool.read_bytes().splitlines()]
    agents = {e["agent"][0]["who"]["identifier"]["value"] for e in events}
    assert "site/dresden" in agents and "site/leipzig" in agents and "edge-forwarder" not in agents
    assert stat.S_IMODE(spool.stat().st_mode) == 0o600 and stat.S_IMODE(ingest["data"].stat().st_mode) == 0o700


@pytest.fixture(scope="module")
def audit_log(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit-attacks")
    service = Service("audit-log", {"data_dir": folder / "data"}, free_port(), folder / "audit.log").start()
    writer = bearer(folder / "data", "audit-log", "audit.write", subject="consent")
    auditor = bearer(folder / "data", "audit-log", "audit.read", subject="dpo")
    url = f"http://127.0.0.1:{service.port}"
    yield {"url": url, "writer": writer, "auditor": auditor, "data": folder / "data", "service": service}
    service.stop()


def event(**overrides) -> dict:
    return {**balp_event("read", source="consent", agent="dr-who", patient="Patient/p1"), **overrides}


def test_audit_log_needs_a_service_identity_to_append_and_an_auditor_to_read(audit_log):
    url, writer, auditor = audit_log["url"], audit_log["writer"], audit_log["auditor"]
    assert_outcome(httpx.post(f"{url}/entries", json={"events": [event()]}), 401)
    for path in ("/entries?patient=Patient/p1", "/export", "/entries/1", "/proofs/inclusion?index=1"):
        assert_outcome(httpx.get(url + path), 401)
        assert_outcome(httpx.get(url + path, headers=writer), 403)
    assert httpx.post(f"{url}/entries", json={"events": [event()]}, headers=writer).status_code == 200
    assert len(httpx.get(f"{url}/entries", params={"patient": "Patient/p1"}, headers=auditor).json()["entries"]) == 1
    # Public: the signed checkpoint and the verifier key.
    assert httpx.get(f"{url}/checkpoint").json()["size"] == 1 and httpx.get(f"{url}/verifier").status_code == 200


def test_audit_log_bounds_events_and_refuses_malformed_ones_without_500(audit_log):
    url, writer = audit_log["url"], audit_log["writer"]
    size = httpx.get(f"{url}/checkpoint").json()["size"]
    fat = event(outcomeDesc="x" * 2_000_000)  # one event of 2 MB: beyond the 1 MiB bound
    assert_outcome(httpx.post(f"{url}/entries", json={"events": [fat]}, headers=writer), 413)
    fifty_mb = b'{"events": [{"resourceType": "AuditEvent", "outcomeDesc": "' + b"x" * 50_000_000 + b'"}]}'
    assert_outcome(httpx.post(f"{url}/entries", content=fifty_mb, headers={**writer, "content-type":
                                                                          "application/json"}, timeout=60), 413)
    null_who = event()
    null_who["agent"][0]["who"] = None
    response = httpx.post(f"{url}/entries", json={"events": [null_who]}, headers=writer)
    assert 400 <= response.status_code < 500, response.text
    huge_int = orjson.dumps({"events": [event()]}).replace(b'"action":"R"', b'"action":"R","x":99999999999999999999')
    response = httpx.post(f"{url}/entries", content=huge_int, headers={**writer, "content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert httpx.get(f"{url}/checkpoint").json()["size"] == size, "nothing of a refused batch entered the log"
    assert httpx.get(f"{url}/healthz", timeout=1).status_code == 200


def test_audit_client_dead_letters_what_the_log_refuses_and_keeps_delivering(audit_log, tmp_path):
    token = tmp_path / "token"
    token.write_text(mint_local_token(audit_log["data"], "audit-log", ["audit.write"], "consent"))
    client = AuditClient(audit_log["url"], tmp_path / "spool" / "audit-spool.jsonl", token_file=token)
    before = httpx.get(f"{audit_log['url']}/checkpoint").json()["size"]
    try:
        poison = balp_event("execute", source="consent", agent="svc", patient="Patient/p9", purpose="TREAT  X")
        client.record(event(id="before-poison"))
        client.record(poison)
        client.record(event(id="after-poison"))
        assert client.flush() is True, "the poison event does not block the spool"
        assert client.dead_lettered == 1
        dead = [orjson.loads(line) for line in client.dead_letters.read_bytes().splitlines()]
        assert dead[0]["event"]["id"] == poison["id"] and dead[0]["status"] == 422
        assert stat.S_IMODE(client.dead_letters.stat().st_mode) == 0o600
        assert httpx.get(f"{audit_log['url']}/checkpoint").json()["size"] == before + 2
        # A batch record of the ingest's largest batch (5,000 entities) is within the event bound.
        client.record(balp_event("create", source="ingest", agent="site/dresden",
                                 entities=[f"Observation/site-dresden-{i:07d}" for i in range(5000)]))
        assert client.flush() is True and client.pending() == 0 and client.dead_lettered == 1
    finally:
        client.close()


def test_consent_and_pseudonymizer_answer_hostile_input_with_4xx_outcomes(tmp_path):
    from medplat.workloads.consent.app import Settings as ConsentSettings, build as build_consent
    from medplat.workloads.pseudonymizer.app import Settings as PseudoSettings, build as build_pseudonymizer

    consent_app, _ = build_consent(ConsentSettings(data_dir=tmp_path / "consent", max_body_bytes=100_000))
    with TestClient(consent_app, headers=bearer(tmp_path / "consent", "consent", "consent.write",
                                                subject="registrar")) as consent:
        null_patient = {"resourceType": "Consent", "status": "active", "patient": None,
                        "scope": {"coding": [{"code": "research"}]}, "category": [{"coding": [{"code": "x"}]}],
                        "provision": {"type": "permit"}}
        assert_outcome(consent.post("/Consent", json=null_patient), 422)
        assert_outcome(consent.post("/Consent", content=b"[" + b"1," * 100_000 + b"1]",
                                    headers={"content-type": "application/json"}), 413)
    consent_app.state.audit.close()
    pseudo_app, _ = build_pseudonymizer(PseudoSettings(data_dir=tmp_path / "pseudo"))
    with TestClient(pseudo_app, headers=bearer(tmp_path / "pseudo", "pseudonymizer", "pseudonym.admin",
                                               "pseudonym.create")) as pseudo:
        assert pseudo.post("/domains", json={"name": "study-1", "dataClass": "pseudonymized"}).status_code == 201
        surrogate = b'{"values": ["\\ud800"]}'
        assert_outcome(pseudo.post("/domains/study-1/pseudonymize", content=surrogate,
                                   headers={"content-type": "application/json"}), 400)
        assert_outcome(pseudo.post("/domains/study-1/pseudonymize", json={"values": ["a" * 5000]}), 422)
    pseudo_app.state.audit.close()


def test_a_scope_claim_that_is_not_a_string_is_refused_not_a_500(tmp_path):
    from joserfc import jwt

    from medplat.service.auth import ALGORITHMS, LOCAL_ISSUER, _local_key
    from medplat.workloads.consent.app import Settings, build

    app, _ = build(Settings(data_dir=tmp_path))
    key = _local_key(tmp_path)
    now = int(time.time())
    token = jwt.encode({"alg": "Ed25519", "kid": key.kid}, {"iss": LOCAL_ISSUER, "aud": "consent", "sub": "x",
                                                            "scope": 7, "iat": now, "exp": now + 60}, key,
                       algorithms=ALGORITHMS)
    with TestClient(app) as client:
        response = client.get("/Consent", params={"patient": "Patient/p1"}, headers={"authorization": f"Bearer {token}"})
    assert_outcome(response, 401)
    app.state.audit.close()


def test_bad_tokens_do_not_make_the_service_hammer_the_identity_provider(tmp_path):
    from medplat.service.settings import ServiceSettings

    auth = Authenticator("consent", ServiceSettings(data_dir=tmp_path))
    fetches = []
    auth.source = "https://idp.example/jwks"  # as if configured remotely; count what a refetch would cost
    auth._fetch = lambda: fetches.append(1) or auth.keys
    auth._fetched_at = time.monotonic() - 3600
    for _ in range(200):
        with pytest.raises(Exception):
            auth.verify("eyJhbGciOiJFZDI1NTE5Iiwia2lkIjoibm9wZSJ9.e30.c2ln")
    assert len(fetches) == 1, "one refetch per interval, however many bad tokens arrive"


def test_databases_and_keys_are_private_files_in_private_folders(tmp_path):
    from medplat.workloads.consent.app import Settings, build

    app, settings = build(Settings(data_dir=tmp_path / "consent"))
    app.state.audit.close()
    for path in (settings.data_dir / "consent.sqlite", settings.data_dir / "auth" / "issuer.jwk"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700


def test_site_broker_refuses_anonymous_clients_and_enforces_the_topic_acl(tmp_path):
    """The shipped mosquitto.conf and ACL on the real broker: no anonymous login, adapters cannot
    read device data, the forwarder cannot inject it."""
    import paho.mqtt.client as mqtt

    from services import Mosquitto

    broker = Mosquitto(tmp_path / "broker")
    clients = []

    def connect(user: str | None, password: str | None = None) -> tuple[mqtt.Client, list, list]:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"acl-{uuid.uuid4().hex[:6]}")
        outcome, received = [], []
        client.on_connect = lambda _c, _u, _f, reason, _p: outcome.append(reason.is_failure)
        client.on_message = lambda _c, _u, message: received.append(message.payload)
        if user:
            client.username_pw_set(user, password if password is not None else f"pw-{user}")
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        clients.append(client)
        deadline = time.monotonic() + 5
        while not outcome and time.monotonic() < deadline:
            time.sleep(0.05)
        return client, outcome, received

    try:
        assert connect(None)[1] == [True], "anonymous login refused"
        assert connect("sdc-bridge", "wrong")[1] == [True], "wrong password refused"
        forwarder, ok, forwarded = connect("edge-forwarder")
        adapter, ok2, snooped = connect("sdc-bridge")
        assert ok == [False] and ok2 == [False]
        forwarder.subscribe("medplat/devices/#", qos=1)
        adapter.subscribe("medplat/devices/#", qos=1)
        time.sleep(0.3)
        adapter.publish("medplat/devices/pump-1/observation", b"legit", qos=1).wait_for_publish(5)
        forwarder.publish("medplat/devices/pump-1/observation", b"injected", qos=1).wait_for_publish(5)
        time.sleep(0.5)
        assert forwarded == [b"legit"], "the forwarder reads device data but cannot inject any"
        assert snooped == [], "an adapter cannot read other devices' data"
    finally:
        for client in clients:
            client.loop_stop()
            client.disconnect()
        broker.stop()


def test_fleet_over_tls_takes_device_identity_from_the_handshake_never_from_a_header(tmp_path):
    """The fleet as its spec deploys it: HTTPS, client certificates optional (devices present
    theirs, operators use bearer tokens), forwarded certificate headers refused from a non-proxy."""
    import base64
    import urllib.parse

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca = Ca(tmp_path, "platform")
    server = ca.issue("localhost", server=True)
    data = tmp_path / "fleet"
    service = Service("fleet", {"data_dir": data, "tls_cert": server[0], "tls_key": server[1],
                                "tls_client_ca": ca.cert_path, "tls_client_optional": "true",
                                "device_ca": ca.cert_path}, free_port(), tmp_path / "fleet.log").start()
    url = f"https://127.0.0.1:{service.port}"
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    operator = httpx.Client(base_url=url, verify=context, timeout=20,
                            headers=bearer(data, "fleet", "fleet.admin", "fleet.onboard", "fleet.read"))
    try:
        assert_outcome(httpx.get(f"{url}/devices", verify=context), 401)
        device_id = operator.post("/devices", json={"udi": "(01)10884521062856(21)77", "site": "dresden",
                                                    "hardware": "pump-x"}).json()["id"]
        cert, key, _ = ca.issue(device_id)
        challenge = operator.post(f"/devices/{device_id}/challenge").json()
        signature = serialization.load_pem_private_key(key.read_bytes(), None).sign(
            challenge["sign"].encode(), ec.ECDSA(hashes.SHA256()))
        assert operator.post(f"/devices/{device_id}/onboard", json={
            "certificate": cert.read_text(), "challenge": challenge["challenge"],
            "signature": base64.b64encode(signature).decode()}).status_code == 200
        # Anyone may copy the (public) certificate into the header: refused, 127.0.0.1 is no trusted proxy.
        forged = {"x-forwarded-tls-client-cert": urllib.parse.quote(cert.read_text())}
        assert_outcome(httpx.post(f"{url}/devices/{device_id}/heartbeat", json={"status": "ok"}, headers=forged,
                                  verify=context), 401)
        device_context = ssl.create_default_context(cafile=str(ca.cert_path))
        device_context.load_cert_chain(str(cert), str(key))
        beat = httpx.post(f"{url}/devices/{device_id}/heartbeat", json={"status": "ok"}, verify=device_context)
        assert beat.status_code == 200 and beat.json()["lastHeartbeat"]
        assert operator.get(f"/devices/{device_id}").json()["status"] == "ok"
    finally:
        operator.close()
        service.stop()


def test_local_tls_keys_are_private(tmp_path):
    _cert, key, _ = Ca(tmp_path, "platform").issue("edge-dresden")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
