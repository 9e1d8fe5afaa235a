"""sdc-bridge against a real sdc11073 provider on loopback and the real Mosquitto broker:
metric changes arrive as FHIR Observations (MDC codes, UCUM units), alert states become
de-duplicated, routed and escalated alarm events, and a lost provider is found again."""
from __future__ import annotations

import time
import uuid
from decimal import Decimal
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from sdc11073.mdib import ProviderMdib
from sdc11073.provider import SdcProvider
from sdc11073.wsdiscovery import WSDiscovery
from sdc11073.xml_types import pm_types
from sdc11073.xml_types.dpws_types import ThisDeviceType, ThisModelType

from medplat.workloads.sdc_bridge.app import Settings, build
from services import Mosquitto

MDIB = Path(__file__).parent / "data" / "bedside-monitor-mdib.xml"


class Monitor:
    """A bedside monitor: an sdc11073 provider with the test MDIB, discoverable on loopback."""

    def __init__(self, epr: uuid.UUID | None = None) -> None:
        self.discovery = WSDiscovery("127.0.0.1")
        self.discovery.start()
        self.mdib = ProviderMdib.from_mdib_file(str(MDIB))
        self.provider = SdcProvider(
            ws_discovery=self.discovery, epr=epr or uuid.uuid4(), device_mdib_container=self.mdib,
            this_model=ThisModelType(manufacturer="medplat-test", manufacturer_url="urn:x", model_name="monitor",
                                     model_number="1", model_url="urn:x", presentation_url="urn:x"),
            this_device=ThisDeviceType(friendly_name="monitor", firmware_version="1", serial_number="SN-1"))
        self.provider.start_all(start_rtsample_loop=False)
        self.xaddr = self.provider.get_xaddrs()[0]

    def metric(self, handle: str, value: str) -> None:
        with self.mdib.metric_state_transaction() as transaction:
            state = transaction.get_state(handle)
            if state.MetricValue is None:
                state.mk_metric_value()
            state.MetricValue.Value = Decimal(value)
            state.MetricValue.MetricQuality.Validity = pm_types.MeasurementValidity.VALID

    def alert(self, present: bool) -> None:
        with self.mdib.alert_state_transaction() as transaction:
            state = transaction.get_state("ac.spo2.low")
            state.ActivationState = pm_types.AlertActivation.ON
            state.Presence = present

    def stop(self) -> None:
        self.provider.stop_all()
        self.discovery.stop()


@pytest.fixture
def broker(tmp_path):
    server = Mosquitto(tmp_path / "broker")
    received: list[dict] = []
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sdc-test-{uuid.uuid4().hex[:6]}")
    subscriber.on_message = lambda _c, _u, message: received.append(orjson.loads(message.payload))
    server.login(subscriber, "edge-forwarder")  # the one reader of device data
    subscriber.connect("127.0.0.1", server.port)
    subscriber.subscribe("medplat/devices/#", qos=1)
    subscriber.loop_start()
    yield server, received
    subscriber.loop_stop()
    server.stop()


def bridge_for(tmp_path, broker_url: str, **settings):
    tmp_path.mkdir(parents=True, exist_ok=True)
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: icu-high\n    priorities: [Hi]\n    location: 'ICU*'\n"
                     "    recipients: [PractitionerRole/icu-nurse]\n    escalateAfterSeconds: 1\n"
                     "    escalateTo: [PractitionerRole/icu-charge-nurse]\n")
    settings = {"data_dir": tmp_path / "bridge", "location": "ICU-B/12", "alarm_rules": rules,
                "check_interval_s": 0.3, "client_id": f"bridge-{uuid.uuid4().hex[:6]}", **settings}
    app, _ = build(Settings(broker_url=broker_url, **settings))
    app.state.bridge.start()
    return app, app.state.publisher


def wait(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def of_type(received, kind):
    return [e["resource"] for e in list(received) if e["resource"]["resourceType"] == kind]


def test_metrics_and_alarms_from_a_real_provider(tmp_path, broker):
    server, received = broker
    monitor = Monitor()
    app, publisher = bridge_for(tmp_path, server.url_for("sdc-bridge"), providers=[monitor.xaddr])
    try:
        assert wait(lambda: len(of_type(received, "Device")) >= 3), "MDS, VMD and channel as Devices"
        devices = {d["identifier"][1]["value"]: d for d in of_type(received, "Device")}
        assert wait(lambda: len(of_type(received, "DeviceMetric")) >= 2)
        metrics = {m["type"]["coding"][0]["code"]: m for m in of_type(received, "DeviceMetric")}
        assert metrics["150456"]["unit"]["coding"][0] == {"system": "http://unitsofmeasure.org", "code": "%"}
        assert metrics["150456"]["category"] == "measurement"
        assert devices["ch0"]["parent"]["reference"] == f"Device/{devices['vmd0']['id']}"
        monitor.metric("spo2", "93")
        monitor.metric("hr", "71")
        assert wait(lambda: {o["code"]["coding"][0]["code"] for o in of_type(received, "Observation")} >=
                    {"150456", "147842"})
        spo2 = [o for o in of_type(received, "Observation") if o["code"]["coding"][0]["code"] == "150456"][-1]
        assert spo2["code"]["coding"][0]["system"] == "urn:iso:std:iso:11073:10101", "missing CodingSystem is MDC"
        assert spo2["valueQuantity"]["value"] == 93.0 and spo2["valueQuantity"]["code"] == "%"
        assert spo2["status"] == "final" and spo2["device"]["reference"] == f"DeviceMetric/{metrics['150456']['id']}"
        heart = [o for o in of_type(received, "Observation") if o["code"]["coding"][0]["code"] == "147842"][-1]
        assert heart["valueQuantity"]["code"] == "/min"

        monitor.alert(True)
        assert wait(lambda: of_type(received, "DetectedIssue"))
        monitor.alert(True)  # the same condition again: de-duplicated
        assert wait(lambda: [c for c in of_type(received, "Communication") if c["priority"] == "stat"], 10), \
            "not acknowledged within 1 s: escalated"
        issue = of_type(received, "DetectedIssue")[0]
        assert issue["status"] == "preliminary" and issue["severity"] == "high"
        messages = of_type(received, "Communication")
        assert messages[0]["priority"] == "urgent" and messages[0]["recipient"] == [
            {"reference": "PractitionerRole/icu-nurse"}]
        assert messages[-1]["recipient"] == [{"reference": "PractitionerRole/icu-charge-nurse"}]
        monitor.alert(False)
        assert wait(lambda: [i for i in of_type(received, "DetectedIssue") if i["status"] == "final"])
        assert len([i for i in of_type(received, "DetectedIssue") if i["status"] == "preliminary"]) == 1
        decisions = [d["decision"] for d in app.state.router.decisions]
        assert decisions[:2] == ["raised", "routed"] and "escalated" in decisions and "ended" in decisions
        assert "deduplicated" in decisions or decisions.count("raised") == 1

        # A second alarm acknowledged in time is not escalated.
        monitor.alert(True)
        assert wait(lambda: app.state.router.active)
        (alarm,) = app.state.router.active.values()
        app.state.router.acknowledge(alarm.id, "nurse-1")
        time.sleep(1.5)
        assert not alarm.escalated and app.state.output.invalid == 0
    finally:
        app.state.bridge.stop()
        publisher.close()
        monitor.stop()


def test_a_lost_provider_is_noticed_and_reconnected(tmp_path, broker):
    server, received = broker
    monitor = Monitor()
    app, publisher = bridge_for(tmp_path, server.url_for("sdc-bridge"), providers=[monitor.xaddr])
    bridge = app.state.bridge
    try:
        assert wait(lambda: bridge.status()["providers"].get(monitor.xaddr))
        monitor.stop()  # the monitor is switched off
        assert wait(lambda: not bridge.status()["providers"].get(monitor.xaddr), 30), "loss noticed"
        replacement = Monitor()  # a replacement monitor at another address, configured by the site
        bridge.xaddrs.append(replacement.xaddr)
        assert wait(lambda: bridge.status()["providers"].get(replacement.xaddr), 30)
        replacement.metric("spo2", "88")
        assert wait(lambda: [o for o in of_type(received, "Observation") if o["valueQuantity"]["value"] == 88.0])
        monitor = replacement
    finally:
        bridge.stop()
        publisher.close()
        monitor.stop()
