"""The platform mTLS CA with its private key held in OpenStack Barbican, outside Pulumi.

Three steps, none of which puts private key material into Pulumi config, state or outputs:

- `create_ca` (operator, once): the CA key (ECDSA P-384) is generated in memory, stored in
  Barbican as a `private` secret of the EU PHI project, and the self-signed CA certificate is
  returned with the secret's reference. Only the certificate (public) and the reference go into
  stack config.
- `site_request` (at the site): the site's key is generated where it is used and never leaves
  it; only the certificate signing request (CSR) travels.
- `sign` (operator or enrollment job): fetches the CA key by reference for this one signature,
  checks the CSR's self-signature, that it asks for exactly the enrolled name and that its key
  is strong enough, and issues a client (site) or server (ingest) certificate whose subject is
  the enrolled name under the CA's organization.

Barbican stores and returns secrets; it does not sign. The CA key is therefore in the signer's
memory for the duration of a signature, authenticated by a Keystone application credential of
the EU PHI project (keystoneauth1).
"""
from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class CaError(ValueError):
    pass


@dataclass
class BarbicanStore:
    """Barbican secrets through a keystoneauth1 Session (token obtained and renewed by it)."""
    session: object
    endpoint: str

    @classmethod
    def from_application_credential(cls, auth_url: str, credential_id: str, secret: str,
                                    endpoint: str | None = None) -> "BarbicanStore":
        from keystoneauth1 import session
        from keystoneauth1.identity import v3

        keystone = session.Session(auth=v3.ApplicationCredential(
            auth_url=auth_url, application_credential_id=credential_id, application_credential_secret=secret))
        endpoint = endpoint or keystone.get_endpoint(service_type="key-manager", interface="public")
        return cls(keystone, endpoint.rstrip("/"))

    def _request(self, what: str, method: str, url: str, **kwargs):
        """keystoneauth raises on refused authentication or an unreachable Barbican even with
        raise_exc=False: a CaError naming the step instead."""
        from keystoneauth1 import exceptions

        try:
            return self.session.request(url, method, raise_exc=False, **kwargs)
        except exceptions.ClientException as exc:
            raise CaError(f"barbican unavailable while {what}: {type(exc).__name__}: {exc}") from exc

    def store(self, name: str, payload: bytes, secret_type: str, algorithm: str) -> str:
        response = self._request(f"storing {name}", "POST", f"{self.endpoint}/v1/secrets", json={
            "name": name, "secret_type": secret_type, "algorithm": algorithm,
            "payload": base64.b64encode(payload).decode(), "payload_content_type": "application/octet-stream",
            "payload_content_encoding": "base64"})
        if response.status_code != 201:
            raise CaError(f"barbican refused to store {name}: HTTP {response.status_code} {response.text[:200]}")
        return response.json()["secret_ref"]

    def fetch(self, ref: str) -> bytes:
        if not ref.startswith(f"{self.endpoint}/v1/secrets/"):
            raise CaError(f"{ref} is not a secret of {self.endpoint}")
        response = self._request(f"reading {ref}", "GET", f"{ref}/payload",
                                 headers={"Accept": "application/octet-stream"})
        if response.status_code != 200:
            raise CaError(f"barbican {ref}: HTTP {response.status_code} {response.text[:200]}")
        return response.content


def _name(common_name: str, organization: str | None = None, country: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if country:
        attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    return x509.Name(attributes)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def create_ca(store: BarbicanStore, organization: str, country: str, *, days: int = 5 * 365) -> tuple[str, str]:
    """Returns (CA certificate PEM, Barbican reference of its private key)."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name(f"{organization} medplat mTLS CA", organization, country)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    ref = store.store(f"medplat-platform-ca-{organization}", der, "private", "ec")
    return cert.public_bytes(serialization.Encoding.PEM).decode(), ref


def site_request(common_name: str, organization: str) -> tuple[bytes, str]:
    """At the site: (its private key PEM, to keep there; the CSR PEM, to send for signing)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name, organization)).sign(
        key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


# Key sizes a CA may certify (CA/Browser Forum Baseline Requirements 6.1.5: RSA of at least
# 2048 bits; ECDSA on P-256, P-384 or P-521); anything else is refused before the CA key is read.
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
MIN_RSA_BITS = 2048


def _check_key_strength(public_key) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ALLOWED_CURVES):
            raise CaError(f"the CSR's key is on curve {public_key.curve.name}: P-256, P-384 or P-521 only")
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise CaError(f"the CSR's RSA key has {public_key.key_size} bits: at least {MIN_RSA_BITS}")
    else:
        raise CaError(f"the CSR's key type {type(public_key).__name__} is not certified here (ECDSA or RSA)")


def sign(store: BarbicanStore, ca_cert_pem: str, ca_key_ref: str, csr_pem: str, expected_common_name: str, *,
         server_names: list[str] | None = None, days: int = 365) -> str:
    """Issue a certificate for a CSR: a client certificate, or a server one when server_names is given."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    if not csr.is_signature_valid:
        raise CaError("the CSR's signature does not verify: it was not made with the key it carries")
    names = [attribute.value for attribute in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [expected_common_name]:
        raise CaError(f"the CSR asks for {names}, enrolled name is {expected_common_name!r}")
    _check_key_strength(csr.public_key())
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    # The certificate asserts only what was checked: the enrolled name, under the CA's organization
    # (whatever else the CSR's subject claims is not copied).
    organizations = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject = _name(expected_common_name, str(organizations[0].value) if organizations else None)
    ca_key = serialization.load_der_private_key(store.fetch(ca_key_ref), password=None)
    if ca_key.public_key().public_numbers() != ca_cert.public_key().public_numbers():
        raise CaError(f"{ca_key_ref} is not the key of the CA certificate")
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
               .public_key(csr.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                              critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                              critical=False))
    if server_names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(n) for n in server_names]),
                                        critical=False)
    return builder.sign(ca_key, hashes.SHA384()).public_bytes(serialization.Encoding.PEM).decode()
