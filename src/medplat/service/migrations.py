"""Schema changes through Alembic migrations, one way for every SQL workload (SQLite and PostgreSQL).

Each workload keeps its revisions in its own folder (`workloads/<name>/migrations/NNNN_*.py`, plain
Alembic revision scripts using `op`), the first one equal to the schema its tables had when
`create_all` made them. At startup the service calls `migrate(engine, name, folder, metadata)`:

- an empty database is upgraded to head;
- a database made by the earlier `create_all` code (the workload's tables, no version row) is
  adopted: stamped at the baseline revision, nothing rewritten, then upgraded to head;
- a database already under migration is upgraded to head.

On PostgreSQL a transaction-scoped advisory lock per workload serialises replicas that start at
the same time; SQLite's write lock does the same for a file.

Each workload has its own version table (`alembic_version_<name>`), so workloads sharing one
PostgreSQL database keep separate histories. `schema_diff` is Alembic's autogenerate comparison of
the live database with the tables in code (empty when they match): tests run it after migrating.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Connection, Engine


def version_table(name: str) -> str:
    return "alembic_version_" + name.replace("-", "_")


def _scripts(folder: Path) -> ScriptDirectory:
    return ScriptDirectory(str(folder), version_locations=[str(folder)])


def _baseline(scripts: ScriptDirectory) -> str:
    bases = scripts.get_bases()
    if len(bases) != 1:
        raise RuntimeError(f"{scripts.dir}: expected one baseline revision, found {bases}")
    return bases[0]


def _run(connection: Connection, name: str, scripts: ScriptDirectory, metadata: MetaData, target: str,
         *, stamp_only: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(scripts.dir))

    def steps(revision: Any, context: MigrationContext) -> list:  # as alembic.command's upgrade/stamp do
        if stamp_only:
            return scripts._stamp_revs(target, revision)
        return scripts._upgrade_revs(target, revision)

    with EnvironmentContext(config, scripts, fn=steps, destination_rev=target) as environment:
        environment.configure(connection=connection, target_metadata=metadata, version_table=version_table(name),
                              render_as_batch=connection.dialect.name == "sqlite")
        with environment.begin_transaction():
            environment.run_migrations()


def current_revision(connection: Connection, name: str) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": version_table(name)})
    return context.get_current_revision()


def migrate(engine: Engine, name: str, folder: Path, metadata: MetaData) -> str:
    """Bring the workload's schema to the newest revision; returns it. See the module docstring."""
    scripts = _scripts(folder)
    head = scripts.get_current_head()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # replicas starting together migrate one at a time
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(version_table(name).encode()),))
        if current_revision(connection, name) is None:
            existing = set(inspect(connection).get_table_names()) & set(metadata.tables)
            if existing:  # made by create_all before migrations: adopt it as the baseline
                _run(connection, name, scripts, metadata, _baseline(scripts), stamp_only=True)
        _run(connection, name, scripts, metadata, head)
    return head


def schema_diff(engine: Engine, name: str, metadata: MetaData) -> list:
    """Alembic autogenerate's differences between the database and `metadata` (empty: they match)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={
            "version_table": version_table(name), "compare_type": True, "compare_server_default": False})
        return compare_metadata(context, metadata)


def migrate_sqlite_file(path: Path, name: str, folder: Path, metadata: MetaData) -> str:
    """`migrate` for a store that then runs on plain sqlite3 (queues, outboxes): the engine is
    only for the migration and is closed again."""
    from medplat.service.db import make_engine

    engine = make_engine(f"sqlite:///{path.resolve()}")
    try:
        return migrate(engine, name, folder, metadata)
    finally:
        engine.dispose()
