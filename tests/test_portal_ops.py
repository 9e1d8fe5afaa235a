"""portal site operations from the services' own APIs: the real audit-log service (an edge log whose
checkpoints the EU zone's real audit-log witnesses), the real fleet service serving a TUF repository made
by `medplat fleet init`, and the certificate a TLS endpoint presents; each served over HTTP by uvicorn."""
from __future__ import annotations

import datetime
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from tuf.api.metadata import Metadata
from typer.testing import CliRunner

from identities import bearer
from medplat.cli import app as cli
from medplat.service.audit import balp_event
from medplat.workloads.audit_log.app import Settings as AuditSettings, Shipper, build as build_audit
from medplat.workloads.fleet.app import Settings as FleetSettings, build as build_fleet
from medplat.workloads.portal.app import Settings, build
from portal_helpers import Served, sign_in
from services import free_port

pytestmark = pytest.mark.slow


def self_signed(folder, not_after: datetime.datetime):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site-a.medplat.internal")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_after - datetime.timedelta(days=30))
            .not_valid_after(not_after).sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return {"ssl_certfile": str(folder / "cert.pem"), "ssl_keyfile": str(folder / "key.pem")}


def event(n: int) -> dict:
    return balp_event("read", source="test", agent=f"Practitioner/{n}", patient="Patient/1", purpose="TREAT")


def test_ops_shows_tuf_expiry_certificate_expiry_and_witnessed_checkpoints(tmp_path):
    edge_app, edge_settings = build_audit(AuditSettings(data_dir=tmp_path / "edge", origin="site-a.medplat/audit"))
    edge = edge_app.state.audit
    cloud_app, _ = build_audit(AuditSettings(data_dir=tmp_path / "cloud", origin="eu.medplat/audit",
                                             trusted_logs={"site-a.medplat/audit": edge.signer.verifier().text()}))
    runner = CliRunner()
    repository = tmp_path / "tuf"
    init = runner.invoke(cli, ["fleet", "init", str(repository), "--keys", str(tmp_path / "keys")])
    assert init.exit_code == 0, init.output
    fleet_app, _ = build_fleet(FleetSettings(data_dir=tmp_path / "fleet", tuf_repository=repository))
    not_after = datetime.datetime(2027, 3, 1, 12, tzinfo=datetime.timezone.utc)
    servers = [Served(edge_app), Served(fleet_app), Served(edge_app, **self_signed(tmp_path, not_after))]
    log_server, fleet_server, tls_server = servers
    try:
        with TestClient(cloud_app, headers=bearer(tmp_path / "cloud", "audit-log", "audit.witness")) as cloud:
            witness_key = cloud.get("/witness/verifier").text.strip()
            shipper = Shipper(edge, edge_settings.model_copy(update={"witness_url": "http://testserver",
                                                                       "witness_key": witness_key}))
            shipper.client = cloud
            edge.append([event(n) for n in range(3)])
            app, settings = build(Settings(
                data_dir=tmp_path / "portal", base_url="http://testserver", feed_period_s=3600, sites={"site-a": {
                    "audit_log": f"http://127.0.0.1:{log_server.port}", "witness": witness_key.split("+")[0],
                    "fleet": f"http://127.0.0.1:{fleet_server.port}", "endpoint": f"https://127.0.0.1:{tls_server.port}",
                    "workloads": f"audit-log=http://127.0.0.1:{log_server.port},fleet=http://127.0.0.1:{fleet_server.port},"
                                 f"sdc-bridge=http://127.0.0.1:{free_port()}"}}))
            operator = TestClient(app)
            sign_in(operator, "site-operator", settings.data_dir)
            app.state.feeds.refresh()
            assert app.state.feeds.status["site site-a"]["ok"] is True, app.state.feeds.status
            page = operator.get("/ops").text
            assert "Site certificate expires: 2027-03-01" in page
            health = dict(re.findall(r"<tr><td>([a-z-]+)</td><td>(ready|not ready[^<]*|unreachable[^<]*)</td></tr>", page))
            assert health == {"audit-log": "ready", "fleet": "ready", "sdc-bridge": "unreachable (ConnectError)"}
            for role in ("root", "targets", "snapshot", "timestamp"):
                name = "timestamp.json" if role == "timestamp" else f"1.{role}.json"
                expires = Metadata.from_file(str(repository / "metadata" / name)).signed.expires.isoformat()
                assert f"<td>{role}</td><td>{expires}</td>" in page
            witness = witness_key.split("+")[0]

            def checkpoints():
                app.state.feeds.refresh()
                page = operator.get("/ops").text
                return [(int(size), signers.split(", "), witnessed == "true") for size, signers, witnessed in re.findall(
                    r"<tr><td>(\d+)</td><td class=\"urn\">[^<]*</td><td>([^<]*)</td><td data-witnessed=\"(\w+)\"",
                    page)]
            assert checkpoints() == [(3, ["site-a.medplat-audit"], False)]
            assert shipper.ship_once()  # the EU witness replays the entries and cosigns size 3
            assert checkpoints() == [(3, ["site-a.medplat-audit", witness], True)]
            edge.append([event(n) for n in range(3, 5)])
            assert checkpoints() == [(5, ["site-a.medplat-audit"], False), (3, ["site-a.medplat-audit", witness], True)]
            assert shipper.ship_once()
            assert [(size, witnessed) for size, _, witnessed in checkpoints()] == [(5, True), (3, True)]
            app.state.audit.close()
    finally:
        for server in servers:
            server.stop()
        fleet_app.state.audit.close()
