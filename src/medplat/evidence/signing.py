"""Ed25519 keys and DSSE envelopes around in-toto Statement v1 (securesystemslib).

The envelope is the attestation format in-toto and cosign tooling verify: payload type
`application/vnd.in-toto+json`, a Statement whose subjects are the bundle's files.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://medplat.dev/attestations/evidence-bundle/v1"
KEY_ENV = "MEDPLAT_EVIDENCE_KEY"


class SigningError(Exception):
    pass


def keygen(private_path: Path) -> Path:
    """Write an Ed25519 private key (PKCS#8 PEM, mode 0600) and its public key beside it."""
    key = Ed25519PrivateKey.generate()
    public_path = private_path.with_suffix(".pub")
    if private_path.exists() or public_path.exists():
        raise SigningError(f"{private_path}: refusing to overwrite an existing key")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return public_path


def load_private(path: Path | None) -> Ed25519PrivateKey:
    if path is not None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SigningError(f"{path}: cannot read key: {exc.strerror}") from None
        source = str(path)
    elif os.environ.get(KEY_ENV):
        data, source = os.environ[KEY_ENV].encode(), f"${KEY_ENV}"
    else:
        raise SigningError(f"no signing key: pass --key FILE, set {KEY_ENV}, or run `medplat evidence keygen`")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{source}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{source}: not an Ed25519 key")
    return key


def load_public(path: Path) -> SSlibKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise SigningError(f"{path}: cannot read key: {exc.strerror}") from None
    except ValueError as exc:
        raise SigningError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path}: not an Ed25519 public key")
    return SSlibKey.from_crypto(key)


def key_id(private_key: Ed25519PrivateKey) -> str:
    """The signer's key id (securesystemslib: SHA-256 of the canonical public key), as DSSE records it."""
    return SSlibKey.from_crypto(private_key.public_key()).keyid


def statement(subjects: dict[str, str], predicate: dict[str, Any]) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in sorted(subjects.items())],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }


def sign(document: dict[str, Any], private_key: Ed25519PrivateKey) -> str:
    payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    public = SSlibKey.from_crypto(private_key.public_key())
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(CryptoSigner(private_key, public))
    return json.dumps(envelope.to_dict(), sort_keys=True) + "\n"


def verify(envelope_text: str, public_key: SSlibKey) -> dict[str, Any]:
    """Return the verified Statement, or raise SigningError."""
    try:
        envelope = Envelope.from_dict(json.loads(envelope_text))
    except (ValueError, KeyError, TypeError) as exc:
        raise SigningError(f"signature envelope is not DSSE JSON ({exc})") from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise SigningError(f"unexpected payload type {envelope.payload_type!r}")
    try:
        envelope.verify([public_key], 1)
    except Exception as exc:  # securesystemslib raises VerificationError and friends
        raise SigningError(f"signature does not verify with this public key ({type(exc).__name__})") from None
    document = json.loads(envelope.payload)
    if document.get("_type") != STATEMENT_TYPE:
        raise SigningError("payload is not an in-toto Statement v1")
    return document


def payload_of(envelope_text: str) -> dict[str, Any]:
    """The Statement without checking the signature (for diffing, never for trust)."""
    return json.loads(base64.b64decode(json.loads(envelope_text)["payload"]))
