"""Benchmark: SDC metric updates/s through the bridge next to a bare sdc11073 consumer.

A real sdc11073 provider (own process) runs Dräger's public 70041 MDIB (tests/data/sdc11073) and sends
multi-metric episodic reports: every report updates all 44 numeric metrics in one transaction
(as a monitor does each second). Measured in the same run:
- bare: an sdc11073 SdcConsumer + ConsumerMdib counting metric states it receives;
- bridge: the sdc-bridge (mapping, FHIR validation, durable outbox, QoS 1 publish) to a real
  Mosquitto with the project's config, counted as Observations arriving at a subscriber.
Then waveforms: all 18 real-time sample arrays, 25 samples each, per rt-sample report.
Run on demand (bounded, ~1 min):
    python benchmarks/sdc_bridge.py [--reports 200] [--rate 20]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import orjson  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from sdc11073 import observableproperties  # noqa: E402
from sdc11073.consumer.consumerimpl import SdcConsumer  # noqa: E402
from sdc11073.definitions_sdc import SdcV1Definitions  # noqa: E402
from sdc11073.mdib import ConsumerMdib  # noqa: E402
from sdc11073.xml_types.actions import periodic_actions  # noqa: E402

from sdc_provider import DRAEGER_70041, RemoteProvider  # noqa: E402
from services import Mosquitto  # noqa: E402
from test_sdc_bridge import bridge_for, wait  # noqa: E402


class BareConsumer:
    """What any sdc11073 application does at least: consume the reports into a ConsumerMdib."""

    def __init__(self, xaddr: str) -> None:
        self.metrics = self.samples = 0
        self.consumer = SdcConsumer(xaddr, sdc_definitions=SdcV1Definitions, ssl_context_container=None)
        self.consumer.start_all(not_subscribed_actions=periodic_actions)
        self.mdib = ConsumerMdib(self.consumer)
        self.mdib.init_mdib()
        observableproperties.bind(self.mdib, metrics_by_handle=self.on_metrics)
        observableproperties.bind(self.mdib, waveform_by_handle=self.on_waveforms)

    def on_metrics(self, states: dict) -> None:
        self.metrics += len(states)

    def on_waveforms(self, states: dict) -> None:
        self.samples += sum(len(s.MetricValue.Samples or []) for s in states.values() if s.MetricValue)

    def stop(self) -> None:
        self.consumer.stop_all(unsubscribe=False)


def measure(count, expected: int, drive, timeout: float = 120) -> tuple[float, int]:
    start = time.perf_counter()
    drive()
    wait(lambda: count() >= expected, timeout)
    seconds = time.perf_counter() - start
    return seconds, count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="reports/s for the paced run (0: unpaced)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = Mosquitto(folder / "broker")
        observations, waveforms = [0], [0]
        lock = threading.Lock()

        def on_message(_c, _u, message) -> None:
            resource = orjson.loads(message.payload)["resource"]
            with lock:
                if "valueSampledData" in resource:
                    waveforms[0] += 1
                else:
                    observations[0] += 1

        subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}")
        subscriber.on_message = on_message
        broker.login(subscriber, "edge-forwarder")
        subscriber.connect("127.0.0.1", broker.port)
        subscriber.subscribe("medplat/devices/+/observation", qos=1)
        subscriber.loop_start()
        provider = RemoteProvider(DRAEGER_70041)
        per_report, waves = provider.per_report, provider.waves
        lines = []
        try:
            for rate in (args.rate, 0):
                label = f"{rate:g} reports/s" if rate else "unpaced"
                bare = BareConsumer(provider.xaddr)
                seconds, got = measure(lambda: bare.metrics, args.reports * per_report,
                                       lambda: provider.run(f"metrics {args.reports} {rate}"))
                bare.stop()
                lines.append(f"bare sdc11073 consumer, {label}: {got:,} metric updates in {seconds:.2f} s = "
                             f"{got / seconds:,.0f}/s")
                app, publisher = bridge_for(folder / f"bridge-{label.split()[0]}", broker.url_for("sdc-bridge"),
                                            providers=[provider.xaddr])
                wait(lambda: app.state.bridge.status()["providers"].get(provider.xaddr), 30)
                wait(lambda: observations[0] >= per_report, 30)  # the initial MDIB values
                time.sleep(1)
                observations[0] = 0
                queued_before = app.state.output.queued
                start = time.perf_counter()
                provider.run(f"metrics {args.reports} {rate}")
                expected = args.reports * per_report
                wait(lambda: app.state.output.queued - queued_before >= expected, 120)
                seconds_q = time.perf_counter() - start
                wait(lambda: observations[0] >= expected, 300)
                seconds_b, got_b = time.perf_counter() - start, observations[0]
                lines.append(f"sdc-bridge into its durable outbox (mapped, validated, committed), {label}: "
                             f"{expected:,} in {seconds_q:.2f} s = {expected / seconds_q:,.0f}/s "
                             f"({(seconds_q / seconds - 1) * 100:+.1f} % time vs bare)")
                lines.append(f"  ... delivered through Mosquitto (project config, PUBACKed, received): {got_b:,} in "
                             f"{seconds_b:.2f} s = {got_b / seconds_b:,.0f}/s")
                app.state.bridge.stop()
                publisher.close()
            # Waveforms: 18 arrays x 25 samples per rt-sample report.
            wave_reports = max(20, args.reports // 4)
            bare = BareConsumer(provider.xaddr)
            seconds, samples = measure(lambda: bare.samples, wave_reports * waves * 25,
                                       lambda: provider.run(f"waves {wave_reports}"))
            bare.stop()
            lines.append(f"bare consumer, waveforms: {samples:,} samples in {seconds:.2f} s = {samples / seconds:,.0f}"
                         f" samples/s")
            app, publisher = bridge_for(folder / "bridge-waves", broker.url_for("sdc-bridge"), providers=[provider.xaddr])
            wait(lambda: app.state.bridge.status()["providers"].get(provider.xaddr), 30)
            time.sleep(1)
            waveforms[0] = 0
            seconds, got = measure(lambda: waveforms[0], wave_reports * waves,
                                   lambda: provider.run(f"waves {wave_reports}"))
            lines.append(f"sdc-bridge, waveforms: {got:,} valueSampledData Observations ({got * 25:,} samples) in "
                         f"{seconds:.2f} s = {got * 25 / seconds:,.0f} samples/s")
            app.state.bridge.stop()
            publisher.close()
        finally:
            provider.stop()
            subscriber.loop_stop()
            broker.stop()
    print(f"Provider: sdc11073 with Dräger's 70041 MDIB, {per_report} metrics per report, {args.reports} reports")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
