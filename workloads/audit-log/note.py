"""C2SP signed notes, checkpoints and cosignatures with Ed25519.

Written here because no maintained Python package implements the formats (the reference
is Go's golang.org/x/mod/sumdb/note); the cryptography is `cryptography`'s Ed25519.
- signed-note: text ending in "\\n", a blank line, then lines "— <name> <base64(keyid || sig)>".
  keyid = SHA-256(name || "\\n" || 0x01 || public key)[:4].
- tlog-checkpoint: "<origin>\\n<size>\\n<base64 root>\\n".
- tlog-cosignature/v1: the witness signs "cosignature/v1\\ntime <t>\\n" + checkpoint body;
  the line holds keyid (type 0x04) || 8-byte big-endian t || signature.
"""
from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519, COSIGNATURE_V1 = 0x01, 0x04
DASH = "\u2014 "


class NoteError(ValueError):
    pass


def _key_id(name: str, kind: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public).digest()[:4]


def _check_name(name: str) -> str:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise NoteError(f"key name {name!r} must be non-empty without spaces or '+'")
    return name


@dataclass(frozen=True)
class Signer:
    name: str
    key: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(_check_name(name), Ed25519PrivateKey.generate())

    @property
    def public(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def verifier(self, kind: int = ED25519) -> Verifier:
        return Verifier(self.name, self.public, kind)

    def sign_note(self, text: str) -> str:
        """A signed note for `text` (which must end in a newline)."""
        _check_text(text)
        signature = self.key.sign(text.encode())
        line = base64.b64encode(_key_id(self.name, ED25519, self.public) + signature).decode()
        return f"{text}\n{DASH}{self.name} {line}\n"

    def cosign(self, note: str, timestamp: int) -> str:
        """Add this witness's tlog-cosignature/v1 line to a signed checkpoint note."""
        text, lines = split(note)
        message = f"cosignature/v1\ntime {timestamp}\n{text}".encode()
        signature = self.key.sign(message)
        blob = _key_id(self.name, COSIGNATURE_V1, self.public) + struct.pack(">Q", timestamp) + signature
        return f"{text}\n" + "".join(f"{line}\n" for line in [*lines, f"{DASH}{self.name} {base64.b64encode(blob).decode()}"])

    def private_text(self) -> str:
        seed = self.key.private_bytes_raw()
        key_id = _key_id(self.name, ED25519, self.public).hex()
        return f"PRIVATE+KEY+{self.name}+{key_id}+{base64.b64encode(bytes([ED25519]) + seed).decode()}"

    @classmethod
    def from_text(cls, text: str) -> Signer:
        parts = text.strip().split("+", 4)  # base64 may itself contain '+'
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("not a signer key: expected PRIVATE+KEY+<name>+<id>+<key>")
        raw = base64.b64decode(parts[4])
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("signer key is not an Ed25519 key")
        return cls(_check_name(parts[2]), Ed25519PrivateKey.from_private_bytes(raw[1:]))


@dataclass(frozen=True)
class Verifier:
    name: str
    public: bytes
    kind: int = ED25519  # ED25519 for log keys, COSIGNATURE_V1 for witness keys

    @property
    def key_id(self) -> bytes:
        return _key_id(self.name, self.kind, self.public)

    def text(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(bytes([self.kind]) + self.public).decode()}"

    @classmethod
    def from_text(cls, text: str) -> Verifier:
        parts = text.strip().split("+", 2)  # base64 may itself contain '+'
        if len(parts) != 3:
            raise NoteError("not a verifier key: expected <name>+<id>+<key>")
        raw = base64.b64decode(parts[2])
        if len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE_V1):
            raise NoteError("verifier key is not an Ed25519 or cosignature/v1 key")
        verifier = cls(_check_name(parts[0]), raw[1:], raw[0])
        if verifier.key_id.hex() != parts[1]:
            raise NoteError("verifier key id does not match the key")
        return verifier

    def verify(self, note: str) -> int | None:
        """True-ish if a line of `note` is this key's valid signature; cosignatures return their time."""
        text, lines = split(note)
        key = Ed25519PublicKey.from_public_bytes(self.public)
        for line in lines:
            name, _, blob = line[len(DASH):].partition(" ")
            if name != self.name:
                continue
            raw = base64.b64decode(blob)
            if raw[:4] != self.key_id:
                continue
            try:
                if self.kind == ED25519:
                    key.verify(raw[4:], text.encode())
                    return 0
                (timestamp,) = struct.unpack(">Q", raw[4:12])
                key.verify(raw[12:], f"cosignature/v1\ntime {timestamp}\n{text}".encode())
                return timestamp
            except (InvalidSignature, struct.error, ValueError):
                raise NoteError(f"signature by {self.name} does not verify") from None
        raise NoteError(f"note carries no signature by {self.name}")


def _check_text(text: str) -> None:
    if not text.endswith("\n") or "\n\n" in text:
        raise NoteError("note text must end in a newline and contain no blank line")


def split(note: str) -> tuple[str, list[str]]:
    text, sep, signatures = note.rpartition("\n\n")
    if not sep:
        raise NoteError("not a signed note: no blank line before the signatures")
    lines = [line for line in signatures.split("\n") if line]
    if not lines or not all(line.startswith(DASH) for line in lines):
        raise NoteError("not a signed note: malformed signature lines")
    return text + "\n", lines


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, note: str) -> Checkpoint:
        text, _ = split(note) if "\n\n" in note else (note, [])
        lines = text.split("\n")
        if len(lines) < 4 or not lines[1].isdigit():
            raise NoteError("not a checkpoint: expected origin, size and root hash lines")
        root = base64.b64decode(lines[2])
        if len(root) != 32:
            raise NoteError("checkpoint root hash must be 32 bytes")
        return cls(lines[0], int(lines[1]), root)
