"""The audit client every workload uses: batches to the real audit-log service; an outage
spools the records on disk and they are delivered, in order, once the log is back."""
from __future__ import annotations

import httpx
from fastapi.testclient import TestClient

from medplat.service.audit import AuditClient, balp_event
from medplat.workloads.ingest.app import Settings, build
from identities import INGRESS, bearer, forwarded_cert
from medplat.service.auth import mint_local_token
from medplat.service.localpki import Ca
from services import Service, free_port

BATCH = {"messages": [{"id": f"m{i}", "device": "pump-1", "seq": i, "dataClass": "phi",
                       "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "SpO2"}}}
                      for i in range(3)]}


def audit_log(tmp_path) -> Service:
    return Service("audit-log", {"data_dir": tmp_path / "audit"}, free_port(), tmp_path / "audit.log")


def writer_token(tmp_path):
    """A token file with scope audit.write from the audit log's (local) issuer."""
    path = tmp_path / "audit-token"
    path.write_text(mint_local_token(tmp_path / "audit", "audit-log", ["audit.write"], "ingest"))
    return path


def test_ingest_audits_each_stored_batch_and_survives_an_audit_log_outage(tmp_path):
    log = audit_log(tmp_path)  # not started: the audit log is down
    app, _ = build(Settings(data_dir=tmp_path / "ingest", audit_url=f"http://127.0.0.1:{log.port}",
                            audit_token_file=writer_token(tmp_path), trusted_proxies=INGRESS))
    client: AuditClient = app.state.audit
    site = forwarded_cert(Ca(tmp_path, "platform"), "edge-dresden")
    try:
        with TestClient(app, headers=site) as ingest:
            assert ingest.post("/batches", json=BATCH).status_code == 200
            assert client.flush() is False
            assert client.spool.read_bytes().count(b"\n") == 1, "the record waits on disk"
            log.start()
            assert ingest.post("/batches", json=BATCH).status_code == 200  # all duplicates this time
            assert client.flush() is True
            assert not client.spool.read_bytes()
        auditor = bearer(tmp_path / "audit", "audit-log", "audit.read")
        events = httpx.get(f"http://127.0.0.1:{log.port}/entries", params={"agent": "site/dresden"},
                           headers=auditor).json()["entries"]
        descriptions = [e["event"]["outcomeDesc"] for e in events]
        assert descriptions == ["stored 3 of 3 messages (0 duplicates)", "stored 0 of 3 messages (3 duplicates)"]
        assert [e["what"]["reference"] for e in events[0]["event"]["entity"]] == ["Observation/m0", "Observation/m1",
                                                                                  "Observation/m2"]
    finally:
        client.close()
        log.stop()


def test_balp_events_name_patient_purpose_and_refuse_unknown_interactions():
    event = balp_event("read", source="consent", agent="dr-who", patient="Patient/p1", purpose="HRESCH")
    assert event["action"] == "R" and event["subtype"][0]["code"] == "read"
    assert event["entity"][0]["what"]["reference"] == "Patient/p1"
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "HRESCH"
    try:
        balp_event("teleport", source="x", agent="y")
    except ValueError as exc:
        assert "unknown interaction" in str(exc)
    else:
        raise AssertionError("unknown interaction accepted")
