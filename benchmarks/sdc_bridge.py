"""Benchmark: SDC metric updates/s from an sdc11073 provider through the bridge (episodic
metric reports, FHIR mapping and validation) to a real Mosquitto broker (QoS 1, PUBACK).
Run on demand:
    python benchmarks/sdc_bridge.py [--updates 2000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import orjson  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

from services import Mosquitto  # noqa: E402
from test_sdc_bridge import Monitor, bridge_for, wait  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = Mosquitto(folder / "broker")
        received = []
        subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}")
        subscriber.on_message = lambda _c, _u, m: received.append(m.payload)
        broker.login(subscriber, "edge-forwarder")
        subscriber.connect("127.0.0.1", broker.port)
        subscriber.subscribe("medplat/devices/+/observation", qos=1)
        subscriber.loop_start()
        monitor = Monitor()
        app, publisher = bridge_for(folder, broker.url_for("sdc-bridge"), providers=[monitor.xaddr])
        try:
            wait(lambda: app.state.bridge.status()["providers"].get(monitor.xaddr))
            start = time.perf_counter()
            for i in range(args.updates):
                monitor.metric("spo2", str(80 + i % 20))
            wait(lambda: len(received) >= args.updates, timeout=600)
            seconds = time.perf_counter() - start
            values = [orjson.loads(p)["resource"]["valueQuantity"]["value"] for p in received[-3:]]
        finally:
            app.state.bridge.stop()
            publisher.close()
            monitor.stop()
            subscriber.loop_stop()
            broker.stop()
    print(f"sdc-bridge: {len(received)} of {args.updates} metric updates as FHIR Observations on MQTT in "
          f"{seconds:.1f} s = {len(received) / seconds:,.0f} updates/s (one provider, one report per update); "
          f"last values {values}")


if __name__ == "__main__":
    main()
