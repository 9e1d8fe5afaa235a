"""The workflow engine: SpiffWorkflow running the BPMN/DMN files in `processes/`, its state
serialized to the service database after every step, its human steps (user tasks) surfaced as
FHIR Tasks. After a crash `resume()` reloads every open instance; overdue timers fire on the next
`tick()`. One lock serializes steps: MQTT intake, the REST API and the timer thread share it."""
from __future__ import annotations

import datetime
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer
from SpiffWorkflow.camunda.parser import CamundaParser
from SpiffWorkflow.camunda.serializer import DEFAULT_CONFIG
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine as Database

from medplat.service.fhir import FhirError
from medplat.service.migrations import migrate
from medplat.workloads.clinical_workflow import store, tasks
from medplat.workloads.clinical_workflow.sandbox import script_engine

log = logging.getLogger("medplat.clinical-workflow.engine")
PROCESSES = Path(__file__).parent / "processes"
SERVICE = "clinical-workflow"


def load_specs(folder: Path = PROCESSES) -> dict[str, tuple[Any, dict]]:
    parser = CamundaParser()
    parser.add_bpmn_files(sorted(str(p) for p in folder.glob("*.bpmn")))
    parser.add_dmn_files(sorted(str(p) for p in folder.glob("*.dmn")))
    return {pid: (parser.get_spec(pid), parser.get_subprocess_specs(pid)) for pid in parser.get_process_ids()}


def next_due(workflow: BpmnWorkflow) -> float | None:
    """When the earliest waiting timer fires (epoch seconds); 0 when a timer has no time yet."""
    due = []
    for task in workflow.get_tasks(state=TaskState.WAITING):
        if getattr(task.task_spec, "event_definition", None) is None or "Timer" not in type(
                task.task_spec.event_definition).__name__:
            continue
        value = task.internal_data.get("event_value")
        due.append(datetime.datetime.fromisoformat(value).timestamp() if isinstance(value, str) else 0.0)
    return min(due) if due else None


@dataclass(frozen=True)
class Policy:
    """Site settings the processes read: lane (role) -> recipients, and how long a step may wait."""
    lanes: dict[str, list[str]]
    due_s: dict[str, float]  # BPMN step id -> restriction.period length


class Engine:
    def __init__(self, db: Database, policy: Policy, *, folder: Path = PROCESSES,
                 on_commit: Callable[[], None] | None = None) -> None:
        self.db, self.policy = db, policy
        # process id -> called inside the transaction that completes an instance (evidence, ...)
        self.on_completed: dict[str, Callable[[Connection, str, dict[str, Any]], None]] = {}
        self.specs = load_specs(folder)
        self.serializer = BpmnWorkflowSerializer(BpmnWorkflowSerializer.configure(DEFAULT_CONFIG))
        # Open instances: id -> (patient, next timer due, epoch s); the state itself is loaded on
        # first use, so a restart reads only this index (fast, however many are open).
        self.open: dict[str, tuple[str, float | None]] = {}
        self.loaded: dict[str, tuple[BpmnWorkflow, str]] = {}  # id -> (workflow, patient), loaded on use
        self.lock = threading.RLock()
        self.on_commit = on_commit or (lambda: None)
        migrate(db, "clinical-workflow", store.MIGRATIONS, store.metadata)

    # --- lifecycle -------------------------------------------------------------------------------
    def resume(self) -> int:
        """Index every open workflow (after a restart or crash); each is deserialized when first used."""
        with self.lock, self.db.connect() as conn:
            rows = conn.execute(select(store.workflows.c.id, store.workflows.c.patient, store.workflows.c.due)
                                .where(store.workflows.c.active.is_(True))).all()
            self.loaded.clear()
            self.open = {row.id: (row.patient, row.due) for row in rows}
        return len(rows)

    def workflow(self, workflow_id: str) -> tuple[BpmnWorkflow, str]:
        """An open instance, deserialized from the database on first use."""
        with self.lock:
            if workflow_id not in self.loaded:
                with self.db.connect() as conn:
                    row = conn.execute(select(store.workflows.c.state, store.workflows.c.patient).where(
                        store.workflows.c.id == workflow_id)).one()
                workflow = self.serializer.deserialize_json(row.state)
                workflow.script_engine = script_engine()
                self.loaded[workflow_id] = (workflow, row.patient)
            return self.loaded[workflow_id]

    def start(self, conn: Connection, process: str, *, key: str, patient: str, data: dict[str, Any]) -> str | None:
        """Start `process` unless an open instance has the same key; inside the caller's transaction."""
        with self.lock:
            open_one = conn.execute(select(store.workflows.c.id).where(store.workflows.c.key == key,
                                                                       store.workflows.c.active.is_(True))).first()
            if open_one is not None:
                return None
            spec, subprocesses = self.specs[process]
            workflow = BpmnWorkflow(spec, subprocesses, script_engine=script_engine())
            for task in workflow.get_tasks(state=TaskState.READY):
                task.set_data(**data, patient=patient, accepted=False)
            workflow_id = str(uuid.uuid4())
            workflow.do_engine_steps()
            due = next_due(workflow)
            conn.execute(store.workflows.insert(), dict(
                id=workflow_id, process=process, key=key, patient=patient, active=True, updated=time.time(),
                state=self.serializer.serialize_json(workflow), due=due))
            self.loaded[workflow_id] = (workflow, patient)
            self.open[workflow_id] = (patient, due)
            self._sync(conn, workflow_id, new=True)
            return workflow_id

    def open_for(self, conn: Connection, key_prefix: str) -> list[tuple[str, str]]:
        rows = conn.execute(select(store.workflows.c.id, store.workflows.c.key).where(
            store.workflows.c.active.is_(True), store.workflows.c.key.like(f"{key_prefix}%"))).all()
        return [(r.id, r.key) for r in rows]

    def cancel(self, conn: Connection, workflow_id: str, *, reason: str) -> None:
        """Stop an instance (e.g. superseded by a higher NEWS2 response); its open Tasks are cancelled."""
        with self.lock:
            workflow, _ = self.workflow(workflow_id)
            self.loaded.pop(workflow_id)
            self.open.pop(workflow_id, None)
            workflow.cancel()
            self._close_tasks(conn, workflow_id, keep=set(), reason=reason)
            conn.execute(update(store.workflows).where(store.workflows.c.id == workflow_id).values(
                active=False, state=self.serializer.serialize_json(workflow), updated=time.time()))

    # --- human steps -------------------------------------------------------------------------------
    def task(self, task_id: str) -> dict[str, Any]:
        with self.db.connect() as conn:
            row = conn.execute(select(store.tasks.c.resource).where(store.tasks.c.id == task_id)).first()
        if row is None:
            raise FhirError(404, f"no Task {task_id}")
        return row.resource

    def claim(self, task_id: str, who: str, roles: frozenset[str] = frozenset()) -> dict[str, Any]:
        def apply(conn, row):
            if row.owner not in (None, who):
                raise FhirError(409, f"Task {task_id} is owned by {row.owner}; the owner can hand it over")
            if row.status not in tasks.OPEN:
                raise FhirError(409, f"Task {task_id} is {row.status}")
            self._require_recipient(row, who, roles)
            return tasks.changed(row.resource, owner={"reference": who}), "claimed"
        return self._change(task_id, who, apply)

    def handover(self, task_id: str, who: str, to: str, reason: str | None) -> dict[str, Any]:
        def apply(conn, row):
            self._require_owner(row, who)
            if row.status not in tasks.OPEN:
                raise FhirError(409, f"Task {task_id} is {row.status}")
            return tasks.changed(row.resource, owner={"reference": to}), f"handed over to {to}"
        return self._change(task_id, who, apply, reason=reason)

    def transition(self, task_id: str, who: str, status: str, reason: str | None = None,
                   output: Callable[[Connection, Any], dict[str, Any]] | None = None,
                   roles: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Move a Task; `output(conn, row)` gives the step's results (data for the process) when completed."""
        def apply(conn, row):
            self._require_owner(row, who)
            self._require_recipient(row, who, roles)  # an owner by hand-over must hold the role too
            if status not in tasks.TRANSITIONS.get(row.status, frozenset()):
                raise FhirError(409, f"Task {task_id}: {row.status} -> {status} is not a Task state transition; "
                                     f"allowed: {sorted(tasks.TRANSITIONS.get(row.status, ())) or 'none'}")
            fields: dict[str, Any] = {"status": status}
            if reason:
                fields["statusReason"] = {"text": reason}
            results = output(conn, row) if output is not None and status == "completed" else {}
            if results:
                fields["output"] = [{"type": {"text": key}, "valueString": "confirmed"} for key in sorted(results)]
            resource = tasks.changed(row.resource, **fields)
            self._advance(conn, row.workflow_id, task_id, status, results)
            return resource, f"status {row.status} -> {status}"
        return self._change(task_id, who, apply, reason=reason)

    @staticmethod
    def _require_recipient(row, who: str, roles: frozenset[str]) -> None:
        if not tasks.may_perform(row.resource, who, roles):
            raise FhirError(403, f"Task {row.id} is for {', '.join(sorted(tasks.recipients(row.resource)))}; "
                                 f"{who} holds none of these", code="forbidden")

    @staticmethod
    def _require_owner(row, who: str) -> None:
        if row.owner != who:
            raise FhirError(403, f"only the Task's owner ({row.owner or 'nobody: claim it first'}) moves it",
                            code="forbidden")

    def _change(self, task_id: str, who: str, apply, reason: str | None = None) -> dict[str, Any]:
        with self.lock:
            with self.db.begin() as conn:
                row = conn.execute(select(store.tasks).where(store.tasks.c.id == task_id)).first()
                if row is None:
                    raise FhirError(404, f"no Task {task_id}")
                resource, activity = apply(conn, row)
                self._write_task(conn, resource, agent=who, activity=activity, reason=reason, new=False,
                                 workflow_id=row.workflow_id, step=row.step)
            self.on_commit()
            return resource

    def _advance(self, conn: Connection, workflow_id: str, task_id: str, status: str,
                 results: dict[str, Any] | None = None) -> None:
        """Feed a Task's new status into its BPMN step: accept sets `accepted`; an end state completes it."""
        workflow, _ = self.workflow(workflow_id)
        spiff = workflow.get_task_from_id(uuid.UUID(task_id))
        if status == "accepted":
            # Pending tasks take their parent's data when they become ready (a boundary timer's
            # parent is the step's split): both must learn of the acceptance.
            for waiting in workflow.get_tasks(state=TaskState.NOT_FINISHED_MASK):
                waiting.set_data(accepted=True)
                if waiting.parent is not None:
                    waiting.parent.set_data(accepted=True)
        if status in tasks.TERMINAL and spiff.state == TaskState.READY:
            spiff.set_data(outcome=status, **(results or {}))
            spiff.run()
            workflow.do_engine_steps()
        self._save(conn, workflow_id, skip_task=task_id)

    # --- timers ------------------------------------------------------------------------------------
    def tick(self) -> int:
        """Fire due timers (escalations); returns the number of Tasks created."""
        created = 0
        now = time.time()
        with self.lock:
            for workflow_id, (_, due) in list(self.open.items()):
                if due is None or due > now:
                    continue
                workflow, _ = self.workflow(workflow_id)
                before = len(workflow.get_tasks(state=TaskState.WAITING))
                workflow.refresh_timers()
                if len(workflow.get_tasks(state=TaskState.WAITING)) == before:
                    continue  # (a due timer fires on the next round; clocks are not exact)
                workflow.do_engine_steps()
                with self.db.begin() as conn:
                    created += self._save(conn, workflow_id)
        if created:
            self.on_commit()
        return created

    # --- persistence -------------------------------------------------------------------------------
    def _save(self, conn: Connection, workflow_id: str, skip_task: str | None = None) -> int:
        workflow, patient = self.workflow(workflow_id)
        created = self._sync(conn, workflow_id, skip_task=skip_task)
        done = workflow.is_completed()
        if done and workflow.spec.name in self.on_completed:
            self.on_completed[workflow.spec.name](conn, patient, workflow.data or workflow.last_task.data)
        due = None if done else next_due(workflow)
        conn.execute(update(store.workflows).where(store.workflows.c.id == workflow_id).values(
            state=self.serializer.serialize_json(workflow), active=not done, updated=time.time(), due=due))
        if done:
            self.loaded.pop(workflow_id, None)
            self.open.pop(workflow_id, None)
        else:
            self.open[workflow_id] = (patient, due)
        return created

    def _sync(self, conn: Connection, workflow_id: str, skip_task: str | None = None, new: bool = False) -> int:
        """A FHIR Task for every ready user task that has none; Tasks whose step vanished are cancelled.
        `new`: the instance was just started, so it has no Tasks yet (two queries fewer per start)."""
        workflow, patient = self.workflow(workflow_id)
        ready = {str(t.id): t for t in workflow.get_tasks(state=TaskState.READY, manual=True)}
        known = set() if new else {r.id for r in conn.execute(select(store.tasks.c.id).where(
            store.tasks.c.workflow_id == workflow_id))}
        created = 0
        for task_id, spiff in ready.items():
            if task_id in known:
                continue
            resource = self._new_task(workflow, workflow_id, spiff, patient)
            self._write_task(conn, resource, agent=SERVICE, activity="created", reason=None, new=True,
                             workflow_id=workflow_id, step=spiff.task_spec.bpmn_id)
            created += 1
        if not new:
            self._close_tasks(conn, workflow_id, keep=set(ready) | ({skip_task} if skip_task else set()),
                              reason="the process no longer needs this step")
        return created

    def _new_task(self, workflow: BpmnWorkflow, workflow_id: str, spiff, patient: str) -> dict[str, Any]:
        spec, data = spiff.task_spec, spiff.data
        lane = spec.lane or ""
        earlier = None
        if spec.bpmn_id.endswith("escalation"):  # an escalation is part of the step it escalates
            first = next((t for t in workflow.get_tasks(state=TaskState.ANY_MASK, manual=True)
                          if t is not spiff and not t.task_spec.bpmn_id.endswith("escalation")), None)
            earlier = f"Task/{first.id}" if first is not None else None
        return tasks.new_task(
            task_id=str(spiff.id), process=workflow.spec.name, step=spec.bpmn_id, name=spec.bpmn_name or spec.bpmn_id,
            description=getattr(spec, "documentation", None), patient=patient, focus=data.get("focus"),
            priority="stat" if earlier else data.get("priority", "routine"),
            recipients=self.policy.lanes.get(lane, []), due_s=self.policy.due_s.get(spec.bpmn_id),
            part_of=earlier)

    def _close_tasks(self, conn: Connection, workflow_id: str, *, keep: set[str], reason: str) -> None:
        rows = conn.execute(select(store.tasks).where(store.tasks.c.workflow_id == workflow_id,
                                                      store.tasks.c.status.in_(tasks.OPEN))).all()
        for row in rows:
            if row.id in keep:
                continue
            resource = tasks.changed(row.resource, status="cancelled", statusReason={"text": reason})
            self._write_task(conn, resource, agent=SERVICE, activity="cancelled by the process", reason=reason,
                             new=False, workflow_id=workflow_id, step=row.step)

    def _write_task(self, conn: Connection, resource: dict[str, Any], *, agent: str, activity: str,
                    reason: str | None, new: bool, workflow_id: str, step: str) -> None:
        owner = (resource.get("owner") or {}).get("reference")
        values = dict(status=resource["status"], owner=owner, resource=resource, updated=time.time())
        if new:
            conn.execute(store.tasks.insert(), dict(id=resource["id"], workflow_id=workflow_id, step=step,
                                                    patient=resource["for"]["reference"], **values))
        else:
            conn.execute(update(store.tasks).where(store.tasks.c.id == resource["id"]).values(**values))
        record = tasks.provenance(resource, agent=agent, activity=activity, reason=reason)
        conn.execute(store.provenance.insert(), dict(id=record["id"], target=f"Task/{resource['id']}",
                                                     resource=record))
        conn.execute(store.audit_outbox.insert(), dict(
            event=tasks.audit(resource, agent=agent, activity=activity, service=SERVICE)))
        conn.execute(store.forward_outbox.insert(), dict(patient=resource["for"]["reference"], resource=resource,
                                                         state="pending"))
