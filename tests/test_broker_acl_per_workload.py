"""The site broker's ACL keeps each adapter to the topics it publishes (least privilege).

Found by a fresh-eyes attacker test on the real Mosquitto with the shipped mosquitto.conf and acl:
every adapter user could write all of `medplat/devices/#`, so the dicom-anonymizer (which publishes
nothing over MQTT and parses untrusted DICOM files) or the HL7 listener (open to the device network)
could raise or end another adapter's SDC alarms (`.../<device>/detectedissue`) and forge its Device
records, and the forwarder would ship them as real. Topic kinds come from the adapters'
own publishing code (hl7-retrofit: `<prefix>/<sender>/oru`; sdc-bridge: `<prefix>/<device>/<resource
type in lower case>` for Device, DeviceMetric, Observation, DetectedIssue, Communication)."""
from __future__ import annotations

import time
import uuid

import paho.mqtt.client as mqtt

from services import Mosquitto


def _client(broker: Mosquitto, user: str, received: list | None = None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"acl-{user}-{uuid.uuid4().hex[:6]}")
    broker.login(client, user)
    if received is not None:
        client.on_message = lambda _c, _u, message: received.append((message.topic, message.payload))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def test_an_adapter_cannot_write_another_adapters_topics(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    received: list = []
    clients = [_client(broker, "edge-forwarder", received)]
    try:
        clients[0].subscribe("medplat/devices/#", qos=1)
        time.sleep(0.3)
        attempts = {
            ("hl7-retrofit", "medplat/devices/MONITOR-GW/oru"): True,
            ("sdc-bridge", "medplat/devices/urn-uuid-1-mds0/detectedissue"): True,
            ("sdc-bridge", "medplat/devices/urn-uuid-1-mds0/observation"): True,
            ("hl7-retrofit", "medplat/devices/urn-uuid-1-mds0/detectedissue"): False,
            ("hl7-retrofit", "medplat/devices/urn-uuid-1-mds0/device"): False,
            ("sdc-bridge", "medplat/devices/MONITOR-GW/oru"): False,
            ("dicom-anonymizer", "medplat/devices/urn-uuid-1-mds0/detectedissue"): False,
            ("dicom-anonymizer", "medplat/devices/MONITOR-GW/oru"): False,
        }
        for (user, topic) in attempts:
            client = _client(broker, user)
            clients.append(client)
            client.publish(topic, f"{user}->{topic}".encode(), qos=1).wait_for_publish(5)
        time.sleep(0.7)
        delivered = {payload.decode() for _topic, payload in received}
        for (user, topic), allowed in attempts.items():
            assert (f"{user}->{topic}" in delivered) == allowed, (user, topic)
    finally:
        for client in clients:
            client.loop_stop()
            client.disconnect()
        broker.stop()
