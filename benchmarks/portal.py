"""Benchmark: the portal's ward view with 500 patients, and Observation-to-stream latency.

1. Ward render: GET /ward for a clinician whose ward holds 500 patients (each with five vitals and an
   hour of history), through the whole app (session read from the encrypted store, audit record, Jinja2
   render), p50/p95 over 100 requests, after `settle_heap()` as the served portal does;
   next to the bare Jinja2 render of the same rows (the peer: the template engine alone).
2. Observation → live stream: an Observation published on a real Mosquitto (the site broker config)
   until its server-sent event arrives at an HTTP client of the portal (uvicorn), p50/p95 over 50;
   next to the bare broker round trip (publish → a paho subscriber) measured in the same run.
Goals (issue 19): ward render p95 < 200 ms; Observation-to-screen < 1 s. Run on demand:
    python benchmarks/portal.py
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import uvicorn
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from portal_helpers import sign_in  # noqa: E402
from services import Mosquitto, free_port, wait_for_port  # noqa: E402

from medplat.workloads.portal import sources  # noqa: E402
from medplat.workloads.portal.app import Settings, build, settle_heap  # noqa: E402

HISTORY_POINTS = 60


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def ward_render(folder: Path) -> None:
    census = sources.demo_census(500, wards=("ward-a",))
    app, settings = build(Settings(data_dir=folder / "ward", base_url="http://testserver"), census=census)
    for minute in range(HISTORY_POINTS):  # an hour of history per vital sign, as a running ward has
        for patient in census.patients.values():
            for code, value in (("8867-4", 80), ("59408-5", 97), ("9279-1", 16), ("8480-6", 120), ("8310-5", 37)):
                app.state.vitals.ingest({"device": patient.devices[0], "resource": {
                    "resourceType": "Observation", "code": {"coding": [{"code": code}]},
                    "valueQuantity": {"value": value + minute % 3}}})
    client = TestClient(app)
    sign_in(client, "dr-ward-a", settings.data_dir)
    settle_heap()  # as `medplat serve portal` does before serving
    timings = []
    for _ in range(100):
        started = time.perf_counter()
        response = client.get("/ward")
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200 and response.text.count('href="/patient/') == 500
    from fastapi.templating import Jinja2Templates
    templates = Jinja2Templates(directory=str(Path(sources.__file__).parent / "templates"))
    rows = [sources.ward_row(p, app.state.vitals.latest(p.id), len(census.active_alarms(p.id)))
            for p in census.of_wards({"ward-a"})]
    bare = []
    for _ in range(100):
        started = time.perf_counter()
        templates.get_template("ward_rows.html").render(rows=rows, labels=sources.LABELS)
        bare.append((time.perf_counter() - started) * 1000)
    print(f"ward view, 500 patients: p50 {statistics.median(timings):.1f} ms, p95 {p95(timings):.1f} ms "
          f"(goal < 200 ms) | peer: Jinja2 rows alone p50 {statistics.median(bare):.1f} ms, p95 {p95(bare):.1f} ms")
    app.state.audit.close()


def live_latency(folder: Path) -> None:
    broker = Mosquitto(folder / "broker")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app, settings = build(Settings(data_dir=folder / "live", base_url=base))
    subscriber = sources.subscribe(app.state.vitals, broker.url_for("portal"), "portal-bench", None, None)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}")
    Mosquitto.login(publisher, "sdc-bridge")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    # The peer: the bare broker round trip to a second subscriber (logged in as the forwarder).
    arrived: dict[str, float] = {}
    peer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"peer-{uuid.uuid4().hex[:6]}")
    Mosquitto.login(peer, "edge-forwarder")
    peer.on_message = lambda _c, _u, m: arrived.setdefault(json.loads(m.payload)["id"], time.perf_counter())
    peer.connect("127.0.0.1", broker.port)
    peer.subscribe("medplat/devices/+/+", qos=0)
    peer.loop_start()
    time.sleep(0.5)
    try:
        client = httpx.Client(base_url=base)
        sign_in(client, "dr-ward-a", settings.data_dir)
        patient = next(p for p in app.state.census.patients.values() if p.ward == "ward-a")
        screen, broker_only = [], []
        with client.stream("GET", f"/patient/{patient.id}/events", timeout=10) as stream:
            lines = stream.iter_lines()
            next(lines)
            time.sleep(0.3)
            for i in range(50):
                mid = str(uuid.uuid4())
                envelope = {"id": mid, "device": patient.devices[0], "dataClass": "phi", "resource": {
                    "resourceType": "Observation", "code": {"coding": [{"code": "8867-4"}]},
                    "valueQuantity": {"value": 60 + i}}}
                sent = time.perf_counter()
                publisher.publish(f"medplat/devices/{patient.devices[0]}/observation", json.dumps(envelope), qos=1)
                next(line for line in lines if line.startswith("data:"))
                screen.append((time.perf_counter() - sent) * 1000)
                time.sleep(0.05)
                if mid in arrived:
                    broker_only.append((arrived[mid] - sent) * 1000)
        print(f"Observation -> SSE client: p50 {statistics.median(screen):.1f} ms, p95 {p95(screen):.1f} ms "
              f"(goal < 1000 ms) | peer: broker round trip alone p50 {statistics.median(broker_only):.1f} ms, "
              f"p95 {p95(broker_only):.1f} ms")
    finally:
        publisher.loop_stop()
        peer.loop_stop()
        subscriber.loop_stop()
        server.should_exit = True
        thread.join(timeout=10)
        broker.stop()
        app.state.audit.close()


def main() -> None:
    import os
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        ward_render(Path(tmp))
        live_latency(Path(tmp))


if __name__ == "__main__":
    main()
