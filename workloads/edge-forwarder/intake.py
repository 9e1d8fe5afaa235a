"""Durable intake: parse, apply the site's egress policy, commit to the outbox, then acknowledge.

Producers (MQTT subscriptions or the HTTP intake) hand raw envelopes to one committer
thread, which commits them in arrival order in batches (one fsync per batch) and only then
acknowledges them. A crash before the commit leaves them unacknowledged, so the broker
redelivers them; a crash between commit and acknowledgement redelivers them too, and the
outbox ignores the repeated message id.
"""
from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import orjson

from medplat.service.tracing import annotate, tracer

from medplat.workloads.edge_forwarder.outbox import Outbox, Refusal
from medplat.workloads.edge_forwarder.site_policy import SitePolicy

log = logging.getLogger("medplat.edge-forwarder.intake")

DATA_CLASSES = frozenset({"phi", "pseudonymized", "deidentified", "operational", "key-material"})
Outcome = Literal["stored", "refused", "held"]


@dataclass
class Item:
    raw: bytes
    done: Callable[[Outcome, str], None]  # (outcome, reason) once the item is settled


@dataclass
class Envelope:
    id: str
    device: str
    data_class: str


class MalformedEnvelope(ValueError):
    pass


def parse_envelope(raw: bytes) -> Envelope:
    """The producer's envelope: {"id", "device", "dataClass", "resource": {"resourceType", ...}}."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedEnvelope(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedEnvelope("envelope must be a JSON object")
    message_id, device, data_class = doc.get("id"), doc.get("device"), doc.get("dataClass")
    if not isinstance(message_id, str) or not 0 < len(message_id) <= 128:
        raise MalformedEnvelope("id must be a string of 1-128 characters")
    if not isinstance(device, str) or not 0 < len(device) <= 256:
        raise MalformedEnvelope("device must be a string of 1-256 characters")
    if data_class not in DATA_CLASSES:
        raise MalformedEnvelope(f"dataClass must be one of {sorted(DATA_CLASSES)}")
    resource = doc.get("resource")
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise MalformedEnvelope("resource must be a FHIR resource object with a resourceType")
    return Envelope(message_id, device, data_class)


@dataclass
class Capacity:
    """Bounded disk: alarm at `alarm_ratio` of `max_bytes`; full when a batch no longer fits
    under the limit (or would leave less than `min_free_bytes` on the disk)."""

    max_bytes: int
    alarm_ratio: float
    min_free_bytes: int
    state: str = "ok"  # ok | alarm | full
    blocked_bytes: int = 0  # what did not fit last time: "full" holds until it would fit
    _last_logged: str = field(default="ok", repr=False)

    def room(self, outbox: Outbox) -> tuple[int, int]:
        used = outbox.used_bytes()
        free = shutil.disk_usage(outbox.path.parent).free
        return used, max(0, min(self.max_bytes - used, free - self.min_free_bytes))

    def update(self, outbox: Outbox, blocked: int | None = None) -> str:
        if blocked is not None:
            self.blocked_bytes = blocked
        used, room = self.room(outbox)
        if self.blocked_bytes and self.blocked_bytes > room:
            state = "full"
        else:
            self.blocked_bytes = 0
            state = "alarm" if used >= self.alarm_ratio * self.max_bytes else "ok"
        if state != self._last_logged:
            level = {"ok": logging.INFO, "alarm": logging.WARNING, "full": logging.ERROR}[state]
            log.log(level, "outbox %s: %d of %d bytes used", state.upper(), used, self.max_bytes)
            self._last_logged = state
        self.state = state
        return state


class Intake:
    def __init__(self, outbox: Outbox, policy: Callable[[], SitePolicy], capacity: Capacity, *,
                 on_full: Literal["refuse", "backpressure"], commit_max: int, linger_s: float) -> None:
        self.outbox, self.policy, self.capacity = outbox, policy, capacity
        self.on_full, self.commit_max, self.linger_s = on_full, commit_max, linger_s
        self._queue: queue.Queue[Item] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-committer", daemon=True)
        self.stored = 0

    def submit(self, raw: bytes, done: Callable[[Outcome, str], None]) -> None:
        self._queue.put(Item(raw, done))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _take(self) -> list[Item]:
        try:
            items = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.linger_s
        while len(items) < self.commit_max:
            try:
                items.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return items

    def _run(self) -> None:
        held: list[Item] = []
        while not self._stop.is_set():
            items = held or self._take()
            held = []
            if not items:
                continue
            try:
                with tracer().start_as_current_span("outbox commit") as span:
                    held = self.commit(items)
                    annotate(span, count=len(items), outcome="held" if held else "settled")
                if held:  # backpressure: keep them unacknowledged and retry shortly
                    self._stop.wait(0.5)
            except Exception:  # an I/O error must not kill intake; nothing was acknowledged
                log.exception("outbox commit failed; retrying")
                held = items
                self._stop.wait(1.0)

    def commit(self, items: list[Item]) -> list[Item]:
        """Commit what fits of one batch, in order; returns the items held back (backpressure)."""
        policy = self.policy()
        _used, room = self.capacity.room(self.outbox)
        entries: list[tuple[str, str, str, bytes]] = []
        refusals: list[Refusal] = []
        outcomes: list[tuple[Outcome, str]] = []
        needed = blocked = 0
        for index, item in enumerate(items):
            try:
                envelope = parse_envelope(item.raw)
            except MalformedEnvelope as exc:
                refusals.append(Refusal(None, None, None, "malformed", str(exc), item.raw[:65536]))
                outcomes.append(("refused", f"malformed: {exc}"))
                continue
            if not policy.may_leave(envelope.data_class):
                detail = f"data class {envelope.data_class!r} may not leave site {policy.site!r}"
                refusals.append(Refusal(envelope.id, envelope.device, envelope.data_class, "policy", detail, item.raw))
                outcomes.append(("refused", detail))
                continue
            size = len(item.raw) + 64  # row and index overhead, roughly
            if blocked or needed + size > room:
                blocked += size
                if self.on_full == "backpressure":
                    held = items[index:]
                    break
                # Refuse the new data loudly; what is already queued stays untouched.
                detail = f"outbox full ({self.capacity.max_bytes} bytes limit)"
                refusals.append(Refusal(envelope.id, envelope.device, envelope.data_class, "outbox-full", detail))
                outcomes.append(("refused", detail))
                continue
            needed += size
            entries.append((envelope.id, envelope.device, envelope.data_class, item.raw))
            outcomes.append(("stored", ""))
        else:
            held = []
        if blocked and self.on_full == "refuse":
            log.error("outbox full: refused %d new messages", sum(1 for r in refusals if r.reason == "outbox-full"))
        self.stored += self.outbox.append(entries, refusals)
        self.capacity.update(self.outbox, blocked)
        for item, (outcome, reason) in zip(items, outcomes):
            item.done(outcome, reason)
        for item in held:
            item.done("held", "outbox full")
        return held
