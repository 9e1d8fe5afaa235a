"""Forward the outbox to the EU ingest over mutual TLS, one batch at a time, in outbox order.

Rows are deleted only after the ingest answered that the whole batch committed (it is
idempotent by message id, so resending after any failure is safe). One batch in flight at a
time keeps per-device order. While the cloud is unreachable: exponential backoff with full
jitter. A batch the ingest rejects for one message (422 naming `messages[i]`) moves that
message to `refused` with the OperationOutcome, so one bad message cannot block the site.
"""
from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from collections.abc import Callable

import httpx
import orjson
from opentelemetry import propagate, trace

from medplat.service.tracing import annotate, tracer

from medplat.service.backoff import Backoff
from medplat.workloads.edge_forwarder.outbox import Entry, Outbox, Refusal
from medplat.workloads.edge_forwarder.site_policy import SitePolicy

log = logging.getLogger("medplat.edge-forwarder.sender")
_INDEX = re.compile(r"^messages\[(\d+)\]")


class Sender:
    def __init__(self, outbox: Outbox, policy: Callable[[], SitePolicy], url: Callable[[], str | None],
                 context: ssl.SSLContext | None, *, batch_size: int, backoff: Backoff, timeout_s: float = 30) -> None:
        self.outbox, self.policy, self.url = outbox, policy, url
        self.batch_size, self.backoff = batch_size, backoff
        self._client = httpx.Client(verify=context if context is not None else True, timeout=timeout_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-sender", daemon=True)
        self.connected = False
        self.last_error = ""
        self._rate_window: list[tuple[float, int]] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=35)
        self._client.close()

    def send_rate(self) -> float:
        """Messages/s confirmed by the cloud over the last 10 s."""
        now = time.monotonic()
        window = [(t, n) for t, n in self._rate_window if now - t <= 10]
        self._rate_window = window
        return round(sum(n for _, n in window) / 10, 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                progressed = self.send_once()
            except Exception as exc:  # keep forwarding whatever goes wrong; nothing is deleted
                log.exception("sender error")
                self.last_error, progressed = str(exc), False
            if progressed is None:
                self._stop.wait(0.05)  # nothing queued
            elif not progressed:
                self._stop.wait(self.backoff.next_delay())

    def send_once(self) -> bool | None:
        """Send one batch. None: outbox empty; True: progress; False: back off."""
        entries = self.outbox.peek(self.batch_size)
        if not entries:
            return None
        with tracer().start_as_current_span("forward batch", kind=trace.SpanKind.CLIENT) as span:
            progressed = self._send(entries)
            annotate(span, site=self.policy().site, count=len(entries),
                     outcome="progress" if progressed else "backoff")
            return progressed

    def _send(self, entries: list[Entry]) -> bool:
        url = self.url()
        if not url:
            self.last_error = "no cloud endpoint configured"
            return False
        policy = self.policy()
        blocked = [e for e in entries if not policy.may_leave(e.data_class)]
        if blocked:  # the policy changed while they were queued: refuse, never send
            self.outbox.remove([e.pos for e in blocked], refusals=[
                Refusal(e.id, e.device, e.data_class, "policy",
                        f"data class {e.data_class!r} may not leave site {policy.site!r}", e.body) for e in blocked])
            return True
        try:
            headers = {"content-type": "application/json"}
            propagate.inject(headers)  # traceparent: the ingest's span joins this trace
            response = self._client.post(f"{url.rstrip('/')}/batches", content=_batch_body(entries), headers=headers)
        except httpx.HTTPError as exc:
            self._failed(f"cloud unreachable: {type(exc).__name__}: {exc}")
            return False
        if response.status_code == 200:
            confirmed = response.json()
            done = set(confirmed.get("committed", [])) | set(confirmed.get("duplicates", []))
            sent = [e for e in entries if e.id in done]
            if len(sent) != len(entries):  # never delete what the cloud did not confirm
                self._failed(f"cloud confirmed {len(sent)} of {len(entries)} messages")
            self.outbox.remove([e.pos for e in sent], sent=len(sent))
            self._rate_window.append((time.monotonic(), len(sent)))
            self.connected, self.last_error = True, ""
            self.backoff.reset()
            return len(sent) == len(entries)
        if response.status_code == 413 and self.batch_size > 1:
            self.batch_size = max(1, self.batch_size // 2)
            log.warning("cloud refused the batch size; sending %d per batch", self.batch_size)
            return True
        if response.status_code == 422:
            rejected = _rejected_entry(response, entries)
            if rejected is not None:
                log.error("cloud rejected message %s: %s", rejected.id, response.text[:500])
                self.outbox.remove([rejected.pos], refusals=[Refusal(
                    rejected.id, rejected.device, rejected.data_class, "rejected-by-cloud",
                    response.text[:4000], rejected.body)])
                return True
        self._failed(f"cloud answered {response.status_code}: {response.text[:300]}")
        return False

    def _failed(self, reason: str) -> None:
        if reason != self.last_error:
            log.warning("%s; backing off", reason)
        self.connected, self.last_error = False, reason


def _batch_body(entries: list[Entry]) -> bytes:
    # The outbox position is the message's per-site sequence: order is kept at the ingest.
    return orjson.dumps({"messages": [{**orjson.loads(e.body), "seq": e.pos} for e in entries]})


def _rejected_entry(response: httpx.Response, entries: list[Entry]) -> Entry | None:
    try:
        issues = response.json().get("issue", [])
        expression = issues[0].get("expression", [""])[0]
    except (ValueError, AttributeError, IndexError, KeyError):
        return None
    match = _INDEX.match(expression)
    if match and int(match.group(1)) < len(entries):
        return entries[int(match.group(1))]
    return None
