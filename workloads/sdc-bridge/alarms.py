"""Alarm workflow: SDC alert condition states -> DetectedIssue and Communication events.

- De-duplication: a condition already active on a device produces no new alarm (repeats are
  counted); a new alarm starts only when presence goes from false to true.
- Routing: rules (YAML) match on priority and location (fnmatch patterns) and name the
  recipients; the first matching rule wins.
- Escalation: an alarm not acknowledged within the rule's `escalateAfterSeconds` is sent to
  the rule's `escalateTo` recipients with priority stat, once.
- One DetectedIssue per alarm episode: raised as `preliminary`, updated (same id) to `final`
  when the condition ends, or to `unknown` when its provider is lost (the device may still have
  it; nobody can tell). A lost provider also raises a technical alarm, ended on reconnect.
- Every decision (raised, deduplicated, routed, escalated, acknowledged, ended, unknown) is recorded.
"""
from __future__ import annotations

import fnmatch
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field

TECHNICAL = "urn:medplat:technical-alarm"
CONNECTION_LOST = {"system": TECHNICAL, "code": "provider-connection-lost",
                   "display": "Connection to the device lost: its alarms are not monitored"}
PRIORITY = {"Hi": ("high", "urgent"), "Me": ("moderate", "urgent"), "Lo": ("low", "routine"), "None": ("low", "routine")}


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    priorities: list[str] = Field(default_factory=lambda: ["Hi", "Me", "Lo"])
    location: str = "*"
    recipients: list[str] = Field(min_length=1)
    escalate_after_seconds: float | None = Field(None, alias="escalateAfterSeconds", gt=0)
    escalate_to: list[str] = Field(default_factory=list, alias="escalateTo")


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[Rule] = Field(min_length=1)

    @classmethod
    def load(cls, path: Path) -> Rules:
        return cls.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))

    def route(self, priority: str, location: str) -> Rule | None:
        return next((r for r in self.rules if priority in r.priorities and fnmatch.fnmatch(location, r.location)),
                    None)


@dataclass
class Alarm:
    id: str
    device: str
    condition: str
    code: dict[str, Any]
    priority: str
    location: str
    started: float
    rule: Rule | None
    provider: str = ""
    acknowledged: bool = False
    escalated: bool = False
    repeats: int = 0


@dataclass
class AlarmRouter:
    rules: Rules
    emit: Callable[[str, dict[str, Any]], None]  # (device, FHIR resource) -> published
    record: Callable[[dict[str, Any]], None] = lambda decision: None
    active: dict[tuple[str, str], Alarm] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.RLock)
    # Active episodes survive a bridge restart: reloaded, they are ended (same DetectedIssue id)
    # or continued when their provider's initial MDIB is read again.
    state_path: Path | None = None

    def __post_init__(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        for saved in orjson.loads(self.state_path.read_bytes()):
            alarm = Alarm(**{k: v for k, v in saved.items() if k != "rule"}, rule=None)
            alarm.rule = self.rules.route(alarm.priority, alarm.location)
            self.active[(alarm.device, alarm.condition)] = alarm

    def _save(self) -> None:
        if self.state_path is None:
            return
        fields = ("id", "device", "condition", "code", "priority", "location", "started", "provider",
                  "acknowledged", "escalated", "repeats")
        rows = [{name: getattr(alarm, name) for name in fields} for alarm in self.active.values()]
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_suffix(".tmp")
        with open(temporary, "wb") as handle:
            handle.write(orjson.dumps(rows))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.state_path)

    def _decide(self, kind: str, alarm: Alarm, **details: Any) -> None:
        decision = {"decision": kind, "alarm": alarm.id, "device": alarm.device, "condition": alarm.condition,
                    "priority": alarm.priority, "at": time.time(), **details}
        self.decisions.append(decision)
        if len(self.decisions) > 20_000:  # bounded: the audit log keeps them all
            del self.decisions[:10_000]
        self.record(decision)
        if kind != "deduplicated":
            self._save()

    def condition(self, device: str, condition: str, code: dict[str, Any], priority: str, present: bool,
                  location: str, provider: str = "") -> None:
        key = (device, condition)
        with self._lock:
            alarm = self.active.get(key)
            if present and alarm is not None:
                alarm.repeats += 1
                self._decide("deduplicated", alarm, repeats=alarm.repeats)
                return
            if present:
                alarm = Alarm(f"alarm-{uuid.uuid4().hex[:16]}", device, condition, code, priority, location,
                              time.time(), self.rules.route(priority, location), provider)
                self.active[key] = alarm
                self._decide("raised", alarm, location=location)
                self.emit(device, self._issue(alarm, "preliminary"))
                if alarm.rule is not None:
                    self.emit(device, self._communication(alarm, alarm.rule.recipients, escalation=False))
                    self._decide("routed", alarm, rule=alarm.rule.name, recipients=alarm.rule.recipients)
                else:
                    self._decide("unrouted", alarm, reason="no rule matches priority and location")
                return
            if alarm is not None:
                del self.active[key]
                self._decide("ended", alarm, duration_s=round(time.time() - alarm.started, 3))
                self.emit(device, self._issue(alarm, "final"))

    def provider_lost(self, provider: str, device: str, location: str) -> None:
        """The provider's alarms are of unknown state now; a technical alarm says so."""
        with self._lock:
            lost = [key for key, alarm in self.active.items()
                    if alarm.provider == provider and alarm.condition != CONNECTION_LOST["code"]]
            for key in lost:
                alarm = self.active.pop(key)
                self._decide("unknown", alarm, reason="provider connection lost")
                self.emit(alarm.device, self._issue(alarm, "unknown"))
        self.condition(device, CONNECTION_LOST["code"], CONNECTION_LOST, "Me", True, location, provider)

    def provider_connected(self, provider: str, device: str, location: str) -> None:
        self.condition(device, CONNECTION_LOST["code"], CONNECTION_LOST, "Me", False, location, provider)

    def acknowledge(self, alarm_id: str, by: str) -> bool:
        with self._lock:
            for alarm in self.active.values():
                if alarm.id == alarm_id:
                    alarm.acknowledged = True
                    self._decide("acknowledged", alarm, by=by)
                    return True
        return False

    def escalate_due(self, now: float | None = None) -> int:
        now = now or time.time()
        escalated = 0
        with self._lock:
            for alarm in self.active.values():
                rule = alarm.rule
                if (rule and rule.escalate_after_seconds and rule.escalate_to and not alarm.acknowledged
                        and not alarm.escalated and now - alarm.started >= rule.escalate_after_seconds):
                    alarm.escalated = True
                    self.emit(alarm.device, self._communication(alarm, rule.escalate_to, escalation=True))
                    self._decide("escalated", alarm, recipients=rule.escalate_to,
                                 after_s=round(now - alarm.started, 3))
                    escalated += 1
        return escalated

    def _issue(self, alarm: Alarm, status: str) -> dict[str, Any]:
        severity = PRIORITY.get(alarm.priority, ("low", "routine"))[0]
        return {"resourceType": "DetectedIssue", "id": alarm.id, "status": status,
                "code": {"coding": [alarm.code]}, "severity": severity,
                "implicated": [{"reference": f"Device/{alarm.device}"}],
                "identifiedDateTime": _iso(alarm.started),
                "detail": f"{alarm.condition} on {alarm.device} at {alarm.location}"}

    def _communication(self, alarm: Alarm, recipients: list[str], *, escalation: bool) -> dict[str, Any]:
        priority = "stat" if escalation else PRIORITY.get(alarm.priority, ("low", "routine"))[1]
        return {"resourceType": "Communication", "id": f"{alarm.id}-{'esc' if escalation else 'msg'}",
                "status": "in-progress", "priority": priority,
                "about": [{"reference": f"DetectedIssue/{alarm.id}"}],
                "recipient": [{"reference": r} for r in recipients],
                "payload": [{"contentString": f"{'ESCALATED: ' if escalation else ''}{alarm.condition} "
                                              f"({alarm.priority}) on {alarm.device} at {alarm.location}"}]}


def _iso(seconds: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).isoformat(timespec="milliseconds")
