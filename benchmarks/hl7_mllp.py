"""Benchmark: HL7 v2 ORU^R01 (IHE PCD-01 shape, 9 OBX value rows) through the hl7-retrofit MLLP
listener — read, map to a FHIR Bundle, validate, publish QoS 1 to a real Mosquitto, AA only after
the broker's PUBACK, with a persistent subscriber (the forwarder) online — next to the parsers alone (python-hl7's full parse, hl7apy's, the
listener's lazy ER7 reader) and the figures before this rewrite. Run on demand:
    python benchmarks/hl7_mllp.py [--seconds 4]
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from services import Mosquitto, Service, free_port, wait_for_port  # noqa: E402

VT, END = b"\x0b", b"\x1c\r"
PREVIOUS = ("before (hl7apy parser, one publish awaited at a time): 24-37 messages/s for 9 OBX rows "
            "(issue 14), ~80 messages/s for 2 rows (README); a 1 MB message took 40.9 s")
UNITS = [("150456", "MDC_PULS_OXIM_SAT_O2", "262688", "MDC_DIM_PERCENT"),
         ("147842", "MDC_ECG_HEART_RATE", "264864", "MDC_DIM_BEAT_PER_MIN"),
         ("150021", "MDC_PRESS_BLD_NONINV_SYS", "266016", "MDC_DIM_MMHG"),
         ("150022", "MDC_PRESS_BLD_NONINV_DIA", "266016", "MDC_DIM_MMHG"),
         ("150023", "MDC_PRESS_BLD_NONINV_MEAN", "266016", "MDC_DIM_MMHG"),
         ("151562", "MDC_RESP_RATE", "264928", "MDC_DIM_RESP_PER_MIN"),
         ("150344", "MDC_TEMP", "268192", "MDC_DIM_DEGC"),
         ("149530", "MDC_PULS_OXIM_PULS_RATE", "264864", "MDC_DIM_BEAT_PER_MIN"),
         ("151708", "MDC_CONC_AWAY_CO2_ET", "266016", "MDC_DIM_MMHG")]


def pcd01(control: str, rows: int = 9, value: int = 0) -> bytes:
    """A PCD-01 ORU^R01: MSH, PID, PV1, OBR and `rows` numeric OBX rows (MDC codes and units)."""
    lines = ["MSH|^~\\&|MONITOR-GW^ACDE48234567ABCD^EUI-64|ICU-B|MEDPLAT|EDGE|20261123101500+0100||"
             f"ORU^R01^ORU_R01|{control}|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
             "PID|||12345^^^HOSP^PI||Doe^John||19600101|M", "PV1||I|ICU^B12^1",
             "OBR|1|||182777000^monitoring of patient^SCT|||20261123101500+0100"]
    for row in range(rows):
        code, name, unit, unit_name = UNITS[row % len(UNITS)]
        lines.append(f"OBX|{row + 1}|NM|{code}^{name}^MDC|1.1.{row // len(UNITS) + 1}.{row % len(UNITS) + 1}|"
                     f"{60 + (value + row) % 40}|{unit}^{unit_name}^MDC|||||R|||20261123101455+0100||||"
                     "0123456789ABCDEF^EUI-64")
    return ("\r".join(lines) + "\r").encode()


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buffer = b""

    def replies(self, count: int) -> list[bytes]:
        out = []
        while len(out) < count:
            while END not in self.buffer:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("listener closed the connection")
                self.buffer += chunk
            block, self.buffer = self.buffer.split(END, 1)
            out.append(block)
        return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check(reply: bytes, expected: int = 1) -> None:
    if reply.count(b"MSA|AA|") != expected:
        raise AssertionError(reply[:300])


def run_senders(port: int, seconds: float, senders: int, window: int, rows: int = 9) -> tuple[int, float]:
    """`senders` connections, each keeping `window` messages in flight (1 = original mode:
    wait for each ACK), for `seconds`; returns (messages acknowledged AA, elapsed)."""
    counts = [0] * senders
    deadline = time.perf_counter() + seconds

    def sender(index: int) -> None:
        client, sequence = Client(port), 0
        while time.perf_counter() < deadline:
            frames = []
            for _ in range(window):
                sequence += 1
                frames.append(VT + pcd01(f"S{senders}W{window}R{rows}-{index}-{sequence}", rows, sequence) + END)
            client.sock.sendall(b"".join(frames))
            for reply in client.replies(window):
                check(reply)
            counts[index] += window
        client.sock.close()

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(senders)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts), time.perf_counter() - start


def run_batches(port: int, seconds: float, per_batch: int) -> tuple[int, float]:
    client, count, sequence = Client(port), 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        messages = []
        for _ in range(per_batch):
            sequence += 1
            messages.append(pcd01(f"BATCH-{sequence}", 9, sequence))
        client.sock.sendall(VT + b"BHS|^~\\&|GW|ICU|MEDPLAT|EDGE|20261123101500+0100||||B%d\r" % sequence
                            + b"".join(messages) + b"BTS|%d\r" % per_batch + END)
        check(client.replies(1)[0], per_batch)
        count += per_batch
    client.sock.close()
    return count, time.perf_counter() - start


def parsers(repeat: int) -> None:
    """CPU per message of the parsers alone (same 9-row message) and of the listener's mapping."""
    import hl7
    from hl7apy.parser import parse_message

    from medplat.workloads.hl7_retrofit import er7
    from medplat.workloads.hl7_retrofit.mapping import SiteRules, decode, to_bundle

    text = pcd01("P1").decode()
    rules = SiteRules()

    def cpu_ms(function, count: int) -> float:
        start = time.process_time()
        for _ in range(count):
            function()
        return (time.process_time() - start) / count * 1000

    to_bundle(decode(text.encode(), rules), rules)  # the shape is validated once
    print(f"  parse only, CPU per 9-row message: python-hl7 hl7.parse {cpu_ms(lambda: hl7.parse(text), repeat):.3f} ms, "
          f"hl7apy parse_message {cpu_ms(lambda: parse_message(text, find_groups=True), max(repeat // 50, 5)):.2f} ms, "
          f"listener's lazy ER7 reader {cpu_ms(lambda: er7.Message(text), repeat):.3f} ms")
    print(f"  listener read + map + validate (shape already seen): "
          f"{cpu_ms(lambda: to_bundle(decode(text.encode(), rules), rules), repeat):.3f} ms CPU per message")


def forwarder_stand_in(broker):
    """A persistent-session QoS 1 subscriber logged in as the edge-forwarder (paho acks on receipt)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="forwarder", clean_session=False)
    broker.login(client, "edge-forwarder")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.subscribe("medplat/devices/#", qos=1)
    time.sleep(0.5)
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4)
    args = parser.parse_args()
    print(PREVIOUS)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine)")
    parsers(1000)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = Mosquitto(folder / "broker")
        # The forwarder is the broker's persistent QoS 1 subscriber in every real site: without
        # it the broker queues nothing and a PUBACK costs far less than it does in production.
        forwarder = forwarder_stand_in(broker)
        mllp = free_port()
        service = Service("hl7-retrofit", {"mllp_port": mllp, "broker_url": broker.url_for("hl7-retrofit"), "data_dir": folder / "d",
                                           "max_message_bytes": 8 << 20}, free_port(), folder / "hl7.log").start()
        wait_for_port(mllp)
        time.sleep(0.5)
        try:
            for senders, window, label in ((1, 1, "1 connection, original mode (wait for each ACK)"),
                                           (4, 1, "4 connections, original mode"),
                                           (1, 32, "1 connection, 32 messages in flight"),
                                           (4, 32, "4 connections, 32 in flight each")):
                before = (cpu_seconds(service.process.pid), cpu_seconds(broker.process.pid), time.process_time())
                count, seconds = run_senders(mllp, args.seconds, senders, window)
                listener, mosquitto, sender = (cpu_seconds(service.process.pid) - before[0],
                                               cpu_seconds(broker.process.pid) - before[1],
                                               time.process_time() - before[2])
                print(f"  {label}: {count / seconds:,.0f} messages/s ({count} AA, 9 OBX rows each); CPU per "
                      f"message: listener {listener / count * 1000:.2f} ms, mosquitto {mosquitto / count * 1000:.2f} ms, "
                      f"senders {sender / count * 1000:.2f} ms")
            count, seconds = run_batches(mllp, args.seconds, 100)
            print(f"  1 connection, BHS batches of 100: {count / seconds:,.0f} messages/s")
            for rows in (9, 90):
                cpu = cpu_seconds(service.process.pid)
                count, seconds = run_senders(mllp, args.seconds, 4, 8, rows)
                listener = cpu_seconds(service.process.pid) - cpu
                print(f"  {rows} OBX rows per message, 4 connections x 8 in flight: {count / seconds:,.0f} messages/s = "
                      f"{count * rows / seconds:,.0f} OBX rows/s; listener CPU per row {listener / count / rows * 1e6:.0f} us")
            big = pcd01("BIG-1", 1, 0)
            rows = 1
            while len(big) < 1 << 20:
                rows *= 2
                big = pcd01("BIG-1", rows, 0)
            client = Client(mllp)
            for attempt in (1, 2):
                start, cpu = time.perf_counter(), cpu_seconds(service.process.pid)
                client.sock.sendall(VT + pcd01(f"BIG-{attempt}", rows, attempt) + END)
                check(client.replies(1)[0])
                print(f"  one {len(big) / 1e6:.2f} MB message ({rows:,} OBX rows), "
                      f"{'first' if attempt == 1 else 'second'} time: AA after {time.perf_counter() - start:.2f} s "
                      f"(listener CPU {cpu_seconds(service.process.pid) - cpu:.2f} s)")
            client.sock.close()
        finally:
            service.stop()
            forwarder.loop_stop()
            broker.stop()


if __name__ == "__main__":
    main()
