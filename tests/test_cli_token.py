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


def test_roles_for_task_recipients_and_registered_claims_kept(tmp_path, monkeypatch):
    """--role puts the PractitionerRoles the clinical workflow checks against Task recipients in the
    token; extra claims never override the registered ones (iss, aud, sub, exp...)."""
    from medplat.service.auth import mint_local_token
    from medplat.workloads.clinical_workflow.app import ROLES_CLAIM, Settings, roles_of

    monkeypatch.setenv("MEDPLAT_CLINICAL_WORKFLOW_DATA_DIR", str(tmp_path / "cw"))
    result = CliRunner().invoke(app, ["token", "clinical-workflow", "--scope", "task.write", "--subject",
                                      "Practitioner/a", "--role", "PractitionerRole/medical-team"])
    assert result.exit_code == 0, result.output
    authenticator = Authenticator("clinical-workflow", Settings(data_dir=tmp_path / "cw"))
    principal = authenticator.verify(result.output.strip())
    assert roles_of(principal) == {"PractitionerRole/medical-team"}
    forged = mint_local_token(tmp_path / "cw", "clinical-workflow", ["task.write"], "Practitioner/a",
                              extra_claims={"sub": "Practitioner/boss", "aud": "elsewhere", ROLES_CLAIM: []})
    assert authenticator.verify(forged).subject == "Practitioner/a"
