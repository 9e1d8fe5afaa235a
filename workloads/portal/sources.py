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
import bisect
import collections
import datetime
import hashlib
import json
import logging
import math
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from markupsafe import Markup, escape
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("medplat.portal")
HISTORY = 600  # points per patient and metric kept for the chart
# The metrics the ward shows, by MDC code (ISO/IEEE 11073-10101) and LOINC, with a short label.
METRICS = {
    "150456": "SpO2", "59408-5": "SpO2", "2708-6": "SpO2",
    "147842": "HR", "8867-4": "HR",
    "151562": "RR", "9279-1": "RR",
    "150021": "NIBP sys", "8480-6": "NIBP sys",
    # Body temperature as devices send it: MDC_TEMP_BODY 150364 (what the sdc-bridge publishes and the
    # clinical workflow scores) and MDC_TEMP_TYMP 150368; 150344 is the generic MDC_TEMP.
    "150344": "Temp", "150364": "Temp", "150368": "Temp", "8310-5": "Temp",
}
LABELS = ["HR", "SpO2", "RR", "NIBP sys", "Temp"]
# The UCUM unit each column is shown in (as the clinical workflow requires them). A value coded in another
# UCUM unit is left out, not shown in the wrong scale (SpO2 as a ratio 0.97, a temperature in [degF]).
UCUM = "http://unitsofmeasure.org"
UNITS = {"HR": "/min", "SpO2": "%", "RR": "/min", "NIBP sys": "mm[Hg]", "Temp": "Cel"}


@dataclass
class Alarm:
    id: str
    patient: str
    text: str
    priority: str
    kind: str = "alarm"  # "alarm" (acknowledge) or "task" (claim)
    state: str = "active"  # active | acknowledged | claimed
    by: str | None = None
    source: str = "demo"  # demo | clinical-workflow (a FHIR Task) | sdc-bridge (a device alarm)


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
    news2_source: str = "demo"


@dataclass
class Census:
    patients: dict[str, Patient] = field(default_factory=dict)
    alarms: dict[str, Alarm] = field(default_factory=dict)
    # Alarms and Tasks by patient, rebuilt whenever a source replaces its items: a ward page looks
    # each bed up once instead of scanning every alarm per bed.
    _by_patient: dict[str, list[Alarm]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index()

    def _index(self) -> None:
        index: dict[str, list[Alarm]] = {}
        for alarm in self.alarms.values():
            index.setdefault(alarm.patient, []).append(alarm)
        self._by_patient = index

    def replace(self, source: str, items: list[Alarm]) -> None:
        """A source's current alarms/Tasks replace its previous ones (readers see the old or the new set)."""
        kept = {k: a for k, a in self.alarms.items() if a.source != source}
        kept.update((a.id, a) for a in items)
        index: dict[str, list[Alarm]] = {}
        for alarm in kept.values():
            index.setdefault(alarm.patient, []).append(alarm)
        self.alarms, self._by_patient = kept, index

    def by_reference(self) -> dict[str, Patient]:
        return {p.reference: p for p in self.patients.values()}

    def of_wards(self, wards) -> list[Patient]:
        return sorted((p for p in self.patients.values() if p.ward in wards), key=lambda p: (p.ward, p.bed))

    def by_device(self) -> dict[str, str]:
        return {device: p.id for p in self.patients.values() for device in p.devices}

    def active_alarms(self, patient: str) -> list[Alarm]:
        """What still needs someone: unacknowledged alarms and unclaimed Tasks."""
        return [a for a in self._by_patient.get(patient, ()) if a.state == "active"]

    def open_items(self, patient: str) -> list[Alarm]:
        """The patient page's list: active ones and Tasks someone has claimed but not finished."""
        return [a for a in self._by_patient.get(patient, ()) if a.state in ("active", "claimed")]


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
    census._index()
    return census


class WardRow(NamedTuple):
    """One bed of the ward list with its cells formatted once, in Python: the template then does one
    substitution per cell instead of attribute lookups, tests and filters per value (500 beds)."""
    id: str
    name: str
    place: str
    cells: Markup  # the vitals' <td>s, escaped
    news2: Markup
    alarms: int


def ward_row(patient: Patient, latest: dict[str, float], alarms: int) -> WardRow:
    # Values are floats (observation_point) and totals ints: their text needs no escaping; the trend is
    # escaped. Plain concatenation: Markup.format's Python formatter cost more than the template did.
    cells = "".join(f"<td>{float(latest[label])}</td>" if label in latest else "<td>—</td>" for label in LABELS)
    if patient.news2 is None:
        news2 = "—"
    else:
        total = int(patient.news2)
        band = "high" if total >= 7 else "medium" if total >= 5 else "low"
        news2 = f'<span class="news2 news2-{band}">{total}</span> {escape(patient.news2_trend or "")}'
        if patient.news2_source == "demo":
            news2 += " <small>(demo)</small>"
    return WardRow(patient.id, patient.name, f"{patient.ward} / {patient.bed}", Markup(cells), Markup(news2), alarms)


def restricted_row(patient: Patient) -> WardRow:
    """A bed whose patient's consent refuses this clinician: no name, no values, no link."""
    return WardRow("", "restricted by the patient's consent", f"{patient.ward} / {patient.bed}",
                   Markup("<td>—</td>" * len(LABELS)), Markup("—"), 0)


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
    if not math.isfinite(value):  # JSON's NaN/Infinity: would show as "nan" and break the history's JSON
        return None
    unit = quantity.get("code")
    if quantity.get("system") == UCUM and unit is not None and unit != UNITS[label]:
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

    def latest_of(self, patients: list[str]) -> dict[str, dict[str, float]]:
        with self.lock:
            return {pid: {label: points[-1][1] for label, points in self.history.get(pid, {}).items() if points}
                    for pid in patients}

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
        arrived = received or time.time()
        at = min(at, arrived)  # nothing is measured in the future: a fast device clock must not pin "latest"
        with self.lock:
            newest = _add_in_time_order(self.history[patient][label], (at, value))
            self.device_seen[device] = arrived
        if not newest:  # a late point (older effective time) joins the history, it is not the latest value
            return True
        event = {"metric": label, "value": value, "at": at, "received": arrived}
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


def _add_in_time_order(points: collections.deque, point: tuple[float, float]) -> bool:
    """Keep a metric's history ordered by effective time, so its last point is the latest measurement even
    when an older one arrives late (an HL7 batch, a device catching up); True when `point` is the newest."""
    if not points or point[0] >= points[-1][0]:
        points.append(point)
        return True
    ordered = list(points)
    bisect.insort(ordered, point, key=lambda p: p[0])
    points.clear()
    points.extend(ordered[-points.maxlen:] if points.maxlen else ordered)
    return False


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


# ---- clinical-workflow and sdc-bridge (their HTTP APIs, the portal's service token) ---------------------

TREND = {1: "rising", 0: "stable", -1: "falling"}
OPEN_TASKS = "requested,accepted,in-progress,on-hold"


class Workflow:
    """NEWS2 scores and open FHIR Tasks from the clinical-workflow service. Scores arrive incrementally
    (`GET /Observation?_lastUpdated=gt<last seen>`, one call per round for the whole census) and the
    trend is the latest score against the one before it; Tasks are the open ones (`GET /Task`)."""

    source = "clinical-workflow"

    def __init__(self, census: Census, client) -> None:
        self.census, self.client = census, client
        self.patients = census.by_reference()
        self.since: datetime.datetime | None = None
        self.at_since: set[str] = set()  # ids issued exactly at `since`: the only ones a round can repeat
        for patient in census.patients.values():  # the service's scores replace made-up ones
            patient.news2, patient.news2_trend, patient.news2_source = None, None, self.source
        census.replace("demo", [a for a in census.alarms.values() if a.kind != "task" and a.source == "demo"])

    def refresh(self, max_pages: int = 20) -> None:
        for _ in range(max_pages):
            params = {"_count": "1000"}
            if self.since:
                params["_lastUpdated"] = "gt" + self.since.isoformat()
            entries = self.client.get("/Observation", params).get("entry") or []
            for entry in entries:
                self._score(entry["resource"])
            if len(entries) < 1000:
                break
        found = self.client.get("/Task", {"status": OPEN_TASKS, "_count": "500"}).get("entry") or []
        self.census.replace(self.source, [t for t in (self._task(e["resource"]) for e in found) if t])

    def _score(self, observation: dict[str, Any]) -> None:
        issued = datetime.datetime.fromisoformat(observation["issued"])
        if self.since is not None and issued < self.since or observation["id"] in self.at_since:
            return  # already counted (bounded memory: only the ids at the cursor are kept)
        if self.since is None or issued > self.since:
            self.since, self.at_since = issued, set()
        self.at_since.add(observation["id"])
        patient = self.patients.get((observation.get("subject") or {}).get("reference"))
        total = observation.get("valueInteger")
        if patient is None or not isinstance(total, int):
            return
        if patient.news2 is not None:
            patient.news2_trend = TREND[(total > patient.news2) - (total < patient.news2)]
        patient.news2 = total

    def _task(self, task: dict[str, Any]) -> Alarm | None:
        patient = self.patients.get((task.get("for") or {}).get("reference"))
        if patient is None:
            return None
        owner = (task.get("owner") or {}).get("reference")
        text = (task.get("code") or {}).get("text") or task.get("description") or "Task"
        return Alarm(task["id"], patient.id, text, task.get("priority", "routine"), kind="task",
                     state="claimed" if owner else "active", by=owner, source=self.source)


class DeviceAlarms:
    """Active device alarms from the sdc-bridge (`GET /alarms`), placed at the bed of their device."""

    source = "sdc-bridge"

    def __init__(self, census: Census, client) -> None:
        self.census, self.client = census, client
        self.devices = census.by_device()
        census.replace("demo", [a for a in census.alarms.values() if a.kind != "alarm" and a.source == "demo"])

    def refresh(self) -> None:
        items = []
        for alarm in self.client.get("/alarms").get("active") or []:
            patient = self.devices.get(alarm.get("device"))
            if patient:
                items.append(Alarm(str(alarm["id"]), patient, str(alarm.get("condition")), str(alarm.get("priority")),
                                   state="acknowledged" if alarm.get("acknowledged") else "active",
                                   source=self.source))
        self.census.replace(self.source, items)


class ConsentGate:
    """Asks the consent service (`POST /decide`) whether this clinician may access this patient's data
    for treatment. Only an explicit deny refuses (treatment needs no consent where none is recorded);
    no answer refuses too (fail closed). Decisions are cached briefly per (patient, clinician)."""

    def __init__(self, client, ttl_s: float = 60.0) -> None:
        self.client, self.ttl_s = client, ttl_s
        self.cache: dict[tuple[str, str], tuple[float, str]] = {}

    def decision(self, patient: str, actor: str) -> str:
        cached = self.cache.get((patient, actor))
        if cached and time.monotonic() - cached[0] < self.ttl_s:
            return cached[1]
        answer = self.client.post("/decide", {"patient": patient, "actors": [actor], "purpose": "TREAT",
                                              "action": "access", "resourceType": "Observation", "dataClass": "phi"})
        decision = str(answer.get("decision"))
        if len(self.cache) > 10_000:
            self.cache.clear()
        self.cache[(patient, actor)] = (time.monotonic(), decision)
        return decision

    def decisions(self, patients: list[str], actor: str) -> dict[str, str]:
        """A ward's decisions: cached ones as they are, the rest asked 8 at a time; the first failure
        cancels the questions not yet asked (the page fails closed without waiting for them all)."""
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=8)
        try:
            return dict(zip(patients, pool.map(lambda patient: self.decision(patient, actor), patients)))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


class Feeds:
    """Polls the configured services in the background, so a page never waits on them; the status of
    each (last success, last error) shows on the operations view."""

    def __init__(self, feeds: list, period_s: float, before_round=None) -> None:
        self.feeds, self.period_s, self.before_round = feeds, period_s, before_round
        self.status: dict[str, dict[str, Any]] = {f.source: {"ok": None, "at": None, "error": None} for f in feeds}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        if self.before_round:
            self.before_round()
        for feed in self.feeds:
            try:
                feed.refresh()
                self.status[feed.source] = {"ok": True, "at": time.time(), "error": None}
            except Exception as exc:  # one service down must not stop the others or the pages
                self.status[feed.source] = {**self.status[feed.source], "ok": False, "error": str(exc)[:300]}
                log.warning("%s feed: %s", feed.source, exc)

    def start(self) -> None:
        if (self.feeds or self.before_round) and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="portal-feeds", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.period_s)

    def stop(self) -> None:
        self._stop.set()


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


def compliance_drift(runs_dir: Path, limit: int = 10) -> list[dict[str, Any]]:
    """The latest `medplat compliance run` records (newest first), each with its drift from the run
    before it, computed by the same code as `medplat compliance drift` (medplat.evidence.continuous)."""
    from medplat.evidence import continuous

    runs = sorted((runs_dir / "runs").glob("*.json")) if (runs_dir / "runs").is_dir() else []
    shown = []
    for before, after in list(zip([None, *runs], runs))[-limit:]:
        try:
            record = continuous.load_side(after)
            changes = continuous.drift(continuous.load_side(before), record) if before else None
            error = None
        except continuous.ComplianceError as exc:
            record, changes, error = {}, None, str(exc)
        shown.append({"run": after.stem, "previous": before.stem if before else None, "changes": changes,
                      "error": error, "controls": record.get("controls") or {}})
    return list(reversed(shown))


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


def tls_certificate_expiry(url: str, timeout: float = 5.0) -> datetime.datetime:
    """When the certificate a site's service presents on its TLS endpoint expires (read from the
    handshake; trust is not the question here, expiry is)."""
    import ssl
    from urllib.parse import urlsplit

    from cryptography import x509

    parts = urlsplit(url)
    pem = ssl.get_server_certificate((parts.hostname, parts.port or 443), timeout=timeout)
    return x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc


def tuf_expiry(client: httpx.Client, base: str, max_root_versions: int = 1000) -> dict[str, str]:
    """Expiry of the fleet's TUF roles, found as a TUF client walks them (python-tuf parses each):
    timestamp -> the snapshot version it names -> the targets version that names; root by version."""
    from tuf.api.metadata import Metadata

    def fetch(name: str):
        response = client.get(f"{base}/tuf/metadata/{name}")
        response.raise_for_status()
        return Metadata.from_bytes(response.content).signed

    timestamp = fetch("timestamp.json")
    snapshot = fetch(f"{timestamp.snapshot_meta.version}.snapshot.json")
    targets = fetch(f"{snapshot.meta['targets.json'].version}.targets.json")
    root, version = fetch("1.root.json"), 1
    while version < max_root_versions:  # the newest root: versions count up from 1 without gaps
        response = client.get(f"{base}/tuf/metadata/{version + 1}.root.json")
        if response.status_code == 404:
            break
        response.raise_for_status()
        root, version = Metadata.from_bytes(response.content).signed, version + 1
    return {role: signed.expires.isoformat() for role, signed in
            (("root", root), ("targets", targets), ("snapshot", snapshot), ("timestamp", timestamp))}


def note_signers(note: str) -> list[str]:
    """Names on a C2SP signed note's signature lines ("— <name> <base64>")."""
    return [line[2:].split(" ", 1)[0] for line in note.split("\n\n", 1)[-1].splitlines() if line.startswith("\u2014 ")]


class SiteChecks:
    """One edge site's health from its services' APIs: the TLS certificate its endpoint presents, the
    fleet's TUF metadata expiry, and the audit log's checkpoints - the recent ones the portal has seen
    and whether the EU witness (`witness`: its key name) cosigned each (the log records a cosignature
    only after verifying it; the portal shows whose signatures the note carries)."""

    def __init__(self, name: str, config: dict[str, str], http: httpx.Client | None = None, keep: int = 10) -> None:
        self.source, self.name, self.config, self.keep = f"site {name}", name, config, keep
        self.http = http or httpx.Client(timeout=5)
        self.view: dict[str, Any] = {"checkpoints": []}
        self.checkpoints: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()

    def refresh(self) -> None:
        errors = []
        for key, check in (("endpoint", self._certificate), ("fleet", self._tuf), ("audit_log", self._checkpoint),
                           ("workloads", self._health)):
            if self.config.get(key):
                try:
                    check(self.config[key])
                except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
                    errors.append(f"{key}: {type(exc).__name__}: {str(exc)[:150]}")
                    self.view[key + "_error"] = errors[-1]
                else:
                    self.view.pop(key + "_error", None)
        if errors:
            raise RuntimeError("; ".join(errors))

    def _health(self, listing: str) -> None:
        """Each workload's /readyz ("name=url,name=url"): ready, not ready (its own words) or unreachable."""
        health = {}
        for item in listing.split(","):
            name, _, url = item.strip().partition("=")
            try:
                response = self.http.get(f"{url.rstrip('/')}/readyz")
                body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
                health[name] = "ready" if response.status_code == 200 else f"not ready ({response.status_code}: " \
                    f"{str(body.get('status') or body.get('detail') or '')[:80]})"
            except httpx.HTTPError as exc:
                health[name] = f"unreachable ({type(exc).__name__})"
        self.view["workloads"] = health

    def _certificate(self, url: str) -> None:
        self.view["certificate_expiry"] = tls_certificate_expiry(url).isoformat()

    def _tuf(self, url: str) -> None:
        self.view["tuf"] = tuf_expiry(self.http, url.rstrip("/"))

    def _checkpoint(self, url: str) -> None:
        latest = self.http.get(f"{url.rstrip('/')}/checkpoint")
        latest.raise_for_status()
        body = latest.json()
        size, note, cosigned = int(body["size"]), body["note"], body.get("cosigned")
        witness = self.config.get("witness")
        signers = note_signers(cosigned or note)
        self.checkpoints[size] = {"size": size, "root": note.split("\n")[2] if note.count("\n") >= 2 else "",
                                  "signers": signers, "seen": time.time(),
                                  "witnessed": bool(cosigned) and (witness in signers if witness else True)}
        self.checkpoints.move_to_end(size)
        while len(self.checkpoints) > self.keep:
            self.checkpoints.popitem(last=False)
        self.view["checkpoints"] = list(reversed(self.checkpoints.values()))


def certificate_expiry(path: Path) -> datetime.datetime | None:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None
