"""A local edge + cloud pair on embedded defaults, for the quickstart's main job.

The EU ingest (SQLite, mutual TLS with a throwaway local CA) and an edge-forwarder (SQLite
outbox) run in this process on loopback. Sample device data is queued while the cloud is
still down, then the cloud comes up and the backlog drains. Nothing here is deployed; a
real site gets its certificates from PlatformPki and its policy from the EU stack.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import uvicorn

from medplat.service.localpki import Ca
from medplat.service.tls import server_config


@dataclass(frozen=True)
class PairResult:
    produced: int
    queued_while_offline: int
    refused_at_edge: dict[str, int]
    delivered: int
    stored_in_cloud: int
    seconds: float
    folder: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_messages(count: int, devices: int = 4) -> list[bytes]:
    """SpO2 Observations from `devices` bedside monitors, plus two a site must refuse."""
    messages = []
    for n in range(count):
        device = f"monitor-{n % devices + 1}"
        messages.append(orjson.dumps({
            "id": f"{device}-{n // devices:06d}", "device": device, "dataClass": "phi",
            "resource": {"resourceType": "Observation", "status": "final",
                         "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "150456",
                                              "display": "MDC_PULS_OXIM_SAT_O2"}]},
                         "valueQuantity": {"value": 90 + n % 10, "unit": "%", "system": "http://unitsofmeasure.org",
                                           "code": "%"}}}))
    messages.append(orjson.dumps({"id": "key-1", "device": "hsm", "dataClass": "key-material",
                                  "resource": {"resourceType": "Basic", "code": {"text": "wrapped key"}}}))
    messages.append(b'{"id": "broken"')
    return messages


def run(folder: Path, count: int = 2000, timeout: float = 60) -> PairResult:
    from medplat.workloads.edge_forwarder.app import Forwarder
    from medplat.workloads.edge_forwarder.app import Settings as ForwarderSettings
    from medplat.workloads.ingest.app import Settings as IngestSettings
    from medplat.workloads.ingest.app import build as build_ingest

    folder.mkdir(parents=True, exist_ok=True)
    pki = folder / "pki"
    pki.mkdir(exist_ok=True)
    ca = Ca(pki, "local-platform")
    server_cert, server_key, _ = ca.issue("localhost", server=True)
    client_cert, client_key, _ = ca.issue("edge-local")
    port = _free_port()
    forwarder = Forwarder(ForwarderSettings(
        data_dir=folder / "edge", cloud_url=f"https://127.0.0.1:{port}", cloud_ca=ca.cert_path,
        client_cert=client_cert, client_key=client_key, backoff_base_s=0.05, backoff_cap_s=0.5))
    start = time.monotonic()
    # The outage is staged: the forwarder's "cloud unreachable" warnings are expected here.
    logging.getLogger("medplat.edge-forwarder").setLevel(logging.ERROR)
    forwarder.start()  # the cloud is not up yet: everything waits in the outbox
    settled = threading.Semaphore(0)
    for raw in sample_messages(count):
        forwarder.intake.submit(raw, lambda *_: settled.release())
    for _ in range(count + 2):
        if not settled.acquire(timeout=timeout):
            raise TimeoutError("the edge outbox did not commit the sample data")
    offline = forwarder.outbox.stats()

    app, settings = build_ingest(IngestSettings(
        data_dir=folder / "cloud", port=port, tls_cert=server_cert, tls_key=server_key,
        tls_client_ca=ca.cert_path, log_level="warning"))
    server = uvicorn.Server(server_config(app, settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while forwarder.outbox.stats().depth and time.monotonic() < deadline:
            time.sleep(0.05)
        final = forwarder.outbox.stats()
        if final.depth:
            raise TimeoutError(f"{final.depth} messages still queued at the edge after {timeout} s")
        from sqlalchemy import func, select

        from medplat.workloads.ingest.app import messages
        with app.state.engine.connect() as connection:
            stored = connection.execute(select(func.count()).select_from(messages)).scalar_one()
    finally:
        forwarder.stop()
        server.should_exit = True
        thread.join(timeout=10)
    return PairResult(produced=count + 2, queued_while_offline=offline.depth, refused_at_edge=final.refused,
                      delivered=final.sent, stored_in_cloud=stored, seconds=round(time.monotonic() - start, 2),
                      folder=folder)
