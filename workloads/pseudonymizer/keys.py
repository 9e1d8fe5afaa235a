"""Key providers: where a domain's keys live. The pseudonymizer only asks for key bytes by
reference; three providers implement that.

- LocalKeyFile (embedded default): 256-bit keys in a JSON file, each wrapped with AES-GCM
  under a key-encryption key derived with scrypt from a passphrase (env or a generated file).
- Barbican (OpenStack Key Manager, EU PHI zone): keys are secrets read over its REST API.
- AwsKms (analytics zone): data keys generated and unwrapped by KMS; only for domains of
  de-identified data, because PHI keys must stay in the EU PHI zone.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt


class MissingKey(LookupError):
    pass


class KeyProvider(Protocol):
    name: str

    def create(self, label: str) -> str:
        """Make a new 256-bit key; returns its reference."""

    def get(self, ref: str) -> bytes:
        """The key bytes for a reference."""


class LocalKeyFile:
    name = "local"

    def __init__(self, path: Path, passphrase: str | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        if passphrase is None:
            secret_file = path.with_suffix(".passphrase")
            if not secret_file.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(32))
            passphrase = secret_file.read_text().strip()
        self._passphrase = passphrase.encode()
        self._cache: dict[str, bytes] = {}

    def _load(self) -> dict:
        if not self.path.exists():
            return {"salt": base64.b64encode(os.urandom(16)).decode(), "keys": {}}
        return json.loads(self.path.read_text())

    def _kek(self, document: dict) -> AESGCM:
        salt = base64.b64decode(document["salt"])
        return AESGCM(Scrypt(salt=salt, length=32, n=2 ** 15, r=8, p=1).derive(self._passphrase))

    def create(self, label: str) -> str:
        with self._lock:
            document = self._load()
            ref = f"local:{label}:{secrets.token_hex(8)}"
            nonce, key = os.urandom(12), AESGCM.generate_key(bit_length=256)
            wrapped = self._kek(document).encrypt(nonce, key, ref.encode())
            document["keys"][ref] = base64.b64encode(nonce + wrapped).decode()
            partial = self.path.with_name(self.path.name + ".partial")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(document, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, self.path)
            self._cache[ref] = key
            return ref

    def get(self, ref: str) -> bytes:
        if ref in self._cache:
            return self._cache[ref]
        document = self._load()
        if ref not in document["keys"]:
            raise MissingKey(f"no key {ref} in {self.path}")
        blob = base64.b64decode(document["keys"][ref])
        key = self._kek(document).decrypt(blob[:12], blob[12:], ref.encode())
        self._cache[ref] = key
        return key


class Barbican:
    """OpenStack Barbican secrets (REST API v1), authenticated with a Keystone token."""

    name = "barbican"

    def __init__(self, endpoint: str, token: str, verify: object = True) -> None:
        import httpx

        self._client = httpx.Client(base_url=endpoint.rstrip("/"), headers={"X-Auth-Token": token}, verify=verify,
                                    timeout=30)
        self._cache: dict[str, bytes] = {}

    def create(self, label: str) -> str:
        response = self._client.post("/v1/secrets", json={
            "name": f"medplat-pseudonymizer-{label}", "algorithm": "aes", "bit_length": 256, "mode": "gcm",
            "secret_type": "symmetric", "payload": base64.b64encode(os.urandom(32)).decode(),
            "payload_content_type": "application/octet-stream", "payload_content_encoding": "base64"})
        response.raise_for_status()
        return response.json()["secret_ref"]

    def get(self, ref: str) -> bytes:
        if ref not in self._cache:
            response = self._client.get(f"{ref}/payload", headers={"Accept": "application/octet-stream"})
            response.raise_for_status()
            self._cache[ref] = response.content
        return self._cache[ref]


class AwsKms:
    """Data keys from AWS KMS (boto3, installed with the `aws` extra); de-identified domains only."""

    name = "aws-kms"

    def __init__(self, key_id: str, region: str) -> None:
        import boto3  # optional: only the analytics zone needs it

        self._kms, self.key_id = boto3.client("kms", region_name=region), key_id
        self._cache: dict[str, bytes] = {}

    def create(self, label: str) -> str:
        data_key = self._kms.generate_data_key(KeyId=self.key_id, KeySpec="AES_256",
                                               EncryptionContext={"medplat-domain": label})
        ref = "aws-kms:" + label + ":" + base64.b64encode(data_key["CiphertextBlob"]).decode()
        self._cache[ref] = data_key["Plaintext"]
        return ref

    def get(self, ref: str) -> bytes:
        if ref not in self._cache:
            _, label, blob = ref.split(":", 2)
            self._cache[ref] = self._kms.decrypt(CiphertextBlob=base64.b64decode(blob),
                                                 EncryptionContext={"medplat-domain": label})["Plaintext"]
        return self._cache[ref]


# Data classes whose keys may live with each provider. PHI-linkable pseudonyms are personal
# data under GDPR (recital 26): their keys stay in the EU PHI zone.
ALLOWED_CLASSES = {"local": {"pseudonymized", "deidentified"}, "barbican": {"pseudonymized", "deidentified"},
                   "aws-kms": {"deidentified"}}
