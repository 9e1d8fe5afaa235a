"""Benchmark: the site broker's QoS 1 rate and what a SIGKILL loses, Mosquitto next to NATS.

Why: every adapter's "acknowledged" means the broker's PUBACK, so the broker must keep what it
PUBACKed across a crash while the edge-forwarder (its one persistent subscriber) is away. The
shipped Mosquitto 2.0 config does that by saving its whole in-memory store after every change
(`autosave_on_changes`, `autosave_interval 1`); each save rewrites the whole store, so the rate
falls as the forwarder's queue grows. NATS server's MQTT listener keeps QoS 1 messages and
sessions in JetStream file streams (one append per message), the "broker whose persistence is
synchronous" of issue 14. Same paho client, same payloads, same machine, one run:

  online   the persistent subscriber (forwarder stand-in) is connected and acks everything
  away     the subscriber is disconnected, so every PUBACKed message queues in the broker
  kill     SIGKILL the broker, restart it, reconnect the subscriber: PUBACKed - received = lost
  resume   the subscriber receives 20 messages without acking them and drops off (a forwarder
           crash), 10 more are published, it reconnects: are the 20 resent first, and when?
           (MQTT 3.1.1 4.4 and 4.6: unacknowledged PUBLISH packets are re-sent on reconnect,
           in order; the forwarder's per-device order rests on it)

Payloads: a 9-row PCD-01 ORU as the hl7-retrofit's FHIR Bundle (~6 KB) and one SDC Observation
(~1.2 KB). `window` is how many publishes are in flight before waiting for their PUBACKs.
Mosquitto runs the shipped config (users, ACL); NATS runs without authorization (its grants
cost one lookup per connection and subscription, not per message stored).

Run on demand (bounded, ~1-2 min):
    python benchmarks/edge_broker.py [--seconds 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import paho.mqtt.client as mqtt  # noqa: E402

from services import Mosquitto, free_port, wait_for_port  # noqa: E402

PAYLOADS = {"HL7 Bundle 6 KB": 6_000, "SDC Observation 1.2 KB": 1_200}
TOPIC = "medplat/devices/gw-1/oru"


class NatsMqtt:
    """nats-server (Debian `nats-server`) with JetStream and its MQTT listener on loopback."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not os.path.exists(binary):
            raise RuntimeError("nats-server is not installed (Debian package nats-server)")
        self.port = free_port()
        self.conf = folder / "nats.conf"
        self.conf.write_text(f"listen: 127.0.0.1:{free_port()}\nserver_name: edge-bench\n"
                             f"jetstream {{ store_dir: \"{folder / 'js'}\" }}\n"
                             f"mqtt {{ listen: 127.0.0.1:{self.port} }}\n")
        self.log = folder / "nats.log"
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(["nats-server", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=self.log.open("a"))
        wait_for_port(self.port, process=self.process)

    def login(self, client: mqtt.Client, user: str) -> None:
        """No authorization configured on this benchmark instance."""

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def restart(self) -> None:
        self.start()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def connect(broker, user: str, client_id: str, clean: bool, on_message=None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    broker.login(client, user)
    client.max_inflight_messages_set(1000)
    if on_message is not None:
        client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def subscribe(broker, received: set) -> mqtt.Client:
    client = connect(broker, "edge-forwarder", "forwarder", False, lambda c, u, m: received.add(m.payload[:24]))
    client.subscribe("medplat/devices/#", qos=1)
    time.sleep(0.5)
    return client


def publish_for(client: mqtt.Client, seconds: float, window: int, size: int, tag: str) -> list[bytes]:
    """Publish QoS 1 for `seconds`; return the ids of the messages the broker PUBACKed."""
    acked, sequence, deadline = [], 0, time.perf_counter() + seconds
    filler = b"x" * size
    while time.perf_counter() < deadline:
        batch = []
        for _ in range(window):
            sequence += 1
            key = f"{tag}-{sequence:09d}".encode().ljust(24, b".")[:24]
            batch.append((key, client.publish(TOPIC, key + filler, qos=1)))
        for key, info in batch:
            info.wait_for_publish(30)
            if info.is_published():
                acked.append(key)
    return acked


def measure(name: str, factory, seconds: float) -> None:
    for payload, size in PAYLOADS.items():
        with tempfile.TemporaryDirectory() as tmp:
            broker = factory(Path(tmp))
            received: set = set()
            forwarder = subscribe(broker, received)
            publisher = connect(broker, "hl7-retrofit", "adapter", True)
            try:
                for window in (1, 32):
                    start = time.perf_counter()
                    acked = publish_for(publisher, seconds, window, size, f"on{window}")
                    rate = len(acked) / (time.perf_counter() - start)
                    print(f"  {name:9} {payload:23} online  window {window:2}: {rate:8,.0f} PUBACKed msgs/s")
                forwarder.disconnect()
                forwarder.loop_stop()
                time.sleep(0.3)
                queued = []
                for window in (1, 32):
                    start = time.perf_counter()
                    acked = publish_for(publisher, seconds, window, size, f"away{window}")
                    queued += acked
                    rate = len(acked) / (time.perf_counter() - start)
                    print(f"  {name:9} {payload:23} away    window {window:2}: {rate:8,.0f} PUBACKed msgs/s "
                          f"({len(queued):,} queued)")
                publisher.loop_stop()
                broker.kill()
                broker.restart()
                received.clear()
                forwarder = subscribe(broker, received)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not set(queued) <= received:
                    time.sleep(0.5)
                lost = len(set(queued) - received)
                print(f"  {name:9} {payload:23} SIGKILL with the subscriber away: {lost:,} of "
                      f"{len(queued):,} PUBACKed messages lost")
            finally:
                forwarder.loop_stop()
                broker.stop()


def resume_order(name: str, factory) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = factory(Path(tmp))
        arrivals: list = []

        def forwarder(manual_ack: bool) -> mqtt.Client:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="forwarder", clean_session=False,
                                 manual_ack=manual_ack)
            broker.login(client, "edge-forwarder")
            client.on_message = lambda c, u, m: arrivals.append((int(m.payload), time.perf_counter()))
            client.connect("127.0.0.1", broker.port)
            client.loop_start()
            client.subscribe("medplat/devices/#", qos=1)
            time.sleep(0.5)
            return client

        crashing = forwarder(manual_ack=True)
        publisher = connect(broker, "hl7-retrofit", "adapter", True)
        for value in range(20):
            publisher.publish(TOPIC, str(value).encode(), qos=1).wait_for_publish(10)
        time.sleep(0.5)
        crashing.disconnect()
        crashing.loop_stop()
        for value in range(20, 30):
            publisher.publish(TOPIC, str(value).encode(), qos=1).wait_for_publish(10)
        arrivals.clear()
        start = time.perf_counter()
        resumed = forwarder(manual_ack=False)
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and len({v for v, _t in arrivals}) < 30:
            time.sleep(0.2)
        order = [value for value, _t in arrivals]
        resent = [t - start for value, t in arrivals if value < 20]
        when = f"after {min(resent):.1f} s" if resent else "never (45 s)"
        print(f"  {name:9} resume after a subscriber crash: unacked 0-19 resent {when}; "
              f"{'in order, first' if order[:20] == list(range(20)) else 'NOT first: order ' + str(order[:12]) + ' ...'}")
        resumed.loop_stop()
        publisher.loop_stop()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine)")
    version = subprocess.run(["nats-server", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"Mosquitto 2.0 with workloads/mqtt-broker/mosquitto.conf (save on every change) vs {version} MQTT "
          "(JetStream file store)")
    measure("mosquitto", Mosquitto, args.seconds)
    measure("nats", NatsMqtt, args.seconds)
    resume_order("mosquitto", Mosquitto)
    resume_order("nats", NatsMqtt)


if __name__ == "__main__":
    main()
