"""The one MQTT client of the platform: connecting to the site broker (TLS for `mqtts://`,
per-workload credentials), and publishing QoS 1 with the broker's PUBACK awaited.

The site broker refuses anonymous clients and checks every topic against its ACL
(`workloads/mqtt-broker/acl`): each workload logs in as its own user, `mqtt://USER@host:1883`,
with the password from `BROKER_PASSWORD_FILE` (a mounted secret; a password in the URL is
accepted for local runs), and for `mqtts://` trusts `BROKER_CA`.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt


def make_client(url: str, client_id: str, *, ca: Path | None = None, password_file: Path | None = None,
                clean_session: bool = True, manual_ack: bool = False) -> tuple[mqtt.Client, str, int]:
    """A paho client configured for `url`; returns it with the host and port to connect to."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise ValueError(f"broker URL must look like mqtt://user@host:1883 or mqtts://…, not {url!r}")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                         protocol=mqtt.MQTTv311, manual_ack=manual_ack)
    if parsed.scheme == "mqtts":
        client.tls_set(ca_certs=str(ca) if ca else None)
    if parsed.username:
        password = password_file.read_text().strip() if password_file else unquote(parsed.password or "")
        client.username_pw_set(unquote(parsed.username), password or None)
    client.reconnect_delay_set(1, 30)
    return client, parsed.hostname, parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)


class Publisher:
    def __init__(self, url: str, client_id: str, *, ca: Path | None = None, password_file: Path | None = None) -> None:
        self.client, host, port = make_client(url, client_id, ca=ca, password_file=password_file)
        self.client.max_inflight_messages_set(1000)
        self.client.connect_async(host, port)
        self.client.loop_start()

    @classmethod
    def for_service(cls, settings) -> Publisher:
        return cls(settings.broker_url, settings.client_id, ca=getattr(settings, "broker_ca", None),
                   password_file=getattr(settings, "broker_password_file", None))

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
