"""Fault test: SIGKILL the forwarder at random points during a 4,000-message stream and stop
the cloud ingest for a while; afterwards every message is stored exactly once, in per-device
order. Real Mosquitto (the project's broker config) and real PostgreSQL."""
from __future__ import annotations

import random
import threading
import time
from collections import defaultdict

import pytest

from services import Mosquitto
from store_forward import (Pki, Publisher, envelope, forwarder_service, ingest_service, status, stored,
                           stored_count, wait_until)

# ~27 s of stream at RATE msgs/s. The site broker saves its store on every change (no PUBACKed
# message lost to a broker SIGKILL), which caps it near 180 PUBACKed msgs/s on 2 cores: the stream
# stays below that so the kills land during the stream rather than behind a blocked producer.
MESSAGES, DEVICES, KILLS, RATE = 4_000, 20, 10, 150


@pytest.fixture
def site(tmp_path, postgres_url):
    broker = Mosquitto(tmp_path / "broker")
    pki = Pki(tmp_path / "pki")
    ingest = ingest_service(tmp_path, pki, postgres_url).start()
    forwarder = forwarder_service(tmp_path, pki, ingest.port, broker).start()
    yield broker, ingest, forwarder
    forwarder.stop()
    ingest.stop()
    broker.stop()


def test_sigkill_and_cloud_outage_lose_and_duplicate_nothing(site, postgres_url):
    broker, ingest, forwarder = site
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    publisher = Publisher(broker)
    devices = [f"monitor-{i:02d}" for i in range(DEVICES)]

    kills = [0]  # kills so far; the stream waits for them, however long a forwarder restart takes
    chunk = MESSAGES // (KILLS + 1)

    def stream() -> None:
        start = time.monotonic()
        for n in range(MESSAGES):
            if n and n % chunk == 0:  # the next part of the stream only after the next kill
                while kills[0] < min(n // chunk, KILLS):
                    time.sleep(0.05)
                start = time.monotonic() - n / RATE
            device = devices[n % DEVICES]
            publisher.publish(device, envelope(device, n // DEVICES))
            ahead = n / RATE - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)

    producer = threading.Thread(target=stream)
    producer.start()
    kills_during_stream, depths_at_kill, outage = 0, [], None
    while producer.is_alive() or kills_during_stream < KILLS:
        time.sleep(rng.uniform(0.2, 1.5))
        depths_at_kill.append(status(forwarder)["queueDepth"])
        forwarder.kill()
        kills_during_stream += producer.is_alive()
        kills[0] += 1
        if kills_during_stream == KILLS // 2 and outage is None:
            ingest.stop()  # the uplink or the cloud goes away for a while
            outage = time.monotonic()
        forwarder.start()
        if outage is not None and time.monotonic() - outage > 4 and ingest.process.poll() is not None:
            ingest.start()
        if kills_during_stream >= 3 * KILLS:
            break
    producer.join()
    publisher.wait()
    publisher.close()
    if ingest.process.poll() is not None:
        ingest.start()

    wait_until(lambda: stored_count(postgres_url) >= MESSAGES and status(forwarder)["queueDepth"] == 0,
               timeout=120, interval=1, what=f"all {MESSAGES} messages at the ingest (seed {seed})")
    rows = stored(postgres_url)
    assert kills_during_stream >= KILLS, f"only {kills_during_stream} kills during the stream"
    assert outage is not None
    assert max(depths_at_kill) > 0, "no kill hit a non-empty outbox"
    assert len(rows) == MESSAGES, f"{len(rows)} stored for {MESSAGES} sent (seed {seed})"
    sent = {f"{devices[n % DEVICES]}-{n // DEVICES:07d}" for n in range(MESSAGES)}
    assert {row[0] for row in rows} == sent
    by_device: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for _id, device, seq, value in rows:
        by_device[device].append((seq, value))
    for device, items in by_device.items():
        values = [value for _seq, value in sorted(items)]
        assert values == sorted(values), f"{device}: order broken (seed {seed})"
        assert values == [float(i) for i in range(MESSAGES // DEVICES)]
    assert status(forwarder)["refused"] == {}
