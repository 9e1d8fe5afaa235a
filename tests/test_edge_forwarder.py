"""edge-forwarder: bounded disk, egress policy, cloud rejections, mTLS trust, backoff, outbox."""
from __future__ import annotations

import json
import time

import httpx
import orjson
import pytest

from medplat.service.localpki import Ca
from medplat.workloads.edge_forwarder.outbox import Outbox
from medplat.service.backoff import Backoff
from services import Mosquitto, free_port
from store_forward import (Pki, Publisher, forwarder_headers, forwarder_service, ingest_service, observation, status, stored,
                           stored_count, wait_until)

PAD = "x" * 1000


def message(n: int, data_class: str = "phi", device: str = "pump-1", pad: bool = False) -> dict:
    resource = observation(n)
    if pad:
        resource["note"] = [{"text": PAD}]
    return {"id": f"{device}-{n}", "device": device, "dataClass": data_class, "resource": resource}


def post(service, *messages) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{service.port}/messages", json=list(messages), timeout=30,
                      headers=forwarder_headers(service))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def services(tmp_path, pki, postgres_url):
    started = []

    def make(kind: str, **kwargs):
        if kind == "ingest":
            service = ingest_service(tmp_path, pki, postgres_url)
        else:
            service = forwarder_service(tmp_path, pki, kwargs.pop("cloud_port"), kwargs.pop("broker", None), **kwargs)
        started.append(service)
        return service

    yield make
    for service in reversed(started):
        service.stop()


def test_disk_full_refuses_new_data_loudly_and_keeps_what_is_queued(services, postgres_url):
    ingest = services("ingest")  # not started yet: the uplink is down
    forwarder = services("forwarder", cloud_port=ingest.port, max_bytes=131072, alarm_ratio=0.5).start()
    accepted, refused, states, n = 0, 0, [], 0
    while True:
        response = post(forwarder, *(message(n + i, pad=True) for i in range(5)))
        n += 5
        states.append(status(forwarder)["status"])
        if response.status_code == 507:
            refused += 5
            break
        assert response.status_code == 202, response.text
        accepted += response.json()["stored"]
        refused += len(response.json()["refused"])  # the part of a batch that no longer fits
        assert n < 1000, "the size limit was never reached"
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and "outbox full" in outcome["issue"][0]["diagnostics"]
    assert "alarm" in states and states.index("alarm") < states.index("full"), "alarm must come before the limit"
    full = status(forwarder)
    assert full["status"] == "full" and full["queueDepth"] == accepted, "queued data must stay untouched"
    assert full["refused"]["outbox-full"] == refused
    assert "medplat_outbox_alarm 1.0" in httpx.get(f"http://127.0.0.1:{forwarder.port}/metrics").text
    refusal = httpx.get(f"http://127.0.0.1:{forwarder.port}/refusals", headers=forwarder_headers(forwarder)).json()["refusals"][0]
    assert refusal["reason"] == "outbox-full" and refusal["id"] == f"pump-1-{n - 1}"

    ingest.start()  # the uplink is back: the backlog drains and intake reopens
    wait_until(lambda: status(forwarder)["queueDepth"] == 0, 60, what="the backlog to drain")
    assert stored_count(postgres_url) == accepted
    assert post(forwarder, message(10_000, pad=True)).status_code == 202
    assert status(forwarder)["status"] == "ok"


def test_backpressure_mode_leaves_messages_with_the_broker_and_loses_none(services, tmp_path, postgres_url):
    broker = Mosquitto(tmp_path / "broker")
    try:
        ingest = services("ingest")
        forwarder = services("forwarder", cloud_port=ingest.port, broker=broker, max_bytes=131072,
                             on_full="backpressure").start()
        wait_until(lambda: status(forwarder)["brokerConnected"], 20, what="the broker subscription")
        publisher = Publisher(broker)
        for n in range(300):
            publisher.publish("pump-1", orjson.dumps(message(n, pad=True)))
        publisher.wait()
        wait_until(lambda: status(forwarder)["status"] == "full", 30, what="the outbox to fill")
        held = status(forwarder)
        assert 0 < held["queueDepth"] < 300 and held["refused"] == {}, held
        ingest.start()
        wait_until(lambda: stored_count(postgres_url) == 300, 90, what="all 300 messages at the ingest")
        values = [value for *_rest, value in sorted(stored(postgres_url), key=lambda row: row[2])]
        assert values == [float(n) for n in range(300)], "order kept across the backpressure pause"
        publisher.close()
    finally:
        broker.stop()


def test_site_policy_refuses_data_classes_that_may_not_leave(services, tmp_path, postgres_url):
    policy = tmp_path / "site-policy.json"
    policy.write_text(json.dumps({"site": "dresden", "egressDataClasses": ["deidentified", "operational", "phi"],
                                  "refusedDataClasses": ["key-material", "phi"]}))
    ingest = services("ingest")
    forwarder = services("forwarder", cloud_port=ingest.port, site_policy=policy).start()
    response = post(forwarder, message(1, "phi"), message(2, "deidentified"), message(3, "key-material"))
    assert response.status_code == 202
    body = response.json()
    assert body["stored"] == 1 and [r["index"] for r in body["refused"]] == [0, 2]
    assert "may not leave site 'dresden'" in body["refused"][0]["reason"]
    # The cloud pushes a stricter policy while the message is queued: it is refused, not sent.
    time.sleep(0.01)
    policy.write_text(json.dumps({"site": "dresden", "egressDataClasses": ["operational"]}))
    ingest.start()
    wait_until(lambda: status(forwarder)["queueDepth"] == 0, 30, what="the queue to settle")
    assert stored_count(postgres_url) == 0, "nothing the policy forbids reaches the cloud"
    assert status(forwarder)["refused"] == {"policy": 3}
    reasons = {r["id"]: r["reason"] for r in httpx.get(f"http://127.0.0.1:{forwarder.port}/refusals", headers=forwarder_headers(forwarder)).json()["refusals"]}
    assert reasons == {"pump-1-1": "policy", "pump-1-2": "policy", "pump-1-3": "policy"}


def test_a_message_the_cloud_rejects_is_set_aside_and_the_rest_flows(services, postgres_url):
    ingest = services("ingest").start()
    forwarder = services("forwarder", cloud_port=ingest.port).start()
    invalid = message(2)
    del invalid["resource"]["code"]  # passes the envelope check, fails FHIR validation at the ingest
    assert post(forwarder, message(1), invalid, message(3)).status_code == 202
    wait_until(lambda: status(forwarder)["queueDepth"] == 0, 30, what="the queue to settle")
    assert sorted(row[0] for row in stored(postgres_url)) == ["pump-1-1", "pump-1-3"]
    refusal = httpx.get(f"http://127.0.0.1:{forwarder.port}/refusals", headers=forwarder_headers(forwarder)).json()["refusals"][0]
    assert refusal["id"] == "pump-1-2" and refusal["reason"] == "rejected-by-cloud"
    assert "messages[1].resource.code" in refusal["detail"]


def test_a_client_certificate_from_another_ca_sends_nothing_and_deletes_nothing(services, tmp_path, pki):
    stranger = Ca(tmp_path, "stranger").issue("edge-foreign")
    ingest = services("ingest").start()
    forwarder = services("forwarder", cloud_port=ingest.port, client_cert=stranger[0], client_key=stranger[1]).start()
    assert post(forwarder, message(1)).status_code == 202
    wait_until(lambda: status(forwarder)["lastError"], 20, what="a send attempt")
    time.sleep(1)
    state = status(forwarder)
    assert state["queueDepth"] == 1 and state["sent"] == 0 and not state["cloudConnected"]
    assert "cloud unreachable" in state["lastError"]


def test_malformed_http_intake_gets_an_operation_outcome(services):
    forwarder = services("forwarder", cloud_port=free_port()).start()
    response = httpx.post(f"http://127.0.0.1:{forwarder.port}/messages", content=b"{not json", timeout=10,
                          headers=forwarder_headers(forwarder))
    assert response.status_code == 400 and response.json()["resourceType"] == "OperationOutcome"
    body = post(forwarder, {"id": "x", "device": "d", "dataClass": "gossip", "resource": {}}).json()
    assert body["stored"] == 0 and "malformed: dataClass" in body["refused"][0]["reason"]


def test_backoff_grows_with_full_jitter_up_to_the_cap_and_resets():
    backoff = Backoff(base=0.2, cap=5)
    samples = {attempt: [] for attempt in range(8)}
    for _ in range(300):
        backoff.reset()
        for attempt in range(8):
            samples[attempt].append(backoff.next_delay())
    for attempt, values in samples.items():
        bound = min(5, 0.2 * 2 ** attempt)
        assert all(0 <= v <= bound for v in values)
        assert max(values) > bound * 0.8, "full jitter spreads over the whole interval"
    assert max(samples[7]) <= 5


def test_outbox_ignores_redelivered_ids_and_never_reuses_positions(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite")
    assert outbox.append([("a", "d", "phi", b"{}"), ("b", "d", "phi", b"{}")], []) == 2
    assert outbox.append([("b", "d", "phi", b"{}"), ("c", "d", "phi", b"{}")], []) == 1
    entries = outbox.peek(10)
    assert [e.id for e in entries] == ["a", "b", "c"]
    outbox.remove([e.pos for e in entries], sent=3)
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.sqlite")
    reopened.append([("d", "d", "phi", b"{}")], [])
    assert reopened.peek(1)[0].pos > entries[-1].pos, "positions are the per-site sequence: never reused"
    assert reopened.stats().sent == 3
