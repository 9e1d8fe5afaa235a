"""Retry pacing for services that call out (forwarder to ingest, audit log to its witness)."""
from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog's recommendation)."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next_delay(self) -> float:
        delay = random.uniform(0, min(self.cap, self.base * 2 ** self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
