"""MQTT subscription with a persistent session (clean_session=False) and manual QoS 1 acks.

paho-mqtt acknowledges a PUBLISH only when `ack()` is called (manual_ack), which the
committer does after the outbox transaction committed. Unacknowledged messages stay with
the broker and are redelivered after a reconnect, in their original order.
"""
from __future__ import annotations

import logging
from pathlib import Path

from opentelemetry import trace

from medplat.service.mqtt import make_client
from medplat.service.tracing import annotate, tracer
from medplat.workloads.edge_forwarder.intake import Intake

log = logging.getLogger("medplat.edge-forwarder.mqtt")


class MqttIntake:
    def __init__(self, url: str, topic: str, client_id: str, intake: Intake, *, ca: Path | None = None,
                 password_file: Path | None = None) -> None:
        self.topic, self.intake = topic, intake
        self.connected = False
        self.client, self.host, self.port = make_client(url, client_id, ca=ca, password_file=password_file,
                                                        clean_session=False, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        self.connected = True
        client.subscribe(self.topic, qos=1)
        log.info("subscribed to %s on %s:%d", self.topic, self.host, self.port)

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self.connected = False
        log.warning("broker connection lost (%s); reconnecting", reason_code)

    def _on_message(self, client, _userdata, message) -> None:
        mid, qos = message.mid, message.qos

        def settle(outcome: str, _reason: str) -> None:
            if outcome != "held" and qos > 0:
                client.ack(mid, qos)

        with tracer().start_as_current_span("mqtt receive", kind=trace.SpanKind.CONSUMER) as span:
            # the subscription filter, never the concrete topic (it names the device)
            span.set_attributes({"messaging.system": "mqtt", "messaging.operation.type": "receive",
                                 "messaging.destination.template": self.topic})
            parts = message.topic.split("/")  # medplat/devices/<device>/<kind>
            annotate(span, device=parts[2] if len(parts) >= 4 else None)
            self.intake.submit(message.payload, settle)
