"""Schema changes through Alembic (medplat.service.migrations) for every SQL workload, on SQLite and
the machine's real PostgreSQL: an empty database migrates to head and then matches the tables in code
exactly (Alembic's autogenerate comparison finds no difference); a database made by the earlier
`create_all` code is adopted (stamped at the baseline) with every row intact; a restart is a no-op."""
from __future__ import annotations

import ast
import datetime
import re
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from sqlalchemy.types import JSON, Boolean, Date, DateTime, Float, Integer, LargeBinary, String, Text

from conftest import fresh_database
from medplat.service.db import make_engine
from medplat.service.migrations import current_revision, migrate, schema_diff, _scripts
from medplat.workloads.audit_log import app as audit_app
from medplat.workloads.clinical_workflow import store as workflow_store
from medplat.workloads.consent import app as consent_app
from medplat.workloads.fleet import registry as fleet_registry
from medplat.workloads.ingest import app as ingest_app
from medplat.workloads.portal import identity as portal_identity
from medplat.workloads.pseudonymizer import service as pseudonymizer_service

REPO = Path(__file__).resolve().parents[1]
# (workload, its tables, its migrations folder): every workload with a SQL database.
WORKLOADS = {
    "ingest": (ingest_app.metadata, REPO / "workloads/ingest/migrations"),
    "audit-log": (audit_app.metadata, REPO / "workloads/audit-log/migrations"),
    "consent": (consent_app.metadata, REPO / "workloads/consent/migrations"),
    "fleet": (fleet_registry.metadata, REPO / "workloads/fleet/migrations"),
    "pseudonymizer": (pseudonymizer_service.metadata, REPO / "workloads/pseudonymizer/migrations"),
    "clinical-workflow": (workflow_store.metadata, workflow_store.MIGRATIONS),
    "portal": (portal_identity.sessions_table.metadata, portal_identity.MIGRATIONS),
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        yield make_engine(f"sqlite:///{tmp_path / 'service.sqlite'}")
        return
    with fresh_database("medplat_migrations") as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


def sample(column):
    """A value of the column's type; equal strings everywhere, so foreign keys find their parent."""
    kind = type(column.type)
    if issubclass(kind, (String, Text)):
        return "k"
    if issubclass(kind, Boolean):
        return True
    if issubclass(kind, Integer):
        return 7
    if issubclass(kind, Float):
        return 1.5
    if issubclass(kind, DateTime):
        return datetime.datetime(2026, 11, 30, 5, 0, tzinfo=datetime.timezone.utc)
    if issubclass(kind, Date):
        return datetime.date(2026, 11, 30)
    if issubclass(kind, LargeBinary):
        return b"\x00\x01"
    if issubclass(kind, JSON):
        return {"resourceType": "Consent", "n": 1}
    raise AssertionError(f"no sample for {column.type!r}")


def rows(engine, tables) -> dict[str, list[tuple]]:
    with engine.connect() as connection:
        return {table.name: [tuple(r) for r in connection.execute(select(table)).all()] for table in tables}


@pytest.mark.parametrize("workload", WORKLOADS)
def test_empty_database_migrates_to_head_matching_the_tables(workload, database):
    metadata, folder = WORKLOADS[workload]
    head = _scripts(folder).get_current_head()
    assert migrate(database, workload, folder, metadata) == head
    with database.connect() as connection:
        assert current_revision(connection, workload) == head
    assert schema_diff(database, workload, metadata) == [], "migrations and tables in code differ"
    assert migrate(database, workload, folder, metadata) == head, "a restart is a no-op"


def baseline_tables(folder: Path) -> set[str]:
    """The tables the first revision creates: what `create_all` made before migrations existed
    (tables added by later revisions never existed in such a database)."""
    (first,) = sorted(folder.glob("0001_*.py"))
    return set(re.findall(r"op\.create_table\('([^']+)'", first.read_text()))


@pytest.mark.parametrize("workload", WORKLOADS)
def test_database_made_by_create_all_is_adopted_without_data_loss(workload, database):
    metadata, folder = WORKLOADS[workload]
    legacy = [table for table in metadata.sorted_tables if table.name in baseline_tables(folder)]
    metadata.create_all(database, tables=legacy)  # what the services did before migrations
    with database.begin() as connection:
        for table in legacy:
            connection.execute(insert(table).values({c.name: sample(c) for c in table.columns}))
    before = rows(database, legacy)
    assert all(before.values())

    head = migrate(database, workload, folder, metadata)
    with database.connect() as connection:
        assert current_revision(connection, workload) == head
    assert rows(database, legacy) == before, "adoption rewrote or lost data"
    assert schema_diff(database, workload, metadata) == []


def test_schema_diff_sees_a_difference(tmp_path):
    """The comparison the tests above rely on does report a mismatch."""
    metadata, folder = WORKLOADS["consent"]
    engine = make_engine(f"sqlite:///{tmp_path / 'consent.sqlite'}")
    migrate(engine, "consent", folder, metadata)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP INDEX ix_consents_patient")
    assert [d[0] for d in schema_diff(engine, "consent", metadata)] == ["add_index"]


def test_no_workload_creates_tables_outside_migrations():
    """`create_all` would skip the version history: every SQL workload goes through `migrate`."""
    offenders = []
    for path in (REPO / "workloads").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "create_all":
                offenders.append(str(path.relative_to(REPO)))
    assert not offenders, offenders


# The edge-forwarder's outbox runs on plain sqlite3 (speed) with its schema under Alembic. This is
# the DDL its code ran before migrations (workloads/edge-forwarder/outbox.py, commit 7e9134c).
OLD_OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    pos INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, device TEXT NOT NULL,
    data_class TEXT NOT NULL, body BLOB NOT NULL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS refused (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, device TEXT, data_class TEXT, reason TEXT NOT NULL,
    detail TEXT NOT NULL, body BLOB, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def test_forwarder_outbox_migrates_to_head_matching_the_tables(tmp_path):
    from medplat.workloads.edge_forwarder import outbox

    path = tmp_path / "outbox.sqlite"
    head = outbox.migrate_outbox(path)
    engine = make_engine(f"sqlite:///{path}")
    assert schema_diff(engine, "edge-forwarder", outbox.metadata) == []
    assert outbox.migrate_outbox(path) == head


def test_forwarder_outbox_made_by_the_old_code_is_adopted_without_data_loss(tmp_path):
    import sqlite3

    from medplat.workloads.edge_forwarder import outbox

    path = tmp_path / "outbox.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_OUTBOX_SCHEMA)
        connection.execute("INSERT INTO outbox(id, device, data_class, body, received_at) "
                           "VALUES ('m1', 'pump-1', 'phi', x'7b7d', 1.0)")
        connection.execute("INSERT INTO counters VALUES ('sent', 41)")
    store = outbox.Outbox(path)  # what the forwarder does at start
    try:
        assert [(e.id, e.body) for e in store.peek(10)] == [("m1", b"{}")], "queued PHI survived adoption"
    finally:
        store.close()
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        assert current_revision(connection, "edge-forwarder") == "0001"
    assert schema_diff(engine, "edge-forwarder", outbox.metadata) == []


# The foundation's durable publisher (device adapters' queue to the site broker), likewise: this is
# the DDL it ran before migrations (src/medplat/service/durable_publisher.py, commit 7e9134c).
OLD_PUBLISHER_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, queued_at REAL NOT NULL);
"""


def test_publisher_queue_migrates_to_head_matching_the_table(tmp_path):
    from medplat.service import durable_publisher

    path = tmp_path / "queue.sqlite"
    head = durable_publisher.migrate_queue(path)
    assert schema_diff(make_engine(f"sqlite:///{path}"), "durable-publisher", durable_publisher.metadata) == []
    assert durable_publisher.migrate_queue(path) == head


def test_publisher_queue_made_by_the_old_code_is_adopted_without_data_loss(tmp_path):
    import sqlite3

    from medplat.service import durable_publisher

    path = tmp_path / "queue.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_PUBLISHER_SCHEMA)
        connection.execute("INSERT INTO outbox(topic, payload, queued_at) VALUES ('medplat/devices/d/observation', x'01', 2.0)")
    assert durable_publisher.migrate_queue(path) == "0001"
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT seq, topic, payload FROM outbox").fetchall() == [
            (1, "medplat/devices/d/observation", b"\x01")]
    assert schema_diff(make_engine(f"sqlite:///{path}"), "durable-publisher", durable_publisher.metadata) == []


def test_replicas_starting_together_migrate_once():
    """Two replicas of a service start on one fresh PostgreSQL database at the same moment."""
    import threading

    metadata, folder = WORKLOADS["ingest"]
    with fresh_database("medplat_migrations") as url:
        engines = [make_engine(url) for _ in range(4)]
        barrier, errors, heads = threading.Barrier(len(engines)), [], []

        def start(engine):
            barrier.wait()
            try:
                heads.append(migrate(engine, "ingest", folder, metadata))
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)
        threads = [threading.Thread(target=start, args=(engine,)) for engine in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors and len(heads) == len(engines), errors
        assert schema_diff(engines[0], "ingest", metadata) == []
        for engine in engines:
            engine.dispose()
