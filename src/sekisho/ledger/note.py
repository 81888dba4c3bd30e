"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519, byte-compatible with Go's
``golang.org/x/mod/sumdb/note`` so that existing transparency-log tools verify our checkpoints.

Key strings are Go's: verifier ``name+hex(keyid)+base64(0x01||pubkey)`` and signer
``PRIVATE+KEY+name+hex(keyid)+base64(0x01||seed)``; key ID = SHA-256(name || 0x0A || 0x01 ||
pubkey)[:4], big-endian; a signature line is ``— name base64(keyid || signature)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

ALG_ED25519 = 0x01
SIGNATURE_PREFIX = "— "  # em dash (U+2014), space
MAX_SIGNATURES = 100  # Go's limit; the spec asks for at least 16


class NoteError(ValueError):
    """A note, key string or signature that is malformed or does not verify."""


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not valid base64") from None


def check_key_name(name: str) -> None:
    if not name:
        raise NoteError("key name is empty")
    if "+" in name or any(c.isspace() for c in name):
        raise NoteError(f"key name {name!r} must not contain '+' or spaces")
    if any(ord(c) < 0x20 for c in name):
        raise NoteError(f"key name {name!r} contains a control character")


def key_id(name: str, typed_public_key: bytes) -> int:
    """The 32-bit key ID: first 4 bytes of SHA-256(name || 0x0A || type || public key)."""
    digest = hashlib.sha256(name.encode() + b"\n" + typed_public_key).digest()
    return int(struct.unpack(">I", digest[:4])[0])


@dataclass(frozen=True)
class Verifier:
    name: str
    key_id: int
    public_key: bytes  # raw 32-byte Ed25519 key

    @classmethod
    def from_key_string(cls, vkey: str) -> Verifier:
        """Parse ``name+hex(keyid)+base64(0x01||pubkey)`` and check that the key ID matches."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError("verifier key must look like NAME+KEYID+BASE64KEY")
        name, hex_id, b64 = parts
        check_key_name(name)
        if len(hex_id) != 8 or not all(c in "0123456789abcdef" for c in hex_id):
            raise NoteError("verifier key ID must be 8 lowercase hex digits")
        typed = _b64decode(b64, "verifier public key")
        if len(typed) != 33 or typed[0] != ALG_ED25519:
            raise NoteError("verifier key is not an Ed25519 key (0x01 followed by 32 bytes)")
        if key_id(name, typed) != int(hex_id, 16):
            raise NoteError(f"verifier key ID {hex_id} does not match the name and public key")
        return cls(name, int(hex_id, 16), typed[1:])

    def key_string(self) -> str:
        typed = bytes([ALG_ED25519]) + self.public_key
        return f"{self.name}+{self.key_id:08x}+{base64.b64encode(typed).decode()}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signer:
    """An Ed25519 note signer. Keep the private key string secret (see ``keys.py``)."""

    __slots__ = ("_private", "key_id", "name", "public_key")

    def __init__(self, name: str, seed: bytes) -> None:
        check_key_name(name)
        if len(seed) != 32:
            raise NoteError("an Ed25519 seed is 32 bytes")
        self.name = name
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(name, bytes([ALG_ED25519]) + self.public_key)

    @classmethod
    def generate(cls, name: str) -> Signer:
        seed = Ed25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
        return cls(name, seed)

    @classmethod
    def from_key_string(cls, skey: str) -> Signer:
        """Parse ``PRIVATE+KEY+name+hex(keyid)+base64(0x01||seed)``, checking the key ID."""
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("signer key must look like PRIVATE+KEY+NAME+KEYID+BASE64KEY")
        name, hex_id, b64 = parts[2:]
        check_key_name(name)
        typed = _b64decode(b64, "signer private key")
        if len(typed) != 33 or typed[0] != ALG_ED25519:
            raise NoteError("signer key is not an Ed25519 key (0x01 followed by a 32-byte seed)")
        signer = cls(name, typed[1:])
        if len(hex_id) != 8 or f"{signer.key_id:08x}" != hex_id:
            raise NoteError(f"signer key ID {hex_id!r} does not match the name and key")
        return signer

    def key_string(self) -> str:
        seed = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        typed = bytes([ALG_ED25519]) + seed
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{base64.b64encode(typed).decode()}"

    def verifier(self) -> Verifier:
        return Verifier(self.name, self.key_id, self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: int
    base64: str  # base64(keyid || signature), exactly as it appeared

    def line(self) -> str:
        return f"{SIGNATURE_PREFIX}{self.name} {self.base64}\n"


@dataclass
class Note:
    text: str
    signatures: list[Signature] = field(default_factory=list)  # verified by a known key
    unverified: list[Signature] = field(default_factory=list)  # from keys we do not know


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("note text must not contain control characters other than newline")


def sign(text: str, *signers: Signer) -> str:
    """The signed note: ``text``, a blank line, one signature line per signer."""
    _check_text(text)
    message = text.encode()
    lines = []
    for signer in signers:
        raw = struct.pack(">I", signer.key_id) + signer.sign(message)
        lines.append(Signature(signer.name, signer.key_id, base64.b64encode(raw).decode()).line())
    return text + "\n" + "".join(lines)


def parse(note: str | bytes) -> tuple[str, list[Signature]]:
    """Split a signed note into text and signature lines, without verifying anything."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("note is not valid UTF-8") from None
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise NoteError("note must not contain control characters other than newline")
    if not note.endswith("\n"):
        raise NoteError("note must end with a newline after its last signature")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line separating text and signatures")
    text, block = note[: split + 1], note[split + 2 :]
    signatures = []
    for line in block.split("\n")[:-1]:
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError(f"signature line {line[:40]!r} does not start with '— '")
        name, sep, b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not sep or not b64 or " " in b64:
            raise NoteError(f"signature line {line[:40]!r} is not '— NAME SIGNATURE'")
        check_key_name(name)
        raw = _b64decode(b64, f"signature of {name}")
        if len(raw) < 5:
            raise NoteError(f"signature of {name} is too short")
        signatures.append(Signature(name, int(struct.unpack(">I", raw[:4])[0]), b64))
    if not signatures:
        raise NoteError("note has no signatures")
    if len(signatures) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    return text, signatures


def open_note(note: str | bytes, verifiers: Iterable[Verifier]) -> Note:
    """Verify a signed note against known keys, as Go's ``note.Open`` does.

    Signatures by unknown keys are kept as ``unverified``; a signature by a known key that does
    not verify rejects the whole note; at least one known key must have signed.
    """
    text, signatures = parse(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    result = Note(text)
    message = text.encode()
    for sig in signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            if sig not in result.unverified:
                result.unverified.append(sig)
            continue
        raw = base64.b64decode(sig.base64)
        if base64.b64encode(raw).decode() != sig.base64:
            # The same signature spelled otherwise (unused bits set): one note, many texts.
            raise NoteError(f"signature of {sig.name} is not canonical base64")
        if not verifier.verify(message, raw[4:]):
            raise NoteError(f"invalid signature for key {sig.name}+{sig.key_id:08x}")
        if sig not in result.signatures:
            result.signatures.append(sig)
    if not result.signatures:
        names = ", ".join(f"{s.name}+{s.key_id:08x}" for s in signatures)
        raise NoteError(f"note is not signed by any known key (signed by: {names})")
    return result
