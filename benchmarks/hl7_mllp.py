"""Benchmark: HL7 v2 ORU^R01 messages/s through the MLLP listener (parse with hl7apy, map and
validate the FHIR Bundle, publish QoS 1 to a real Mosquitto, AA after the PUBACK), with 1 and
4 concurrent sender connections. Run on demand:
    python benchmarks/hl7_mllp.py [--messages 2000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from services import Mosquitto, Service, free_port, wait_for_port  # noqa: E402
from test_hl7_retrofit import Connection, msa, oru  # noqa: E402


def send(port: int, count: int, prefix: str) -> None:
    connection = Connection(port)
    for i in range(count):
        assert msa(connection.send(oru(f"{prefix}{i:07d}")))[1] == "AA"
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = Mosquitto(folder / "broker")
        mllp = free_port()
        service = Service("hl7-retrofit", {"mllp_port": mllp, "broker_url": broker.url_for("hl7-retrofit"), "data_dir": folder / "d"},
                          free_port(), folder / "hl7.log").start()
        wait_for_port(mllp)
        time.sleep(0.5)
        try:
            for senders in (1, 4):
                per = args.messages // senders
                threads = [threading.Thread(target=send, args=(mllp, per, f"S{senders}-{n}-")) for n in range(senders)]
                start = time.perf_counter()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                seconds = time.perf_counter() - start
                print(f"hl7-retrofit, {per * senders} ORU^R01 (2 OBX values each), {senders} connection(s): "
                      f"{per * senders / seconds:,.0f} messages/s (AA after the broker's PUBACK)")
        finally:
            service.stop()
            broker.stop()


if __name__ == "__main__":
    main()
