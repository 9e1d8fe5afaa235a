"""Files at rest (issue 13, README "Security model": data folders 0700; SQLite databases, keys and
spools 0600), checked on real `medplat serve` processes started with a permissive umask (022), as an
operator's shell has it. Found by an outside attacker run: the edge outbox (queued PHI vitals) and the
local issuer's key folder were world-readable."""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import httpx
import pytest

from services import Service, free_port

pytestmark = pytest.mark.slow


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def wait_healthy(port: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(port)


@pytest.mark.parametrize("name", ["edge-forwarder", "sdc-bridge", "consent"])
def test_service_data_folder_holds_nothing_group_or_world_readable(tmp_path, name):
    data = tmp_path / "data"
    old = os.umask(0o022)
    try:
        service = Service(name, {"data_dir": data, "broker_url": "mqtt://nobody:none@127.0.0.1:1"},
                          free_port(), tmp_path / "log").start()
    finally:
        os.umask(old)
    try:
        wait_healthy(service.port)
        found = modes(data)
        assert any(p.endswith(".sqlite") for p in found), found
        loose = {p: oct(m) for p, m in found.items() if m & 0o077}
        assert loose == {}, f"group/world access at rest: {loose}"
    finally:
        service.stop()
