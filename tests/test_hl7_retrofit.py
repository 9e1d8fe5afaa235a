"""hl7-retrofit: real ORU^R01 messages over TCP/MLLP to the listener, ACKs back, FHIR Bundles
out on the real Mosquitto broker; malformed framing, wrong message types, bad OBX values and
oversize messages each get the right NAK and produce nothing."""
from __future__ import annotations

import socket
import time

import orjson
import paho.mqtt.client as mqtt
import pytest

from services import Mosquitto, Service, free_port

VT, FS_CR = b"\x0b", b"\x1c\r"


def oru(control_id: str, spo2: str = "97", heart_rate: str = "72", kind: str = "ORU^R01^ORU_R01") -> bytes:
    return "\r".join([
        f"MSH|^~\\&|MONITOR-GW^ACDE48234567ABCD^EUI-64|ICU-B|MEDPLAT|EDGE|20261123101500+0100||{kind}|{control_id}|P|2.6"
        "|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
        "PID|||12345^^^HOSP^PI||Doe^John||19600101|M",
        "PV1||I|ICU^B12^1",
        "OBR|1|||182777000^monitoring of patient^SCT|||20261123101500+0100",
        "OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0||||||X|||||||0123456789ABCDEF^EUI-64",
        f"OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.1.1.1|{spo2}|262688^MDC_DIM_PERCENT^MDC|||||R|||"
        "20261123101455+0100||||0123456789ABCDEF^EUI-64",
        f"OBX|3|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.1|{heart_rate}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F|||"
        "20261123101455+0100||||0123456789ABCDEF^EUI-64",
    ]).encode() + b"\r"


class Connection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.buffer = b""

    def send(self, payload: bytes, framed: bool = True) -> str:
        self.sock.sendall(VT + payload + FS_CR if framed else payload)
        while FS_CR not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "listener closed the connection"
            self.buffer += chunk
        block, self.buffer = self.buffer.split(FS_CR, 1)
        assert block.startswith(VT)
        return block[1:].decode()

    def close(self) -> None:
        self.sock.close()


def msa(ack: str) -> list[str]:
    return next(line for line in ack.split("\r") if line.startswith("MSA")).split("|")


@pytest.fixture(scope="module")
def listener(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hl7")
    broker = Mosquitto(folder / "broker")
    received = []
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hl7-test-subscriber")
    subscriber.on_message = lambda _c, _u, message: received.append(orjson.loads(message.payload))
    broker.login(subscriber, "edge-forwarder")  # the one reader of device data
    subscriber.connect("127.0.0.1", broker.port)
    subscriber.subscribe("medplat/devices/#", qos=1)
    subscriber.loop_start()
    mllp = free_port()
    service = Service("hl7-retrofit", {"mllp_port": mllp, "broker_url": broker.url_for("hl7-retrofit"), "max_message_bytes": 4096,
                                       "data_dir": folder / "data"}, free_port(), folder / "hl7.log").start()
    from services import wait_for_port
    wait_for_port(mllp)
    time.sleep(0.5)  # the publisher connects to the broker
    yield mllp, received
    service.stop()
    subscriber.loop_stop()
    broker.stop()


def wait_for(received: list, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_oru_r01_is_acknowledged_and_published_as_fhir(listener):
    port, received = listener
    before = len(received)
    connection = Connection(port)
    answers = [msa(connection.send(oru(f"MSG{i:05d}", spo2=str(90 + i)))) for i in range(3)]
    connection.close()
    assert [a[1:3] for a in answers] == [["AA", f"MSG{i:05d}"] for i in range(3)]
    wait_for(received, before + 3)
    envelope = received[before]
    assert envelope["dataClass"] == "phi" and envelope["device"] == "0123456789ABCDEF"
    bundle = envelope["resource"]
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "message"
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["MessageHeader", "Observation", "Observation", "Provenance"]
    spo2 = bundle["entry"][1]["resource"]
    assert spo2["code"]["coding"][0] == {"system": "urn:iso:std:iso:11073:10101", "code": "150456",
                                         "display": "MDC_PULS_OXIM_SAT_O2"}
    assert spo2["valueQuantity"] == {"value": 90.0, "unit": "MDC_DIM_PERCENT", "system": "http://unitsofmeasure.org",
                                     "code": "%"}
    assert spo2["status"] == "preliminary" and spo2["effectiveDateTime"] == "2026-11-23T10:14:55+01:00"
    assert bundle["entry"][2]["resource"]["valueQuantity"]["code"] == "/min"
    assert bundle["entry"][3]["resource"]["entity"][0]["what"]["identifier"]["value"] == "MSG00000"


@pytest.mark.parametrize("case, payload, framed, code, reason", [
    ("malformed-framing", oru("BAD1"), False, "AR", "malformed MLLP framing"),
    ("wrong-type", oru("BAD2", kind="ADT^A01^ADT_A01"), True, "AR", r"unsupported message type ADT\S\A01"),
    ("bad-obx-value", oru("BAD3", spo2="ninety-seven"), True, "AE", "OBX[2]-5"),
    ("oversize", oru("BAD4").replace(b"Doe^John", b"Doe^" + b"J" * 5000), True, "AR", "exceeds 4096 bytes"),
    ("not-hl7", b"hello there", True, "AR", "not a parseable HL7 v2 message"),
])
def test_bad_input_gets_the_right_nak_and_no_output(listener, case, payload, framed, code, reason):
    port, received = listener
    time.sleep(0.3)
    before = len(received)
    connection = Connection(port)
    answer = connection.send(payload + (VT + FS_CR if False else b""), framed=framed) if framed else \
        connection.send(payload + FS_CR, framed=False)
    assert msa(answer)[1] == code, answer
    assert reason in answer.split("ERR", 1)[1], answer
    follow_up = msa(connection.send(oru(f"OK-{case}")))  # the stream stays usable after a NAK
    connection.close()
    assert follow_up[1:3] == ["AA", f"OK-{case}"]
    wait_for(received, before + 1)
    time.sleep(0.3)
    assert [e["resource"]["entry"][-1]["resource"]["entity"][0]["what"]["identifier"]["value"]
            for e in received[before:]] == [f"OK-{case}"], "nothing of the rejected message was published"
