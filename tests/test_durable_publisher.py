"""medplat.service.durable_publisher against the real Mosquitto broker: messages committed while
the broker is unreachable survive a restart of the publishing process and are delivered in
order after the PUBACK; a full outbox refuses loudly instead of dropping."""
from __future__ import annotations

import time
import uuid

import paho.mqtt.client as mqtt
import pytest

from medplat.service.durable_publisher import DurablePublisher, OutboxFull
from services import Mosquitto, free_port


def test_outbox_survives_a_restart_refuses_when_full_and_delivers_in_order(tmp_path):
    outbox = tmp_path / "outbox.sqlite"
    nowhere = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: the broker is down
    publisher = DurablePublisher(nowhere, f"adapter-{uuid.uuid4().hex[:6]}", outbox, max_messages=5)
    publisher.submit_many([("medplat/devices/x/observation", f"{i}".encode()) for i in range(4)])
    publisher.submit("medplat/devices/x/observation", b"4")
    with pytest.raises(OutboxFull):
        publisher.submit("medplat/devices/x/observation", b"5")
    assert publisher.backlog == 5 and publisher.refused == 1 and not publisher.ready
    publisher.close()  # the adapter process ends; the commits are on disk

    broker = Mosquitto(tmp_path / "broker")
    got: list[int] = []
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:6]}")
    subscriber.on_message = lambda _c, _u, message: got.append(int(message.payload))
    broker.login(subscriber, "edge-forwarder")
    subscriber.connect("127.0.0.1", broker.port)
    subscriber.subscribe("medplat/devices/#", qos=1)
    subscriber.loop_start()
    time.sleep(0.3)
    publisher = DurablePublisher(broker.url_for("sdc-bridge"), f"adapter-{uuid.uuid4().hex[:6]}", outbox, max_messages=5)
    try:
        assert publisher.backlog == 5, "reopened from disk"
        assert publisher.flush(15), publisher.status()
        deadline = time.monotonic() + 10
        while len(got) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [0, 1, 2, 3, 4] and publisher.ready and publisher.published == 5
    finally:
        publisher.close()
        subscriber.loop_stop()
        broker.stop()
