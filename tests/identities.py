"""Caller identities for in-process service tests: a site's client certificate as the trusted
ingress forwards it (TestClient's peer is "testclient"), and bearer tokens from a service's
local issuer."""
from __future__ import annotations

import urllib.parse
from pathlib import Path

from medplat.service.auth import mint_local_token
from medplat.service.localpki import Ca

INGRESS = ["testclient"]  # the only peer whose forwarded certificate header is believed


def forwarded_cert(ca: Ca, common_name: str) -> dict[str, str]:
    """The X-Forwarded-Tls-Client-Cert header an ingress sends for a client with this certificate."""
    cert_path = ca.folder / f"{common_name}.pem"
    if not cert_path.exists():
        ca.issue(common_name)
    return {"x-forwarded-tls-client-cert": urllib.parse.quote(cert_path.read_text())}


def bearer(data_dir: Path, audience: str, *scopes: str, subject: str = "tester") -> dict[str, str]:
    return {"authorization": f"Bearer {mint_local_token(data_dir, audience, list(scopes), subject)}"}
