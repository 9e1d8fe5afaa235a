"""`PlatformPki`: the mTLS CA and the per-site / per-service certificates (pulumi-tls).

Private keys exist only as Pulumi secrets (encrypted in state); the CA key never leaves
the EU PHI zone's stack. Edge sites receive their client credentials as secret stack
outputs through a StackReference.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_tls as tls

from medplat.components.base import LabelledComponent
from medplat.components.labels import Labels

CLIENT_USES = ["digital_signature", "key_encipherment", "client_auth"]
SERVER_USES = ["digital_signature", "key_encipherment", "server_auth"]


@dataclass
class PlatformPkiArgs:
    organization: str
    country: str
    sites: list[str]
    services: dict[str, list[str]] = field(default_factory=dict)  # service -> DNS names
    ca_validity_hours: int = 5 * 365 * 24
    leaf_validity_hours: int = 365 * 24
    early_renewal_hours: int = 30 * 24


@dataclass
class Credential:
    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]


class PlatformPki(LabelledComponent):
    def __init__(self, name: str, args: PlatformPkiArgs, labels: Labels, opts: pulumi.ResourceOptions | None = None):
        super().__init__("medplat:components:PlatformPki", name, labels.with_class("key-material"), opts)
        self.args = args
        ca_key = self.child(tls.PrivateKey, "ca-key", algorithm="ECDSA", ecdsa_curve="P384")
        self._ca_key_pem = pulumi.Output.secret(ca_key.private_key_pem)
        self.ca = self.child(
            tls.SelfSignedCert, "ca",
            private_key_pem=self._ca_key_pem,
            is_ca_certificate=True,
            max_path_length=0,
            set_subject_key_id=True,
            subject={"common_name": f"{args.organization} medplat mTLS CA",
                     "organization": args.organization, "country": args.country},
            validity_period_hours=args.ca_validity_hours,
            allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
            data_class="operational",  # the certificate is public; its key is the secret part
        )
        self.ca_cert_pem: pulumi.Output[str] = self.ca.cert_pem
        self.site_credentials = {
            site: self._issue(f"site-{site}", f"edge-{site}", [], CLIENT_USES) for site in args.sites
        }
        self.service_credentials = {
            service: self._issue(f"svc-{service}", service, dns, SERVER_USES) for service, dns in args.services.items()
        }
        self.finish({
            "caCertPem": self.ca_cert_pem,
            "sites": list(args.sites),
            "services": sorted(args.services),
        })

    def _issue(self, name: str, common_name: str, dns_names: list[str], uses: list[str]) -> Credential:
        key = self.child(tls.PrivateKey, f"{name}-key", algorithm="ECDSA", ecdsa_curve="P256")
        key_pem = pulumi.Output.secret(key.private_key_pem)
        request = self.child(
            tls.CertRequest, f"{name}-csr",
            private_key_pem=key_pem,
            dns_names=dns_names or None,
            subject={"common_name": common_name, "organization": self.args.organization},
            data_class="operational",
        )
        cert = self.child(
            tls.LocallySignedCert, f"{name}-cert",
            cert_request_pem=request.cert_request_pem,
            ca_private_key_pem=self._ca_key_pem,
            ca_cert_pem=self.ca.cert_pem,
            validity_period_hours=self.args.leaf_validity_hours,
            early_renewal_hours=self.args.early_renewal_hours,
            allowed_uses=uses,
            data_class="operational",
        )
        return Credential(cert_pem=cert.cert_pem, key_pem=key_pem)
