"""Shared fixtures: the example stacks synthesized once per test session."""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml

from medplat.stackset import StackSet

REPO = Path(__file__).resolve().parents[1]
STACKS = REPO / "stacks"


@pytest.fixture(scope="session")
def examples() -> StackSet:
    stackset = StackSet(STACKS)
    for name in stackset.names():
        stackset.synth(name)
    return stackset


@pytest.fixture(scope="session")
def inventories(examples) -> dict[str, dict]:
    return {name: result.inventory.to_json() for name, result in examples.results.items()}


def of_type(inventory: dict, type_: str) -> list[dict]:
    return [r for r in inventory["resources"] if r["type"] == type_]


def named(inventory: dict, suffix: str) -> dict:
    found = [r for r in inventory["resources"] if r["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one resource named *{suffix}, found {[r['name'] for r in found]}"
    return found[0]


@pytest.fixture
def stacks_copy(tmp_path) -> Path:
    """A writable copy of the example stacks, for tests that break one."""
    target = tmp_path / "stacks"
    shutil.copytree(STACKS, target, ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
    return target


def edit_stack(stacks_dir: Path, stack: str, edit) -> Path:
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    document = yaml.safe_load(path.read_text())
    edit(document["config"])
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


SARIF_PACKAGE = "@microsoft/jest-sarif@1.0.0-beta.0"  # carries the official SARIF 2.1.0 schema
SARIF_MEMBER = "package/lib/schemas/sarif-2.1.0-rtm.5.json"


@pytest.fixture(scope="session")
def sarif_schema() -> dict:
    """The OASIS SARIF 2.1.0 JSON schema, fetched once from the npm registry and cached."""
    import json
    import subprocess
    import tarfile

    cache = Path.home() / ".cache" / "medplat" / "schemas"
    target = cache / "sarif-2.1.0-rtm.5.json"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        packed = subprocess.run(["npm", "pack", SARIF_PACKAGE, "--silent", "--pack-destination", str(cache)],
                                check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        with tarfile.open(cache / packed) as archive:
            target.write_bytes(archive.extractfile(SARIF_MEMBER).read())
    return json.loads(target.read_text())


@pytest.fixture(scope="session")
def checkov_tool() -> Path:
    """checkov in its own venv (installed on first use, as `medplat tools install checkov` does)."""
    from medplat import checkov

    try:
        return checkov.executable()
    except checkov.CheckovMissing:
        return checkov.install()


PG_ADMIN = os.environ.get("MEDPLAT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def fresh_database(prefix: str):
    """A fresh database on the machine's real PostgreSQL server (not a mock), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url():
    with fresh_database("medplat_ingest") as url:
        yield url


@pytest.fixture(scope="session")
def openstack():
    """Real Keystone, Barbican and Swift (Debian's packages) on loopback, one per test session."""
    from openstack_services import shared_openstack, stop_shared

    yield shared_openstack()
    stop_shared()


@pytest.fixture(scope="session")
def swift_s3(openstack):
    """The S3 protocol (Swift's s3api) of the session's OpenStack, as the `medplat` project's EC2
    credentials see it: `.client()` is boto3, `.folder / "srv"` holds the object files."""
    return openstack.s3()
