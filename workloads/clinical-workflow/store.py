"""The service database (SQLite by default, PostgreSQL by URL): workflow state, Tasks, Provenance,
NEWS2 scores and inputs, processed messages and the audit/forwarding outboxes. A workflow step
writes its serialized state, its Tasks and their Provenance and AuditEvents in one transaction,
so a crash at any point leaves either the step entirely done or entirely not done."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import JSON, Boolean, Column, Float, Integer, MetaData, String, Table, Text

MIGRATIONS = Path(__file__).parent / "migrations"  # Alembic revisions of these tables
metadata = MetaData()
workflows = Table(
    "cw_workflows", metadata,
    Column("id", String(64), primary_key=True),
    Column("process", String(64), nullable=False),
    Column("key", String(300), nullable=False, index=True),  # one open instance per key (patient + trigger)
    Column("patient", String(200), nullable=False, index=True),
    Column("state", Text, nullable=False),  # SpiffWorkflow's JSON serialization
    Column("active", Boolean, nullable=False, index=True),
    Column("due", Float, index=True),  # the earliest waiting timer (epoch s): resume and tick read only this
    Column("updated", Float, nullable=False),
)
tasks = Table(
    "cw_tasks", metadata,
    Column("id", String(64), primary_key=True),  # the SpiffWorkflow task id: one FHIR Task per BPMN step instance
    Column("workflow_id", String(64), nullable=False, index=True),
    Column("step", String(64), nullable=False),
    Column("status", String(32), nullable=False, index=True),
    Column("owner", String(200)),
    Column("patient", String(200), nullable=False, index=True),
    Column("resource", JSON, nullable=False),
    Column("updated", Float, nullable=False),
)
provenance = Table(
    "cw_provenance", metadata,
    Column("id", String(64), primary_key=True),
    Column("target", String(200), nullable=False, index=True),
    Column("resource", JSON, nullable=False),
)
scores = Table(
    "cw_news2", metadata,
    Column("id", String(64), primary_key=True),
    Column("patient", String(200), nullable=False, index=True),
    Column("issued", Float, nullable=False),
    Column("total", Integer, nullable=False),
    Column("risk", String(16), nullable=False),
    Column("resource", JSON, nullable=False),
)
vitals = Table(
    "cw_vitals", metadata,
    Column("patient", String(200), primary_key=True),
    Column("state", JSON, nullable=False),
)
inbox = Table(  # message ids already processed: an MQTT redelivery after a crash is a no-op
    "cw_inbox", metadata,
    Column("id", String(200), primary_key=True),
    Column("received", Float, nullable=False),
)
audit_outbox = Table(
    "cw_audit_outbox", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event", JSON, nullable=False),
)
forward_outbox = Table(
    "cw_forward_outbox", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("patient", String(200), nullable=False),
    Column("resource", JSON, nullable=False),
    Column("state", String(16), nullable=False, index=True),  # pending | forwarded | withheld
)
documents = Table(  # completed evidence (WHO checklist QuestionnaireResponses) and their Provenance
    "cw_documents", metadata,
    Column("id", String(64), primary_key=True),
    Column("patient", String(200), nullable=False, index=True),
    Column("kind", String(64), nullable=False),
    Column("resource", JSON, nullable=False),
)
cds_jti = Table(  # CDS client JWT ids seen until they expire: a replayed JWT is refused, also after a restart
    "cw_cds_jti", metadata,
    Column("key", String(600), primary_key=True),  # iss + "\n" + jti
    Column("expires", Float, nullable=False, index=True),
)
