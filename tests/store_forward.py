"""A site broker, an mTLS ingest on real PostgreSQL and an edge-forwarder, for the
store-and-forward tests and benchmark."""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as mqtt
import psycopg

from medplat.service.localpki import Ca
from services import Mosquitto, Service, free_port


def observation(value: float) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "150456"}]},
            "valueQuantity": {"value": value, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}


def envelope(device: str, n: int, data_class: str = "phi") -> bytes:
    return orjson.dumps({"id": f"{device}-{n:07d}", "device": device, "dataClass": data_class,
                         "resource": observation(n)})


class Pki:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = Ca(folder, "platform")
        self.server = self.ca.issue("localhost", server=True)
        self.client = self.ca.issue("edge-site")


def ingest_service(folder: Path, pki: Pki, database_url: str | None = None) -> Service:
    settings = {"data_dir": folder / "ingest", "tls_cert": pki.server[0], "tls_key": pki.server[1],
                "tls_client_ca": pki.ca.cert_path}
    if database_url:
        settings["database_url"] = database_url
    return Service("ingest", settings, free_port(), folder / "ingest.log")


def forwarder_service(folder: Path, pki: Pki, cloud_port: int, broker: Mosquitto | None, **extra) -> Service:
    settings = {"data_dir": folder / "forwarder", "cloud_url": f"https://127.0.0.1:{cloud_port}",
                "cloud_ca": pki.ca.cert_path, "client_cert": pki.client[0], "client_key": pki.client[1],
                "backoff_cap_s": 2, **extra}
    if broker is not None:
        settings["broker_url"] = broker.url_for("edge-forwarder")
    return Service("edge-forwarder", settings, free_port(), folder / "forwarder.log")


class Publisher:
    """A producer publishing QoS 1 envelopes; `wait()` returns once the broker acknowledged all."""

    def __init__(self, broker: Mosquitto, client_id: str = "test-producer") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        broker.login(self.client, "sdc-bridge")  # a device adapter: may publish device data
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, device: str, payload: bytes) -> None:
        self.infos.append(self.client.publish(f"medplat/devices/{device}/observation", payload, qos=1))

    def wait(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for info in self.infos:
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "the broker did not acknowledge every message"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stored(database_url: str) -> list[tuple[str, str, int, float]]:
    """(id, device, seq, producer value) of every message the ingest stored."""
    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT id, device, seq, (payload->'valueQuantity'->>'value')::float FROM messages").fetchall()


def stored_count(database_url: str) -> int:
    with psycopg.connect(database_url) as connection:
        return connection.execute("SELECT count(*) FROM messages").fetchone()[0]


def forwarder_headers(service: Service) -> dict[str, str]:
    """A bearer token from the forwarder's local issuer, for producers and operators."""
    from medplat.service.auth import mint_local_token

    data_dir = Path(service.env["MEDPLAT_EDGE_FORWARDER_DATA_DIR"])
    token = mint_local_token(data_dir, "edge-forwarder", ["forwarder.submit", "forwarder.read"], "test-producer")
    return {"authorization": f"Bearer {token}"}


def status(service: Service) -> dict:
    return httpx.get(f"http://127.0.0.1:{service.port}/status", headers=forwarder_headers(service), timeout=10).json()


def wait_until(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
