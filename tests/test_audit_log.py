"""audit-log: C2SP notes (Go test vector), RFC 6962 roots and proofs (hypothesis, against an
independent implementation), the service API, the witness, and tamper detection."""
from __future__ import annotations

import datetime
import hashlib
import uuid

import pytest
from fastapi.testclient import TestClient
from identities import bearer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymerkle import verify_consistency, verify_inclusion
from pymerkle.proof import ConsistencyProof, InclusionProof, InvalidProof
from sqlalchemy import select, update
from typer.testing import CliRunner

from medplat.cli import app as cli
from medplat.service.audit import balp_event
from medplat.service.db import make_engine
from medplat.workloads.audit_log.app import Settings, Shipper, build
from medplat.workloads.audit_log.log import AuditLog, canonical, checkpoints
from medplat.workloads.audit_log.note import Checkpoint, NoteError, Signer, Verifier
from medplat.workloads.audit_log.tree import SqlTree, entries, metadata

# golang.org/x/mod/sumdb/note's documented example key and signed note.
GO_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_NOTE = ("If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n"
           "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 Merkle Tree Hash, written from the RFC (independent of pymerkle)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((len(leaves) - 1).bit_length() - 1)  # largest power of two < n
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


# --- signed notes ------------------------------------------------------------------------
def test_go_reference_note_verifies_and_a_changed_one_does_not():
    verifier = Verifier.from_text(GO_KEY)
    assert verifier.verify(GO_NOTE) == 0
    with pytest.raises(NoteError, match="does not verify"):
        verifier.verify(GO_NOTE.replace("cryptography", "blockchain"))
    with pytest.raises(NoteError, match="no signature by"):
        Signer.generate("Other").verifier().verify(GO_NOTE)


def test_keys_round_trip_and_cosignatures_carry_their_time():
    log, witness = Signer.generate("dresden.medplat-audit"), Signer.generate("eu-witness")
    assert Signer.from_text(log.private_text()).public == log.public
    note = log.sign_note(Checkpoint("dresden.medplat/audit", 3, b"\x07" * 32).text())
    cosigned = witness.cosign(note, 1_790_000_000)
    assert Verifier.from_text(log.verifier().text()).verify(cosigned) == 0
    assert Verifier(witness.name, witness.public, 0x04).verify(cosigned) == 1_790_000_000
    forged = cosigned.replace("\n3\n", "\n4\n")
    with pytest.raises(NoteError):
        Verifier(witness.name, witness.public, 0x04).verify(forged)
    with pytest.raises(NoteError, match="key id"):
        Verifier.from_text(GO_KEY.replace("c74f20a3", "00000000"))


# --- tree and proofs (property-based) ------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('tree') / 'tree.sqlite'}")
    metadata.create_all(engine)
    return engine


def tree_of(engine, leaves: list[bytes]) -> SqlTree:
    tree = SqlTree(engine, f"prop-{uuid.uuid4().hex}")
    if leaves:
        tree.append_rows([{"entry": leaf} for leaf in leaves])
    return tree


sizes = st.integers(min_value=1, max_value=140)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=sizes, data=st.data())
def test_roots_match_rfc6962_and_inclusion_proofs_verify(engine, n, data):
    leaves = [f"event-{i}".encode() for i in range(n)]
    tree = tree_of(engine, leaves)
    size = data.draw(st.integers(1, n), label="size")
    index = data.draw(st.integers(1, size), label="index")
    root = tree.get_root(size)
    assert root == mth(leaves[:size])
    proof = tree.prove_inclusion(index, size)
    leaf = hashlib.sha256(b"\x00" + leaves[index - 1]).digest()
    verify_inclusion(leaf, root, proof, index=index, size=size)
    with pytest.raises(InvalidProof):
        verify_inclusion(hashlib.sha256(b"\x00forged").digest(), root, proof)
    with pytest.raises(InvalidProof):
        verify_inclusion(leaf, root, proof, size=size + 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=sizes, data=st.data())
def test_consistency_proofs_verify_and_fail_for_other_histories(engine, n, data):
    leaves = [f"event-{i}".encode() for i in range(n)]
    tree = tree_of(engine, leaves)
    prior = data.draw(st.integers(1, n), label="prior")
    proof = tree.prove_consistency(prior, n)
    prior_root, later_root = mth(leaves[:prior]), mth(leaves)
    verify_consistency(prior_root, later_root, proof, prior_size=prior, later_size=n)
    rewritten = mth([b"rewritten", *leaves[1:prior]])
    with pytest.raises(InvalidProof):
        verify_consistency(rewritten, later_root, proof)
    if prior < n:
        with pytest.raises(InvalidProof):
            verify_consistency(prior_root, later_root, proof, prior_size=prior + 1)


# --- the service ---------------------------------------------------------------------------
def events(count: int, patient: str = "Patient/p1", start: int = 0) -> list[dict]:
    base = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)
    return [balp_event("read", source="ingest", agent=f"clinician-{(start + i) % 3}", patient=patient,
                       entities=[f"Observation/o{start + i}"], purpose="TREAT",
                       recorded=base + datetime.timedelta(minutes=start + i)) for i in range(count)]


@pytest.fixture
def service(tmp_path):
    app, settings = build(Settings(data_dir=tmp_path / "log", origin="dresden.medplat/audit"))
    with TestClient(app, headers=bearer(tmp_path / "log", "audit-log", "audit.write", "audit.read")) as client:
        yield client, app


def test_append_search_proofs_and_signed_checkpoint(service):
    client, _app = service
    first = client.post("/entries", json={"events": events(5)}).json()
    assert first["first"] == 1 and first["size"] == 5
    client.post("/entries", json={"events": events(3, patient="Patient/p2", start=5)})
    verifier = Verifier.from_text(client.get("/verifier").text)
    note = client.get("/checkpoint").json()["note"]
    assert verifier.verify(note) == 0 and Checkpoint.parse(note).size == 8
    assert [e["index"] for e in client.get("/entries", params={"patient": "Patient/p2"}).json()["entries"]] == [6, 7, 8]
    assert len(client.get("/entries", params={"agent": "clinician-0"}).json()["entries"]) == 3
    window = client.get("/entries", params={"since": "2026-11-01T00:02:00Z", "until": "2026-11-01T00:04:00Z"})
    assert [e["index"] for e in window.json()["entries"]] == [3, 4]
    entry = client.get("/entries/2").json()
    assert entry["event"]["entity"][0]["what"]["reference"] == "Observation/o1"
    root = Checkpoint.parse(note).root
    leaf = hashlib.sha256(b"\x00" + canonical(entry["event"])).digest()
    assert leaf.hex() == entry["leafHash"]
    proof = InclusionProof.deserialize(client.get("/proofs/inclusion", params={"index": 2, "size": 8}).json())
    verify_inclusion(leaf, root, proof, index=2, size=8)
    at_five = Checkpoint.parse(first["checkpoint"]).root
    consistency = ConsistencyProof.deserialize(client.get("/proofs/consistency", params={"from": 5, "to": 8}).json())
    verify_consistency(at_five, root, consistency, prior_size=5, later_size=8)
    assert client.get("/proofs/inclusion", params={"index": 9}).status_code == 400
    missing = client.get("/entries/99")
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


def test_an_invalid_audit_event_rejects_the_batch(service):
    client, _app = service
    bad = events(2)
    bad[1]["recorded"] = "not a time"
    response = client.post("/entries", json={"events": bad})
    assert response.status_code == 422 and response.json()["issue"][0]["expression"] == ["events[1].recorded"]
    assert client.get("/checkpoint").json()["size"] == 0, "nothing of a rejected batch is appended"


# --- tamper detection ---------------------------------------------------------------------
@pytest.fixture
def exported(tmp_path):
    """A log of 40 entries in 4 batches (4 checkpoints), its export and verifier key file."""
    engine = make_engine(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    metadata.create_all(engine)
    signer = Signer.generate("dresden.medplat-audit")
    audit = AuditLog(engine, "dresden.medplat/audit", signer)
    for batch in range(4):
        audit.append(events(10, start=batch * 10))
    key = tmp_path / "log.pub"
    key.write_text(signer.verifier().text())

    def export(name: str = "export.jsonl", start: int = 1):
        path = tmp_path / name
        path.write_bytes(b"".join(AuditLog(engine, "dresden.medplat/audit", signer).export(start)))
        return path

    return engine, audit, export, key


def verify(*args: str):
    return CliRunner().invoke(cli, ["audit", "verify", *args])


def test_untouched_log_and_slice_verify(exported):
    _engine, _audit, export, key = exported
    result = verify(str(export()), "--key", str(key), "--origin", "dresden.medplat/audit")
    assert result.exit_code == 0, result.output
    assert "entries 1..40, 4 signed checkpoints reproduced" in result.stdout
    sliced = verify(str(export("slice.jsonl", start=25)), "--key", str(key))
    assert sliced.exit_code == 0 and "entries 25..40" in sliced.stdout


def _swap(engine, a: int, b: int) -> None:
    with engine.begin() as connection:
        rows = {r.idx: r.entry for r in connection.execute(select(entries.c.idx, entries.c.entry)
                                                           .where(entries.c.idx.in_([a, b])))}
        for idx, other in ((a, b), (b, a)):
            connection.execute(update(entries).where(entries.c.idx == idx).values(entry=rows[other]))


def _delete_and_shift(engine, index: int) -> None:
    with engine.begin() as connection:
        connection.execute(entries.delete().where(entries.c.idx == index))
        for idx in range(index + 1, 41):
            connection.execute(update(entries).where(entries.c.idx == idx).values(idx=idx - 1))


def _insert_at(engine, index: int) -> None:
    with engine.begin() as connection:
        for idx in range(40, index - 1, -1):
            connection.execute(update(entries).where(entries.c.idx == idx).values(idx=idx + 1))
        connection.execute(entries.insert().values(log="local", idx=index, leaf_hash=b"\0" * 32,
                                                   entry=b'{"resourceType":"AuditEvent","forged":true}'))


TAMPERING = {
    "modify": lambda engine: _modify(engine, 17),
    "delete": lambda engine: _delete_and_shift(engine, 17),
    "delete-leaving-gap": lambda engine: _delete(engine, 17),
    "reorder": lambda engine: _swap(engine, 17, 18),
    "insert": lambda engine: _insert_at(engine, 17),
}


def _delete(engine, index: int) -> None:
    with engine.begin() as connection:
        connection.execute(entries.delete().where(entries.c.idx == index))


def _modify(engine, index: int) -> None:
    with engine.begin() as connection:
        entry = connection.execute(select(entries.c.entry).where(entries.c.idx == index)).scalar_one()
        changed = entry.replace(f"Observation/o{index - 1}\"".encode(), b'Observation/o999"')
        assert changed != entry
        connection.execute(update(entries).where(entries.c.idx == index).values(entry=changed))


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_any_single_tampered_entry_is_detected(exported, how):
    engine, _audit, export, key = exported
    TAMPERING[how](engine)
    result = verify(str(export()), "--key", str(key))
    assert result.exit_code == 1, result.output
    assert "TAMPERED" in result.stderr


def test_rollback_is_detected_against_the_last_countersigned_checkpoint(exported, tmp_path):
    engine, audit, export, key = exported
    last = tmp_path / "last-cosigned.note"
    last.write_text(audit.latest_checkpoint()["note"])
    with engine.begin() as connection:  # roll the log back to 30 entries, checkpoints included
        connection.execute(entries.delete().where(entries.c.idx > 30))
        connection.execute(checkpoints.delete().where(checkpoints.c.size > 30))
    plain = verify(str(export()), "--key", str(key))
    assert plain.exit_code == 0, "a rolled-back log is self-consistent on its own"
    against = verify(str(export()), "--key", str(key), "--checkpoint", str(last))
    assert against.exit_code == 1 and "rolled back" in against.stderr


def test_witness_countersigns_consistent_growth_and_refuses_rewritten_history(tmp_path):
    edge_app, edge_settings = build(Settings(data_dir=tmp_path / "edge", origin="dresden.medplat/audit"))
    edge: AuditLog = edge_app.state.audit
    cloud_app, _ = build(Settings(data_dir=tmp_path / "cloud", origin="eu.medplat/audit",
                                  trusted_logs={"dresden.medplat/audit": edge.signer.verifier().text()}))
    with TestClient(cloud_app, headers=bearer(tmp_path / "cloud", "audit-log", "audit.witness")) as cloud:
        witness_key = cloud.get("/witness/verifier").text
        shipper = Shipper(edge, edge_settings.model_copy(update={"witness_url": "http://testserver",
                                                                   "witness_key": witness_key}))
        shipper.client = cloud
        edge.append(events(6))
        assert shipper.ship_once()
        edge.append(events(4, start=6))
        assert shipper.ship_once()
        latest = edge.latest_checkpoint()
        assert latest["size"] == 10 and Verifier.from_text(witness_key).verify(latest["cosigned"]) > 0

        # Rewrite entry 3 at the edge, leaf hash included (so the edge's own tree agrees), then
        # grow: the witness's mirror still holds the original, so the new root is refused.
        forged = b'{"resourceType":"AuditEvent","rewritten":true}'
        with edge.engine.begin() as connection:
            connection.execute(update(entries).where(entries.c.log == "local", entries.c.idx == 3)
                               .values(entry=forged, leaf_hash=hashlib.sha256(b"\x00" + forged).digest()))
        rewritten = AuditLog(edge.engine, edge.origin, edge.signer)
        rewritten.append(events(2, start=10))
        shipper.audit = rewritten
        assert not shipper.ship_once()
        assert "history changed" in shipper.last_error

        # A roll-back below what was witnessed is refused too.
        stale = edge.signer.sign_note(Checkpoint(edge.origin, 8, rewritten.tree.get_root(8)).text())
        response = cloud.post("/witness", json={"note": stale, "start": 9, "entries": []})
        assert response.status_code == 409 and "roll-back" in response.json()["issue"][0]["diagnostics"]
        untrusted = Signer.generate("mallory").sign_note(Checkpoint(edge.origin, 12, b"\1" * 32).text())
        assert cloud.post("/witness", json={"note": untrusted, "start": 11, "entries": []}).status_code == 403


# --- verification says only what it proved ------------------------------------------------

def test_a_reformatted_entry_line_fails_naming_the_exact_byte_format(exported, tmp_path):
    """Re-serializing a line (json.dumps adds spaces) keeps its meaning but not the hashed bytes:
    verification fails and says why, rather than claiming the line lacks an index and an entry."""
    import json

    _engine, _audit, export, key = exported
    lines = export().read_text().splitlines()
    lines[0] = json.dumps(json.loads(lines[0]))
    reformatted = tmp_path / "reformatted.jsonl"
    reformatted.write_text("\n".join(lines) + "\n")
    result = verify(str(reformatted), "--key", str(key))
    assert result.exit_code == 1, result.output
    assert "line 1: not an entry line as exported" in result.stderr and "exact bytes" in result.stderr


def test_a_changed_last_entry_without_its_checkpoint_is_unverified(exported):
    """The issue's case: the last entry changed and its checkpoint row deleted."""
    engine, _audit, export, key = exported
    _modify(engine, 40)
    with engine.begin() as connection:
        connection.execute(checkpoints.delete().where(checkpoints.c.size == 40))
    result = verify(str(export()), "--key", str(key))
    assert result.exit_code == 1, result.output
    assert "UNVERIFIED: entries 31..40 are not covered by a signed checkpoint" in result.stderr
    assert "audit log OK: entries 1..30" in result.stdout
    allowed = verify(str(export()), "--key", str(key), "--allow-unverified-tail")
    assert allowed.exit_code == 0 and "UNVERIFIED: entries 31..40" in allowed.stderr


def test_a_deleted_last_entry_fails_because_the_export_keeps_its_checkpoint(exported):
    engine, _audit, export, key = exported
    _delete(engine, 40)
    text = export().read_text()
    assert text.rstrip().splitlines()[-1].startswith('{"checkpoint"'), "the checkpoint at 40 is exported"
    result = verify(str(export()), "--key", str(key))
    assert result.exit_code == 1
    assert "TAMPERED: checkpoint for size 40 where the log has 39 entries" in result.stderr


def test_a_truncated_export_reports_its_tail_unverified(exported, tmp_path):
    _engine, _audit, export, key = exported
    lines = export().read_bytes().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[:-3]))  # drops entries 39, 40 and the last checkpoint
    result = verify(str(cut), "--key", str(key))
    assert result.exit_code == 1 and "UNVERIFIED: entries 31..38" in result.stderr


def test_search_results_carry_inclusion_proofs_and_their_indexed_fields(service):
    from medplat.workloads.audit_log.verify import verify_search

    client, _app = service
    client.post("/entries", json={"events": events(5)})
    client.post("/entries", json={"events": events(3, patient="Patient/p2", start=5)})
    key = Verifier.from_text(client.get("/verifier").text)
    response = client.get("/entries", params={"patient": "Patient/p2"}).json()
    assert [e["index"] for e in response["entries"]] == [6, 7, 8] and response["size"] == 8
    assert response["entries"][0]["indexed"]["patient"] == "Patient/p2"
    assert verify_search(response, key, patient="Patient/p2") == []
    forged = {**response, "entries": [dict(response["entries"][0])]}
    forged["entries"][0]["event"] = {**forged["entries"][0]["event"], "outcome": "8"}
    assert "entry 6: not included in checkpoint 8" in verify_search(forged, key, patient="Patient/p2")[0]
    # A row returned for the wrong patient (e.g. a tampered search column) is caught from the entry itself.
    other = client.get("/entries", params={"patient": "Patient/p1"}).json()
    assert verify_search(other, key, patient="Patient/p2") == [
        f"entry {i}: its logged content does not match the query" for i in range(1, 6)]
