"""Real sdc11073 providers running the public MDIBs in tests/data/sdc11073 (see PROVENANCE.md),
in the test process or in a process of their own that a test can SIGKILL."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

from sdc11073.mdib import ProviderMdib
from sdc11073.provider import SdcProvider
from sdc11073.wsdiscovery import WSDiscovery
from sdc11073.xml_types import pm_qnames as pm
from sdc11073.xml_types import pm_types
from sdc11073.xml_types.dpws_types import ThisDeviceType, ThisModelType

DATA = Path(__file__).parent / "data" / "sdc11073"
DRAEGER_70041 = DATA / "70041_MDIB_Final.xml"
PLUGATHON = DATA / "PlugathonMdibV2.xml"
# 1,700,000,000 s after the epoch is 2023-11-14T22:13:20Z (a well-known Unix instant).
INSTANT = 1_700_000_000.125


class Provider:
    """A real sdc11073 provider with a public MDIB, reachable on loopback."""

    def __init__(self, mdib: Path, epr: uuid.UUID | None = None) -> None:
        self.epr = epr or uuid.uuid4()
        self.discovery = WSDiscovery("127.0.0.1")
        self.discovery.start()
        self.mdib = ProviderMdib.from_mdib_file(str(mdib))
        self.provider = SdcProvider(
            ws_discovery=self.discovery, epr=self.epr, device_mdib_container=self.mdib,
            this_model=ThisModelType(manufacturer="medplat-test", manufacturer_url="urn:x", model_name=mdib.stem,
                                     model_number="1", model_url="urn:x", presentation_url="urn:x"),
            this_device=ThisDeviceType(friendly_name=mdib.stem, firmware_version="1", serial_number="SN-1"))
        self.provider.start_all(start_rtsample_loop=False)
        self.xaddr = self.provider.get_xaddrs()[0]

    def descriptors(self, node_type) -> list:
        return list(self.mdib.descriptions.NODETYPE.get(node_type, []))

    def set_metrics(self, at: float, offset: int = 0) -> dict[str, object]:
        """All numeric, enumeration and string metrics in one transaction (one report)."""
        values = {}
        # set_determination_time=False: the provider keeps our instant instead of stamping "now"
        with self.mdib.metric_state_transaction(set_determination_time=False) as transaction:
            for i, descriptor in enumerate(self.descriptors(pm.NumericMetricDescriptor)):
                values[descriptor.Handle] = Decimal(10 + i + offset)
            for descriptor in self.descriptors(pm.EnumStringMetricDescriptor):
                values[descriptor.Handle] = descriptor.AllowedValue[0].Value
            for descriptor in self.descriptors(pm.StringMetricDescriptor):
                values[descriptor.Handle] = f"text-{offset}"
            for handle, value in values.items():
                state = transaction.get_state(handle)
                if state.MetricValue is None:
                    state.mk_metric_value()
                state.MetricValue.Value = value
                state.MetricValue.DeterminationTime = at
                state.MetricValue.MetricQuality.Validity = pm_types.MeasurementValidity.VALID
        return values

    def alert(self, handle: str, present: bool) -> None:
        with self.mdib.alert_state_transaction() as transaction:
            state = transaction.get_state(handle)
            state.ActivationState = pm_types.AlertActivation.ON
            state.Presence = present

    def stop(self) -> None:
        self.provider.stop_all()
        self.discovery.stop()

    def set_waveform_samples(self, count: int, at: float, base: int = 0) -> None:
        with self.mdib.rt_sample_state_transaction() as transaction:
            for descriptor in self.descriptors(pm.RealTimeSampleArrayMetricDescriptor):
                state = transaction.get_state(descriptor.Handle)
                if state.MetricValue is None:
                    state.mk_metric_value()
                state.MetricValue.Samples = [Decimal(base % 100 + k) for k in range(count)]
                state.MetricValue.DeterminationTime = at


class RemoteProvider:
    """A Provider in its own process, driven over stdin (one command per line, answered "done"):
    `metrics <reports> <rate>`, `waves <reports>`, `alert <handle> <0|1>`. `kill()` is a SIGKILL:
    the provider sends no SubscriptionEnd, as in a power cut."""

    def __init__(self, mdib: Path, epr: uuid.UUID | None = None) -> None:
        self.epr = epr or uuid.uuid4()
        self.process = subprocess.Popen([sys.executable, __file__, str(mdib), str(self.epr)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)
        header = self.process.stdout.readline().split()
        if not header:
            raise RuntimeError("provider process did not start")
        self.xaddr, self.per_report, self.waves = header[0], int(header[1]), int(header[2])

    def run(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        assert self.process.stdout.readline().strip() == "done", command

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


def _serve(mdib: Path, epr: uuid.UUID) -> None:
    provider = Provider(mdib, epr)
    per_report = len(provider.descriptors(pm.NumericMetricDescriptor)) + len(
        provider.descriptors(pm.EnumStringMetricDescriptor)) + len(provider.descriptors(pm.StringMetricDescriptor))
    print(provider.xaddr, per_report, len(provider.descriptors(pm.RealTimeSampleArrayMetricDescriptor)), flush=True)
    try:
        for line in sys.stdin:
            command, *args = line.split()
            if command == "metrics":
                reports, rate = int(args[0]), float(args[1])
                start = time.perf_counter()
                for i in range(reports):
                    provider.set_metrics(INSTANT if rate < 0 else time.time(), offset=i)
                    delay = start + (i + 1) / rate - time.perf_counter() if rate > 0 else 0
                    if delay > 0:
                        time.sleep(delay)
            elif command == "waves":
                for i in range(int(args[0])):
                    provider.set_waveform_samples(25, time.time(), base=i)
            elif command == "alert":
                provider.alert(args[0], args[1] == "1")
            print("done", flush=True)
    finally:
        provider.stop()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), uuid.UUID(sys.argv[2]))
