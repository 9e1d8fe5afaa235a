"""Where the portal's data comes from, each behind a small adapter the deployment wires up:

- `Census`: wards, patients and the devices at their beds, plus alarms/Tasks and NEWS2 where the
  clinical-workflow service provides them (embedded defaults: a generated demo census);
- `Vitals`: the latest value and a bounded history per patient and metric, fed from the site
  broker's device topics (`medplat/devices/<device>/<kind>`, the producer envelope
  `{"id", "device", "dataClass", "resource"}`) and fanned out to live page streams;
- `evidence_bundles`: signed evidence bundles in the build folder (`medplat evidence export`/`demo`);
- `forwarder_metrics`: an edge forwarder's Prometheus `/metrics`.
Patients and alarms are addressed by opaque random ids, never by MRN or name.
"""
from __future__ import annotations

import asyncio
import collections
import datetime
import hashlib
import json
import logging
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("medplat.portal")
HISTORY = 600  # points per patient and metric kept for the chart
# The metrics the ward shows, by MDC code (ISO/IEEE 11073-10101) and LOINC, with a short label.
METRICS = {
    "150456": "SpO2", "59408-5": "SpO2", "2708-6": "SpO2",
    "147842": "HR", "8867-4": "HR",
    "151562": "RR", "9279-1": "RR",
    "150021": "NIBP sys", "8480-6": "NIBP sys",
    "150344": "Temp", "8310-5": "Temp",
}
LABELS = ["HR", "SpO2", "RR", "NIBP sys", "Temp"]


@dataclass
class Alarm:
    id: str
    patient: str
    text: str
    priority: str
    kind: str = "alarm"  # "alarm" (acknowledge) or "task" (claim)
    state: str = "active"
    by: str | None = None


@dataclass
class Patient:
    id: str  # opaque, random per census
    reference: str  # FHIR reference, used only in audit records
    name: str
    ward: str
    bed: str
    devices: list[str]
    news2: int | None = None
    news2_trend: str | None = None


@dataclass
class Census:
    patients: dict[str, Patient] = field(default_factory=dict)
    alarms: dict[str, Alarm] = field(default_factory=dict)

    def of_wards(self, wards) -> list[Patient]:
        return sorted((p for p in self.patients.values() if p.ward in wards), key=lambda p: (p.ward, p.bed))

    def by_device(self) -> dict[str, str]:
        return {device: p.id for p in self.patients.values() for device in p.devices}

    def active_alarms(self, patient: str) -> list[Alarm]:
        return [a for a in self.alarms.values() if a.patient == patient and a.state == "active"]


FIRST = ["Anna", "Ben", "Clara", "David", "Eva", "Felix", "Greta", "Hugo", "Ida", "Jonas", "Karla", "Lukas"]
LAST = ["Adler", "Berger", "Claes", "Dahl", "Engel", "Fuchs", "Graf", "Hahn", "Iversen", "Jung", "Krause", "Lang"]


def demo_census(patients_per_ward: int = 8, wards: tuple[str, ...] = ("ward-a", "ward-b"), seed: int = 7) -> Census:
    """Made-up patients (no real person), each with a bedside monitor `monitor-<ward>-<bed>`."""
    rng, census = random.Random(seed), Census()
    for ward in wards:
        for bed in range(1, patients_per_ward + 1):
            pid = secrets.token_urlsafe(12)
            census.patients[pid] = Patient(
                id=pid, reference=f"Patient/demo-{ward}-{bed}", name=f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                ward=ward, bed=f"{bed:02d}", devices=[f"monitor-{ward}-{bed:02d}"],
                news2=rng.choice([0, 1, 2, 3, 5, 7]), news2_trend=rng.choice(["stable", "rising", "falling"]))
            if bed % 3 == 1:
                aid = secrets.token_urlsafe(12)
                census.alarms[aid] = Alarm(aid, pid, "SpO2 low (88 %)", "high")
            if bed % 4 == 2:
                tid = secrets.token_urlsafe(12)
                census.alarms[tid] = Alarm(tid, pid, "NEWS2 review due", "medium", kind="task")
    return census


def observation_point(resource: dict[str, Any]) -> tuple[str, float, float] | None:
    """(label, value, epoch seconds) of a numeric Observation the ward shows, else None."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
        return None
    quantity = resource.get("valueQuantity") or {}
    value = quantity.get("value")
    codes = [c.get("code") for c in ((resource.get("code") or {}).get("coding") or []) if isinstance(c, dict)]
    label = next((METRICS[c] for c in codes if c in METRICS), None)
    if label is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    when = resource.get("effectiveDateTime")
    try:
        at = datetime.datetime.fromisoformat(when).timestamp() if isinstance(when, str) else time.time()
    except ValueError:
        at = time.time()
    return label, float(value), at


class Vitals:
    """Latest values and history per (patient, metric); live listeners get each new point."""

    def __init__(self, census: Census) -> None:
        self.census = census
        self.devices = census.by_device()
        self.history: dict[str, dict[str, collections.deque]] = collections.defaultdict(
            lambda: collections.defaultdict(lambda: collections.deque(maxlen=HISTORY)))
        self.device_seen: dict[str, float] = {}
        self.listeners: dict[str, set[asyncio.Queue]] = collections.defaultdict(set)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock = threading.Lock()

    def latest(self, patient: str) -> dict[str, float]:
        with self.lock:
            return {label: points[-1][1] for label, points in self.history.get(patient, {}).items() if points}

    def series(self, patient: str) -> dict[str, list[tuple[float, float]]]:
        with self.lock:
            return {label: list(points) for label, points in self.history.get(patient, {}).items()}

    def ingest(self, envelope: dict[str, Any], received: float | None = None) -> bool:
        """One producer envelope from the broker; True when it was a vital sign of a known patient."""
        device = envelope.get("device") if isinstance(envelope, dict) else None
        patient = self.devices.get(device) if isinstance(device, str) else None
        point = observation_point(envelope.get("resource")) if patient else None
        if point is None:
            return False
        label, value, at = point
        with self.lock:
            self.history[patient][label].append((at, value))
            self.device_seen[device] = received or time.time()
        event = {"metric": label, "value": value, "at": at, "received": received or time.time()}
        if self.loop is not None:
            for queue in list(self.listeners.get(patient, ())):
                self.loop.call_soon_threadsafe(_offer, queue, event)
        return True

    def listen(self, patient: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self.listeners[patient].add(queue)
        return queue

    def unlisten(self, patient: str, queue: asyncio.Queue) -> None:
        self.listeners[patient].discard(queue)


def _offer(queue: asyncio.Queue, event: dict) -> None:
    if not queue.full():  # a stalled browser loses live points, never the server's memory
        queue.put_nowait(event)


def subscribe(vitals: Vitals, url: str, client_id: str, ca: Path | None, password_file: Path | None):
    """Follow the site broker's device topics (QoS 0: the screen wants the newest value, not a replay)."""
    from medplat.service.mqtt import make_client

    client, host, port = make_client(url, client_id, ca=ca, password_file=password_file)

    def on_connect(client, _userdata, _flags, reason, _properties=None) -> None:
        if not reason.is_failure:
            client.subscribe("medplat/devices/+/+", qos=0)

    def on_message(_client, _userdata, message) -> None:
        try:
            vitals.ingest(json.loads(message.payload))
        except (ValueError, TypeError):
            log.warning("ignored a message that is not a JSON envelope")

    client.on_connect, client.on_message = on_connect, on_message
    client.connect_async(host, port)
    client.loop_start()
    return client


# ---- evidence bundles -----------------------------------------------------------------------------

@dataclass
class BundleView:
    id: str  # opaque: a digest of the path
    path: Path
    manifest: dict[str, Any]
    controls: list[dict[str, Any]]
    waivers: list[dict[str, Any]]


def evidence_bundles(build_dir: Path) -> list[BundleView]:
    """Every evidence bundle folder in `build_dir` (newest first) that has a manifest and control matrix."""
    found = []
    for folder in sorted(build_dir.glob("evidence-*"), reverse=True):
        manifest, matrix = folder / "manifest.json", folder / "control-matrix.json"
        if not (folder.is_dir() and manifest.is_file() and matrix.is_file()):
            continue
        try:
            waivers_file = folder / "waivers.json"
            waivers = json.loads(waivers_file.read_text())["waivers"] if waivers_file.is_file() else []
            found.append(BundleView(hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16], folder,
                                    json.loads(manifest.read_text()), json.loads(matrix.read_text())["controls"],
                                    waivers))
        except (ValueError, KeyError) as exc:
            log.warning("skipped unreadable evidence bundle %s: %s", folder.name, exc)
    return found


def verdicts(controls: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Control statuses counted per framework (regulation)."""
    table: dict[str, dict[str, int]] = {}
    for row in controls:
        counts = table.setdefault(row["framework"], {})
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return table


# ---- site operations ------------------------------------------------------------------------------

# The edge forwarder's metric names (workloads/edge-forwarder/app.py, _Metrics).
FORWARDER_SAMPLES = {"medplat_outbox_depth": "queue depth", "medplat_outbox_oldest_age_seconds": "oldest message age (s)",
                     "medplat_outbox_used_bytes": "outbox bytes used", "medplat_outbox_alarm": "outbox alarm",
                     "medplat_forwarder_send_rate": "send rate (msg/s)", "medplat_forwarder_sent_total": "sent"}


def forwarder_metrics(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """Selected samples of a forwarder's /metrics (queue, oldest age, refusals), or the error."""
    try:
        text = httpx.get(url, timeout=timeout).text
    except httpx.HTTPError as exc:
        return {"error": f"unreachable ({type(exc).__name__})"}
    values: dict[str, Any] = {"refused": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("medplat_forwarder_refused") and sample.name.endswith("_total"):
                reason = sample.labels.get("reason", "all")
                values["refused"][reason] = values["refused"].get(reason, 0) + sample.value
            elif sample.name in FORWARDER_SAMPLES:
                values[FORWARDER_SAMPLES[sample.name]] = sample.value
    return values


def certificate_expiry(path: Path) -> datetime.datetime | None:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None
