"""The platform CA with its key in real Barbican (tests/openstack_services.py): the key is read
back with the official `openstack secret get`, site keys stay at the site (CSR flow), and the
ingest's mTLS accepts a site certificate issued from the Barbican-held CA and refuses others."""
from __future__ import annotations

import datetime
import ssl
import subprocess

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from services import Service, free_port
from test_ingest import batch

from medplat.barbican_ca import BarbicanStore, CaError, create_ca, sign, site_request
from medplat.service.localpki import Ca

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform_ca(openstack):
    deployer = openstack.deployer
    store = BarbicanStore.from_application_credential(deployer.auth_url, deployer.app_cred_id,
                                                      deployer.app_cred_secret)
    cert_pem, key_ref = create_ca(store, "Example Clinic GmbH", "DE")
    return store, cert_pem, key_ref


def test_ca_key_is_a_barbican_secret_matching_the_certificate(openstack, platform_ca, tmp_path):
    store, cert_pem, key_ref = platform_ca
    assert key_ref.startswith(f"{openstack.barbican_url}/v1/secrets/")
    target = tmp_path / "ca-key.der"
    result = subprocess.run(["openstack", "secret", "get", key_ref, "--file", str(target),
                             "--payload_content_type", "application/octet-stream"], capture_output=True, text=True,
                            timeout=120, env=openstack.deployer.cli_env(application_credential=True))
    assert result.returncode == 0, result.stderr
    key = serialization.load_der_private_key(target.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "PRIVATE KEY" not in cert_pem and "PRIVATE KEY" not in key_ref


def test_csr_must_name_the_enrolled_site(platform_ca):
    store, cert_pem, key_ref = platform_ca
    _, csr = site_request("edge-leipzig", "Example Clinic GmbH")
    with pytest.raises(CaError, match="enrolled name is 'edge-dresden'"):
        sign(store, cert_pem, key_ref, csr, "edge-dresden")


def expired_site_cert(store, ca_pem: str, key_ref: str, site_key_pem: bytes, folder) -> tuple:
    """A client certificate of the enrolled site, signed by the right CA key, that expired yesterday."""
    ca_key = serialization.load_der_private_key(store.fetch(key_ref), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca_pem.encode())
    site_key = serialization.load_pem_private_key(site_key_pem, password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-dresden")]))
            .issuer_name(ca_cert.subject).public_key(site_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30)).not_valid_after(now - datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA384()))
    (folder / "expired.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder / "expired.pem", folder / "site.key"


def test_ingest_mtls_accepts_a_site_certificate_from_the_barbican_ca_and_refuses_foreign_expired_and_server_ones(platform_ca, tmp_path):
    store, cert_pem, key_ref = platform_ca
    (tmp_path / "ca.pem").write_text(cert_pem)
    server_key, server_csr = site_request("ingest", "Example Clinic GmbH")
    (tmp_path / "server.key").write_bytes(server_key)
    (tmp_path / "server.pem").write_text(sign(store, cert_pem, key_ref, server_csr, "ingest",
                                              server_names=["localhost", "127.0.0.1"]))
    site_key, site_csr = site_request("edge-dresden", "Example Clinic GmbH")   # generated at the site
    (tmp_path / "site.key").write_bytes(site_key)
    (tmp_path / "site.pem").write_text(sign(store, cert_pem, key_ref, site_csr, "edge-dresden"))
    stranger = Ca(tmp_path, "stranger").issue("edge-dresden")
    service = Service("ingest", {"data_dir": tmp_path / "ingest", "tls_cert": tmp_path / "server.pem",
                                 "tls_key": tmp_path / "server.key", "tls_client_ca": tmp_path / "ca.pem"},
                      free_port(), tmp_path / "ingest.log").start()
    try:
        def client(cert: tuple) -> httpx.Client:
            context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            context.load_cert_chain(str(cert[0]), str(cert[1]))
            return httpx.Client(verify=context, timeout=10)

        with client((tmp_path / "site.pem", tmp_path / "site.key")) as site:
            response = site.post(f"https://127.0.0.1:{service.port}/batches", json=batch(("barbican-ca-1", 1)))
        assert response.status_code == 200 and response.json()["committed"] == ["barbican-ca-1"]
        refused = {"foreign CA": stranger[:2],
                   "expired, from this CA": expired_site_cert(store, cert_pem, key_ref, site_key, tmp_path),
                   "server certificate as client": (tmp_path / "server.pem", tmp_path / "server.key")}
        for reason, pair in refused.items():
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)):
                with client(pair) as other:
                    other.post(f"https://127.0.0.1:{service.port}/batches", json=batch((f"refused-{reason}", 1)))
                pytest.fail(f"ingest accepted a client certificate: {reason}")
    finally:
        service.stop()


class NoKeyRead:
    """A store that fails the test if the CA key is fetched."""
    def fetch(self, ref: str) -> bytes:
        raise AssertionError("the CA key was read for a CSR that must be refused")


@pytest.mark.parametrize("key, refusal", [
    (lambda: rsa.generate_private_key(65537, 1024), "RSA key has 1024 bits"),
    (lambda: ec.generate_private_key(ec.SECP192R1()), "curve secp192r1"),
])
def test_weak_csr_keys_are_refused_before_the_ca_key_is_read(platform_ca, key, refusal):
    _, cert_pem, key_ref = platform_ca
    weak = key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-dresden")])).sign(weak, hashes.SHA256())
    with pytest.raises(CaError, match=refusal):
        sign(NoKeyRead(), cert_pem, key_ref, csr.public_bytes(serialization.Encoding.PEM).decode(), "edge-dresden")


def test_issued_subject_is_the_enrolled_name_under_the_cas_organization(platform_ca):
    """A CSR claiming another organization gets a certificate naming only what the CA checked."""
    store, cert_pem, key_ref = platform_ca
    site_key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "edge-dresden"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Some Other Hospital"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admins")])).sign(site_key, hashes.SHA256())
    issued = x509.load_pem_x509_certificate(sign(store, cert_pem, key_ref, csr.public_bytes(
        serialization.Encoding.PEM).decode(), "edge-dresden").encode())
    assert issued.subject.rfc4514_string() == "O=Example Clinic GmbH,CN=edge-dresden"


def test_barbican_unreachable_is_a_ca_error_and_nothing_is_issued(platform_ca):
    store, cert_pem, key_ref = platform_ca
    down = BarbicanStore(store.session, f"http://127.0.0.1:{free_port()}")
    _, csr = site_request("edge-dresden", "Example Clinic GmbH")
    with pytest.raises(CaError, match="barbican unavailable while reading .*ConnectFailure"):
        sign(down, cert_pem, key_ref.replace(store.endpoint, down.endpoint), csr, "edge-dresden")
    with pytest.raises(CaError, match="barbican unavailable while storing"):
        create_ca(down, "Example Clinic GmbH", "DE")
