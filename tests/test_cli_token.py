"""`medplat token` (named in the README's security model): a token from a service's local issuer
that the service itself accepts, with exactly the scopes asked for; unknown services refused."""
from __future__ import annotations

import stat

from typer.testing import CliRunner

from medplat.cli import app
from medplat.service.auth import Authenticator
from medplat.workloads.ingest.app import Settings as IngestSettings


def test_token_from_the_local_issuer_is_accepted_by_the_service(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPLAT_INGEST_DATA_DIR", str(tmp_path / "ingest"))
    result = CliRunner().invoke(app, ["token", "ingest", "--scope", "ingest.read", "--subject", "alice"])
    assert result.exit_code == 0, result.output
    principal = Authenticator("ingest", IngestSettings(data_dir=tmp_path / "ingest")).verify(result.output.strip())
    assert principal.subject == "alice" and "ingest.read" in principal.scopes
    assert stat.S_IMODE((tmp_path / "ingest" / "auth").stat().st_mode) == 0o700


def test_unknown_service_is_one_line_and_non_zero():
    result = CliRunner().invoke(app, ["token", "no-such-service", "--scope", "x", "--subject", "y"])
    assert result.exit_code != 0 and "no runnable workload" in result.output
