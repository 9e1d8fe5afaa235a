"""Publishing to the site broker: QoS 1, and wait for the broker's PUBACK before reporting success."""
from __future__ import annotations

from urllib.parse import urlparse

import paho.mqtt.client as mqtt


class Publisher:
    def __init__(self, url: str, client_id: str) -> None:
        parsed = urlparse(url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(1, 30)
        self.client.connect_async(parsed.hostname or "127.0.0.1", parsed.port or 1883)
        self.client.loop_start()

    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    def publish(self, topic: str, payload: bytes, timeout: float) -> None:
        if not self.client.is_connected():
            raise ConnectionError("site broker not connected")
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError("site broker did not acknowledge the publish")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
