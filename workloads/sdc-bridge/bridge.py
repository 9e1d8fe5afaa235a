"""Consumers for SDC providers: statically configured xaddrs (networks without multicast) and
WS-Discovery; a live MDIB per device; episodic metric, alert and waveform reports mapped to
FHIR and published; reconnect when a provider is lost (its alarms flagged, a technical alarm
raised). With TLS configured, http:// providers are refused (no downgrade)."""
from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from sdc11073 import observableproperties
from sdc11073.consumer.consumerimpl import SdcConsumer
from sdc11073.definitions_sdc import SdcV1Definitions
from sdc11073.mdib import ConsumerMdib
from sdc11073.xml_types.actions import periodic_actions

from sdc11073.xml_types import pm_qnames as pm

from medplat.workloads.sdc_bridge.alarms import AlarmRouter
from medplat.workloads.sdc_bridge.mapping import coding, device, device_id, device_metric, observation

log = logging.getLogger("medplat.sdc-bridge")


METRIC_TYPES = ("NumericMetricDescriptor", "EnumStringMetricDescriptor", "StringMetricDescriptor",
                "RealTimeSampleArrayMetricDescriptor", "DistributionSampleArrayMetricDescriptor")


def provider_epr(consumer: SdcConsumer, xaddr: str) -> str:
    """The device's identity: the EPR address the provider announces as its DPWS Host."""
    host = getattr(getattr(consumer.host_description, "relationship", None), "Host", None)
    address = getattr(getattr(host, "EndpointReference", None), "Address", None)
    return str(address) if address else xaddr


class DeviceSession:
    """One provider: consumer, MDIB and the bound callbacks (bound methods: sdc11073 keeps weak refs).

    On every (re)connect the initial MDIB is mapped in full: Devices, DeviceMetrics, the current
    metric values and the alert conditions present now (episodic reports only carry changes)."""

    def __init__(self, xaddr: str, output, router: AlarmRouter, location: str, ssl_context=None,
                 renew_interval_s: int = 5) -> None:
        self.xaddr, self.output, self.router, self.location = xaddr, output, router, location
        # https xaddrs (providers that offer TLS) use the site's certificates; plain http none.
        tls = ssl_context if xaddr.startswith("https://") else None
        self.consumer = SdcConsumer(xaddr, sdc_definitions=SdcV1Definitions, ssl_context_container=tls)
        # Renewing subscriptions every few seconds is how a provider that died without a word
        # (power cut, SIGKILL, cable) is noticed; sdc11073's default waits for half the lease.
        self.consumer.start_all(not_subscribed_actions=periodic_actions, fixed_renew_interval=renew_interval_s)
        self.epr = provider_epr(self.consumer, xaddr)
        self.mdib = ConsumerMdib(self.consumer)
        self.mdib.init_mdib()
        self.published = 0
        mds = self.mdib.descriptions.NODETYPE.get(pm.MdsDescriptor, [])
        self.mds_device = device_id(self.epr, mds[0].Handle if mds else "mds")
        self._publish_devices()
        router.provider_connected(self.epr, self.mds_device, location)
        states = self.mdib.states.objects
        self.on_metrics({s.DescriptorHandle: s for s in states if getattr(s, "MetricValue", None) is not None})
        self.on_alerts({s.DescriptorHandle: s for s in states if "AlertCondition" in type(s).__name__})
        observableproperties.bind(self.mdib, metrics_by_handle=self.on_metrics)
        observableproperties.bind(self.mdib, alert_by_handle=self.on_alerts)
        observableproperties.bind(self.mdib, waveform_by_handle=self.on_metrics)

    @property
    def connected(self) -> bool:
        return bool(self.consumer.is_connected)

    def _publish_devices(self) -> None:
        items = []
        for node_type in (pm.MdsDescriptor, pm.VmdDescriptor, pm.ChannelDescriptor):
            for descriptor in self.mdib.descriptions.NODETYPE.get(node_type, []):
                resource = device(self.epr, descriptor, descriptor.parent_handle)
                items.append((resource["id"], resource))
        for name in METRIC_TYPES:
            for descriptor in self.mdib.descriptions.NODETYPE.get(getattr(pm, name), []):
                items.append((device_id(self.epr, descriptor.parent_handle), device_metric(self.epr, descriptor)))
        self.output.many(items)

    def on_metrics(self, metrics_by_handle: dict) -> None:
        """One report (many metric states) becomes one outbox transaction."""
        items = []
        for handle, state in metrics_by_handle.items():
            descriptor = self.mdib.descriptions.handle.get_one(handle, allow_none=True)
            if descriptor is None:
                continue
            resource = observation(self.epr, descriptor, state, f"obs-{uuid.uuid4().hex}")
            if resource is not None:
                items.append((device_id(self.epr, descriptor.parent_handle or handle), resource))
        self.output.many(items)
        self.published += len(items)

    def on_alerts(self, alerts_by_handle: dict) -> None:
        for handle, state in alerts_by_handle.items():
            descriptor = self.mdib.descriptions.handle.get_one(handle, allow_none=True)
            if descriptor is None or "AlertCondition" not in type(descriptor).__name__:
                continue  # alert signals and systems: only conditions (incl. limit conditions) raise alarms
            source = (descriptor.Source or [descriptor.parent_handle])[0]
            self.router.condition(device_id(self.epr, str(source)), handle, coding(descriptor.Type),
                                  str(getattr(descriptor.Priority, "value", descriptor.Priority)),
                                  bool(state.Presence), self.location, provider=self.epr)

    def lost(self) -> None:
        """The provider is gone: its alarms become of unknown state, a technical alarm is raised."""
        self.router.provider_lost(self.epr, self.mds_device, self.location)
        self.stop()

    def stop(self) -> None:
        try:
            self.consumer.stop_all(unsubscribe=False)
        except Exception:  # a lost provider cannot be unsubscribed from
            log.debug("stopping consumer for %s", self.xaddr, exc_info=True)


class Bridge:
    def __init__(self, xaddrs: list[str], output, router: AlarmRouter, *,
                 location: str, discovery_interface: str | None = None, check_interval_s: float = 2.0,
                 ssl_context=None, renew_interval_s: int = 5) -> None:
        self.ssl_context, self.renew_interval_s = ssl_context, renew_interval_s
        self.xaddrs, self.output, self.router, self.location = list(xaddrs), output, router, location
        self.refused: dict[str, str] = {}
        self.discovery_interface, self.check_interval_s = discovery_interface, check_interval_s
        self.sessions: dict[str, DeviceSession] = {}
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="sdc-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for session in self.sessions.values():
            session.stop()

    def _discover(self) -> list[str]:
        if not self.discovery_interface:
            return []
        from sdc11073.wsdiscovery import WSDiscovery

        with WSDiscovery(self.discovery_interface) as discovery:
            services = discovery.search_services(types=SdcV1Definitions.MedicalDeviceTypesFilter, timeout=2)
        # A provider may announce http and https addresses: with TLS configured take its https one.
        wanted = "https://" if self.ssl_context is not None else ""
        return [next((x for x in service.x_addrs if x.startswith(wanted)), service.x_addrs[0])
                for service in services if service.x_addrs]

    def _allowed(self, xaddr: str) -> bool:
        """With TLS configured, an http:// provider would be a downgrade: refused, and said so."""
        if self.ssl_context is not None and not xaddr.startswith("https://"):
            if xaddr not in self.refused:
                log.error("refusing provider %s: TLS is configured and the provider offers no https", xaddr)
            self.refused[xaddr] = "http provider refused: TLS configured (no downgrade)"
            return False
        return True

    def _supervise(self) -> None:
        while not self._stop.is_set():
            wanted = [x for x in dict.fromkeys(self.xaddrs + self._discover()) if self._allowed(x)]
            for xaddr in [x for x, s in self.sessions.items() if x not in wanted and not s.connected]:
                self.sessions.pop(xaddr).lost()  # gone from discovery as well
            for xaddr in wanted:
                session = self.sessions.get(xaddr)
                if session is not None and session.connected:
                    continue
                if session is not None:
                    log.warning("provider %s lost; reconnecting", xaddr)
                    session.lost()
                    self.sessions.pop(xaddr, None)
                    self.reconnects += 1
                try:
                    self.sessions[xaddr] = DeviceSession(xaddr, self.output, self.router, self.location,
                                                         self.ssl_context, self.renew_interval_s)
                    log.info("connected to %s", xaddr)
                except Exception as exc:  # unreachable provider: try again next round
                    self.sessions.pop(xaddr, None)
                    log.warning("cannot connect to %s: %s", xaddr, exc)
            self.router.escalate_due()
            self._stop.wait(self.check_interval_s)

    def status(self) -> dict[str, Any]:
        return {"providers": {x: s.connected for x, s in self.sessions.items()}, "reconnects": self.reconnects,
                "refusedProviders": dict(self.refused),
                "published": sum(s.published for s in self.sessions.values())}
