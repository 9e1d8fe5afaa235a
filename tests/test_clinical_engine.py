"""The clinical-workflow engine: BPMN/DMN processes in SpiffWorkflow, sandboxed expressions, FHIR
Task state machine (http://hl7.org/fhir/R4/task.html#statemachine) with Provenance and audit,
state in the database after every step, and resumption after SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET

import pytest
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.task import Task
from sqlalchemy import func, select

from medplat.service.db import make_engine
from medplat.service.fhir import FhirError
from medplat.workloads.clinical_workflow import engine as engine_module
from medplat.workloads.clinical_workflow import sandbox, store
from medplat.workloads.clinical_workflow.engine import Engine, Policy

POLICY = Policy(lanes={"medical-team": ["PractitionerRole/medical-team"],
                       "critical-care-outreach": ["PractitionerRole/outreach"]},
                due_s={"emergency_response": 900})
NURSE, DOCTOR = "Practitioner/nurse-1", "Practitioner/doctor-1"
TEAM = frozenset({"PractitionerRole/medical-team"})  # the role both hold in these tests (Task recipients)


def make(tmp_path, name="cw"):
    return Engine(make_engine(f"sqlite:///{tmp_path / name}.sqlite"), POLICY)


def start(engine, risk="high", escalate_after="PT1H", patient="Patient/p1"):
    with engine.lock, engine.db.begin() as conn:
        return engine.start(conn, "news2_response", key=f"news2:{patient}:{risk}", patient=patient,
                            data={"risk": risk, "focus": "Observation/news2-1", "escalate_after": escalate_after})


def open_tasks(engine):
    with engine.db.connect() as conn:
        return [r.resource for r in conn.execute(select(store.tasks).where(store.tasks.c.status != "cancelled"))]


def test_processes_are_bpmn_files_with_diagrams():
    for path in engine_module.PROCESSES.glob("*.bpmn"):
        root = ET.parse(path).getroot()
        ns = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL", "di": "http://www.omg.org/spec/BPMN/20100524/DI"}
        nodes = {e.get("id") for e in root.iter() if e.get("id") and e.tag.split("}")[1] in (
            "userTask", "startEvent", "endEvent", "exclusiveGateway", "boundaryEvent", "businessRuleTask")}
        shapes = {e.get("bpmnElement") for e in root.iterfind(".//di:BPMNShape", ns)}
        assert nodes <= shapes, f"{path.name}: no diagram shape for {nodes - shapes}"  # drawable in a modeler


@pytest.mark.parametrize("risk,step,priority", [("low-medium", "hourly_observations", "urgent"),
                                                ("medium", "urgent_response", "asap"),
                                                ("high", "emergency_response", "stat")])
def test_each_risk_level_creates_its_task(tmp_path, risk, step, priority):
    engine = make(tmp_path)
    start(engine, risk)
    [task] = open_tasks(engine)
    Task.model_validate(task)
    assert task["code"]["coding"][0]["code"] == step and task["priority"] == priority  # DMN decided the priority
    assert task["status"] == "requested" and task["for"]["reference"] == "Patient/p1"
    assert task["focus"]["reference"] == "Observation/news2-1" and "start" in task["restriction"]["period"]


def test_same_key_starts_once(tmp_path):
    engine = make(tmp_path)
    assert start(engine) and start(engine) is None
    assert len(open_tasks(engine)) == 1


def test_only_the_owner_moves_the_task_along_the_state_machine(tmp_path):
    engine = make(tmp_path)
    start(engine)
    [task] = open_tasks(engine)
    with pytest.raises(FhirError) as refused:
        engine.transition(task["id"], NURSE, "accepted", roles=TEAM)
    assert refused.value.status_code == 403  # nobody owns it yet
    engine.claim(task["id"], DOCTOR, TEAM)
    with pytest.raises(FhirError) as taken:
        engine.claim(task["id"], NURSE, TEAM)
    assert taken.value.status_code == 409
    with pytest.raises(FhirError) as other:
        engine.transition(task["id"], NURSE, "accepted", roles=TEAM)
    assert other.value.status_code == 403
    with pytest.raises(FhirError) as jump:
        engine.transition(task["id"], DOCTOR, "completed", roles=TEAM)  # requested -> completed is no transition
    assert jump.value.status_code == 409
    for status in ("accepted", "in-progress", "completed"):
        task = engine.transition(task["id"], DOCTOR, status, roles=TEAM)
    assert task["status"] == "completed" and task["meta"]["versionId"] == "5"
    with engine.db.connect() as conn:
        assert not conn.execute(select(store.workflows.c.active)).scalar()  # the process ended
        records = [r.resource for r in conn.execute(select(store.provenance).where(
            store.provenance.c.target == f"Task/{task['id']}"))]
        audits = conn.execute(select(func.count()).select_from(store.audit_outbox)).scalar()
    assert len(records) == 5 and audits == 5
    for record in records:
        Provenance.model_validate(record)
    assert {r["agent"][0]["who"].get("reference") for r in records} == {None, DOCTOR}


def test_not_accepted_in_time_escalates(tmp_path):
    engine = make(tmp_path)
    start(engine, escalate_after="PT1S")
    [task] = open_tasks(engine)
    assert engine.tick() == 0
    time.sleep(1.1)
    assert engine.tick() == 1
    escalation = next(t for t in open_tasks(engine) if t["id"] != task["id"])
    assert escalation["code"]["coding"][0]["code"] == "emergency_escalation" and escalation["priority"] == "stat"
    assert escalation["partOf"] == [{"reference": f"Task/{task['id']}"}]
    assert escalation["restriction"]["recipient"] == [{"reference": "PractitionerRole/outreach"}]


def test_accepted_in_time_does_not_escalate(tmp_path):
    engine = make(tmp_path)
    start(engine, escalate_after="PT1S")
    [task] = open_tasks(engine)
    engine.claim(task["id"], DOCTOR, TEAM)
    engine.transition(task["id"], DOCTOR, "accepted", roles=TEAM)
    time.sleep(1.1)
    assert engine.tick() == 0
    assert [t["id"] for t in open_tasks(engine)] == [task["id"]]


def test_rejection_escalates_and_handover_moves_ownership(tmp_path):
    engine = make(tmp_path)
    start(engine)
    [task] = open_tasks(engine)
    engine.claim(task["id"], NURSE, TEAM)
    handed = engine.handover(task["id"], NURSE, DOCTOR, "end of shift")
    assert handed["owner"] == {"reference": DOCTOR}
    with pytest.raises(FhirError):
        engine.transition(task["id"], NURSE, "accepted", roles=TEAM)
    engine.transition(task["id"], DOCTOR, "rejected", reason="not my patient", roles=TEAM)
    [escalation] = [t for t in open_tasks(engine) if t["id"] != task["id"]]
    assert escalation["code"]["coding"][0]["code"] == "emergency_escalation"


def test_higher_risk_supersedes_and_cancel_closes_tasks(tmp_path):
    engine = make(tmp_path)
    workflow_id = start(engine, "medium")
    with engine.lock, engine.db.begin() as conn:
        engine.cancel(conn, workflow_id, reason="superseded")
    with engine.db.connect() as conn:
        statuses = [r.status for r in conn.execute(select(store.tasks.c.status))]
    assert statuses == ["cancelled"]


def test_sandbox_refuses_escape_attempts():
    environment = sandbox.RestrictedEnvironment()
    assert environment.evaluate('risk == "high"', {"risk": "high"}) is True
    for hostile in ("__import__('os').system('true')", "().__class__.__bases__[0].__subclasses__()",
                    "open('/etc/passwd').read()"):
        with pytest.raises((sandbox.SandboxError, NameError, AttributeError)):
            environment.evaluate(hostile, {})
    context = {"a": 2}
    environment.execute("b = a * 3", context)
    assert context["b"] == 6
    with pytest.raises(ImportError):  # compiles, but the sandbox has no __import__
        environment.execute("import os", {})


CHILD = textwrap.dedent("""
    import sys
    from medplat.service.db import make_engine
    from medplat.workloads.clinical_workflow.engine import Engine, Policy
    engine = Engine(make_engine(sys.argv[1]), Policy(lanes={}, due_s={}))
    for n in range(10_000):
        with engine.lock, engine.db.begin() as conn:
            engine.start(conn, "news2_response", key=f"news2:Patient/p{n}:high", patient=f"Patient/p{n}",
                         data={"risk": "high", "escalate_after": "PT1H"})
        print(n, flush=True)
""")


def test_sigkill_mid_process_resumes_without_lost_or_duplicated_tasks(tmp_path):
    url = f"sqlite:///{tmp_path / 'killed.sqlite'}"
    child = subprocess.Popen([sys.executable, "-c", CHILD, url], stdout=subprocess.PIPE, text=True)
    for _ in range(15):  # let it commit some instances, then kill it between (or inside) steps
        child.stdout.readline()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    engine = Engine(make_engine(url), POLICY)
    resumed = engine.resume()  # how fast: benchmarks/clinical_workflow.py
    assert resumed >= 15
    with engine.db.connect() as conn:
        per_workflow = dict(conn.execute(select(store.tasks.c.workflow_id, func.count()).group_by(
            store.tasks.c.workflow_id)).all())
        workflows = {r.id for r in conn.execute(select(store.workflows.c.id))}
    assert set(per_workflow) == workflows and set(per_workflow.values()) == {1}  # one Task each, none orphaned
    assert not engine.loaded  # resuming reads the index only; each instance loads on first use
    for workflow_id in engine.open:  # the restored state agrees with the Tasks
        workflow, _ = engine.workflow(workflow_id)
        [ready] = [t for t in workflow.get_tasks() if t.task_spec.manual and t.state == 16]
        assert engine.task(str(ready.id))["status"] == "requested"
    # and the resumed engine goes on: the first instance's Task completes its process
    workflow, _ = engine.workflow(next(iter(engine.open)))
    task_id = str(next(t for t in workflow.get_tasks() if t.task_spec.manual).id)
    engine.claim(task_id, DOCTOR, TEAM)
    for status in ("accepted", "in-progress", "completed"):
        engine.transition(task_id, DOCTOR, status, roles=TEAM)
    assert len(engine.open) == resumed - 1


def test_a_timer_survives_a_restart(tmp_path):
    engine = make(tmp_path)
    start(engine, escalate_after="PT1S")
    restarted = make(tmp_path)  # a new process on the same database
    assert restarted.resume() == 1 and not restarted.loaded
    assert restarted.tick() == 0
    time.sleep(1.1)
    assert restarted.tick() == 1  # the persisted deadline passed while "down": escalated now
    assert {t["code"]["coding"][0]["code"] for t in open_tasks(restarted)} == {"emergency_response",
                                                                              "emergency_escalation"}
