"""Benchmark: store-and-forward throughput on this machine (real Mosquitto, real PostgreSQL).

Prints, for N messages (FHIR Observation envelopes, ~330 bytes):
  1. durable ingest at the edge: producer -> broker -> forwarder -> outbox committed (fsync'd)
     and acknowledged, with the cloud unreachable;
  2. backlog drain after the outage: outbox -> mTLS HTTPS -> ingest (FHIR R4B validation,
     PostgreSQL commit) -> deleted at the edge;
  3. end-to-end with the cloud online: producer -> ... -> stored in PostgreSQL;
  and, without a broker, the outbox's own durable commit rate (the intake's ceiling).
Goal (issue 7): >= 10,000 msgs/s durable ingest and a drain >= 5x the ingest rate, 2 cores.
The producer is `mosquitto_pub -l` (C, one message per stdin line), so Python publishing
does not limit the figures. Run on demand:
    python benchmarks/store_and_forward.py [--messages 50000]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from services import Mosquitto  # noqa: E402
from store_forward import Pki, envelope, forwarder_service, ingest_service, status, stored_count  # noqa: E402

from medplat.workloads.edge_forwarder.intake import Capacity, Intake, Item  # noqa: E402
from medplat.workloads.edge_forwarder.outbox import Outbox  # noqa: E402
from medplat.workloads.edge_forwarder.site_policy import PolicySource  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
GOAL_INGEST, GOAL_DRAIN_FACTOR = 10_000, 5


def publish(broker: Mosquitto, lines: list[bytes], producers: int = 2) -> None:
    """Publish QoS 1 from `producers` mosquitto_pub processes, each with its own slice."""
    processes = []
    for index in range(producers):
        process = subprocess.Popen(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-l",
                                    "-u", "sdc-bridge", "-P", "pw-sdc-bridge",
                                    "-i", f"bench-producer-{index}-{uuid.uuid4().hex[:6]}",
                                    "-t", f"medplat/devices/bench-{index}/observation"], stdin=subprocess.PIPE)
        processes.append(process)
    for index, process in enumerate(processes):
        process.stdin.write(b"\n".join(lines[index::producers]) + b"\n")
        process.stdin.close()
    for process in processes:
        process.wait()


def wait(predicate, timeout: float = 600) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("benchmark step did not finish")
        time.sleep(0.05)
    return time.perf_counter()


def outbox_ceiling(folder: Path, count: int, batch: int = 1000) -> float:
    outbox = Outbox(folder / "ceiling.sqlite")
    intake = Intake(outbox, PolicySource(None), Capacity(1 << 34, 0.9, 0), on_full="refuse", commit_max=batch,
                    linger_s=0)
    raws = [envelope(f"dev-{n % 20}", n) for n in range(count)]
    start = time.perf_counter()
    for offset in range(0, count, batch):
        intake.commit([Item(raw, lambda *_: None) for raw in raws[offset:offset + batch]])
    elapsed = time.perf_counter() - start
    outbox.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    n = args.messages
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        database = f"medplat_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
        database_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{database}"
        broker = Mosquitto(folder / "broker")
        pki = Pki(folder / "pki")
        ingest = ingest_service(folder, pki, database_url)
        forwarder = forwarder_service(folder, pki, ingest.port, broker, max_bytes=1 << 33).start()
        try:
            ceiling = outbox_ceiling(folder, n)
            time.sleep(1)
            lines = [envelope(f"dev-{i % 20}", i) for i in range(n)]
            start = time.perf_counter()
            publish(broker, lines)
            end = wait(lambda: status(forwarder)["queueDepth"] >= n)
            ingest_rate = n / (end - start)

            ingest.start()
            start = time.perf_counter()
            end = wait(lambda: status(forwarder)["queueDepth"] == 0)
            drain_rate = n / (end - start)
            assert stored_count(database_url) == n

            lines = [envelope(f"dev-{i % 20}", n + i) for i in range(n)]
            start = time.perf_counter()
            publish(broker, lines)
            end = wait(lambda: stored_count(database_url) >= 2 * n)
            online_rate = n / (end - start)
        finally:
            forwarder.stop()
            ingest.stop()
            broker.stop()
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    print(f"store-and-forward, {n} messages, 2 producers (mosquitto_pub -l, QoS 1)")
    print(f"  outbox durable commits, no broker     {ceiling:10,.0f} msgs/s")
    print(f"  durable ingest at the edge (acked)    {ingest_rate:10,.0f} msgs/s   goal >= {GOAL_INGEST:,}")
    print(f"  backlog drain to the EU ingest        {drain_rate:10,.0f} msgs/s   goal >= {GOAL_DRAIN_FACTOR}x ingest "
          f"= {GOAL_DRAIN_FACTOR * ingest_rate:,.0f}")
    print(f"  end-to-end, cloud online              {online_rate:10,.0f} msgs/s")


if __name__ == "__main__":
    main()
