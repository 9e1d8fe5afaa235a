"""`PlatformPki`: the mTLS CA's public side and who may enroll — no private key anywhere in Pulumi.

The CA key is a Barbican secret of the EU PHI project (`medplat.barbican_ca.create_ca`); the
stack config carries only the CA certificate and that secret's reference. Every site and
service generates its own key where it runs and sends a CSR; `medplat.barbican_ca.sign` checks
that the CSR names the enrolled identity and issues the certificate, which the enrollment
installs as the kubernetes.io/tls Secret named here. Pulumi state and outputs therefore hold
certificates, names and references only (policy: no private key material in state).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
from cryptography import x509

from medplat.components.base import LabelledComponent
from medplat.components.labels import Labels

CLIENT_SECRET = "mtls-client"
SERVER_SECRET = "mtls-server"


@dataclass
class PlatformPkiArgs:
    organization: str
    country: str
    ca_cert_pem: str                  # public certificate of the CA
    ca_key_ref: str                   # Barbican secret reference of the CA key (not the key)
    sites: list[str]
    services: dict[str, list[str]] = field(default_factory=dict)  # service -> DNS names
    leaf_validity_days: int = 365


@dataclass(frozen=True)
class Enrollment:
    """What a CSR must ask for and where the issued credential is installed."""
    common_name: str
    organization: str
    secret_name: str
    dns_names: tuple[str, ...] = ()
    validity_days: int = 365

    def to_output(self) -> dict:
        return {"commonName": self.common_name, "organization": self.organization, "secretName": self.secret_name,
                "dnsNames": list(self.dns_names), "validityDays": self.validity_days}


def _check_ca(pem: str) -> None:
    if "PRIVATE KEY" in pem:
        raise ValueError("platformCa.certPem holds a private key: only the CA certificate belongs in config")
    cert = x509.load_pem_x509_certificate(pem.encode())
    if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
        raise ValueError("platformCa.certPem is not a CA certificate")


class PlatformPki(LabelledComponent):
    def __init__(self, name: str, args: PlatformPkiArgs, labels: Labels, opts: pulumi.ResourceOptions | None = None):
        _check_ca(args.ca_cert_pem)
        # Only public material and references: the component is operational, not key material.
        super().__init__("medplat:components:PlatformPki", name, labels.with_class("operational"), opts)
        self.args = args
        self.ca_cert_pem: str = args.ca_cert_pem
        self.ca_key_ref: str = args.ca_key_ref
        self.site_enrollments = {
            site: Enrollment(f"edge-{site}", args.organization, CLIENT_SECRET, (), args.leaf_validity_days)
            for site in args.sites
        }
        self.service_enrollments = {
            service: Enrollment(service, args.organization, SERVER_SECRET, tuple(dns), args.leaf_validity_days)
            for service, dns in args.services.items()
        }
        self.finish({
            "caCertPem": self.ca_cert_pem,
            "caKeyRef": self.ca_key_ref,
            "sites": list(args.sites),
            "services": sorted(args.services),
        })
