"""Envelope encryption of records: one data key per tenant, wrapped by the region's KEK.

From the tenant's 256-bit data key, HKDF-SHA256 derives three keys with distinct purposes:

- ``seal``: AES-256-GCM for prompt, output and pseudonym map. Each ciphertext's associated
  data binds it to (region, tenant, record id, request id, field), so a ciphertext moved to
  another record, field, tenant or region, or a record given another request's id (records
  are looked up by request id), fails authentication instead of decrypting. Records sealed
  before the request id was bound (associated data v1: region, tenant, record id, field) are
  still opened under that binding, and sealed again under the new one by ``keys rotate``
  (``RegionStore.reseal_v1_records``).
- ``index``: HMAC-SHA256 of normalised identifiers, for data-subject requests.
- ``hash``: HMAC-SHA256 of prompts and outputs for the ledger, so nobody without the tenant's
  key can confirm a guessed prompt.

Destroying the wrapped data key destroys all three (crypto-shredding).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sekisho._ids import random_bytes
from sekisho.store.errors import RecordUnreadable

NONCE_BYTES = 12
KEYED_HASH_PREFIX = "hmac-sha256:"  # the ledger's format (sekisho.ledger.records.keyed_hash)


def new_data_key() -> bytes:
    return os.urandom(32)  # keys straight from the OS, never from a shared buffer


def wrap_context(region: str, tenant: str, generation: int) -> bytes:
    """Associated data of a wrapped data key: it only unwraps as this tenant's, in this region."""
    return _join(b"sekisho-store/data-key/v1", region, tenant, str(generation))


def record_aad(region: str, tenant: str, *rest: str) -> bytes:
    """Associated data of a record field: (region, tenant, record id, request id, field)."""
    return _join(RECORD_AAD_V2, region, tenant, *rest)


def record_aad_v1(region: str, tenant: str, *rest: str) -> bytes:
    """Associated data of a record field sealed before the request id was bound:
    (region, tenant, record id, field). Only opened, never sealed any more."""
    return _join(RECORD_AAD_V1, region, tenant, *rest)


RECORD_AAD_V1 = b"sekisho-store/record/v1"
RECORD_AAD_V2 = b"sekisho-store/record/v2"


def _join(label: bytes, *parts: str) -> bytes:
    # Length-prefixed, so no choice of names can make two different tuples give the same bytes.
    out = bytearray(label)
    for p in parts:
        b = p.encode()
        out += len(b).to_bytes(4, "big") + b
    return bytes(out)


def _parts(*parts: str) -> bytes:
    out = bytearray()
    for p in parts:
        b = p.encode()
        out += len(b).to_bytes(4, "big") + b
    return bytes(out)


def _derive(data_key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(data_key)


@dataclass(frozen=True, slots=True)
class TenantKeys:
    """The keys derived from one generation of a tenant's data key, in one region."""

    region: str
    tenant: str
    generation: int
    seal_key: bytes
    index_key: bytes
    hash_key: bytes
    _aead: AESGCM = field(init=False, repr=False, compare=False)
    _aad_prefix: bytes = field(init=False, repr=False, compare=False)
    _aad_prefix_v1: bytes = field(init=False, repr=False, compare=False)
    # HMAC states with the key already absorbed, copied per use. ``hmac.digest`` would redo the
    # key schedule each time and release the GIL around even a 1 KB hash, handing the event
    # loop to the ledger's and stores' writer threads mid-request.
    _hash_mac: hmac.HMAC = field(init=False, repr=False, compare=False)
    _index_mac: hmac.HMAC = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_aead", AESGCM(self.seal_key))
        object.__setattr__(self, "_aad_prefix", record_aad(self.region, self.tenant))
        object.__setattr__(self, "_aad_prefix_v1", record_aad_v1(self.region, self.tenant))
        object.__setattr__(self, "_hash_mac", hmac.new(self.hash_key, digestmod="sha256"))
        object.__setattr__(self, "_index_mac", hmac.new(self.index_key, digestmod="sha256"))

    def _aad(self, record_id: str, request_id: str, field: str) -> bytes:
        # record_aad(region, tenant, record_id, request_id, field), the constant part once
        return self._aad_prefix + _parts(record_id, request_id, field)

    def _aad_v1(self, record_id: str, field: str) -> bytes:
        return self._aad_prefix_v1 + _parts(record_id, field)

    @classmethod
    def derive(cls, region: str, tenant: str, generation: int, data_key: bytes) -> TenantKeys:
        return cls(
            region,
            tenant,
            generation,
            _derive(data_key, b"sekisho-store/seal/v1"),
            _derive(data_key, b"sekisho-store/index/v1"),
            _derive(data_key, b"sekisho-store/hash/v1"),
        )

    def seal(self, record_id: str, field: str, plaintext: bytes, *, request_id: str) -> bytes:
        nonce = random_bytes(NONCE_BYTES)
        aad = self._aad(record_id, request_id, field)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, record_id: str, field: str, sealed: bytes, *, request_id: str) -> bytes:
        """The plaintext of a record field, which must have been sealed for this record and
        request (or, sealed before request ids were bound, for this record)."""
        try:
            if len(sealed) < NONCE_BYTES + 16:
                raise InvalidTag()
            nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
            try:
                return self._aead.decrypt(nonce, body, self._aad(record_id, request_id, field))
            except InvalidTag:
                return self._aead.decrypt(nonce, body, self._aad_v1(record_id, field))
        except InvalidTag:
            raise self._unreadable(record_id, field) from None

    def reseal_v1(
        self, record_id: str, field: str, sealed: bytes, *, request_id: str
    ) -> bytes | None:
        """A field sealed before request ids were bound (record/v1) sealed again, bound to
        ``request_id`` (record/v2); None when it is bound already. Raises ``RecordUnreadable``
        when it opens under neither."""
        if len(sealed) >= NONCE_BYTES + 16:
            nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
            try:
                self._aead.decrypt(nonce, body, self._aad(record_id, request_id, field))
                return None
            except InvalidTag:
                pass
            try:
                plaintext = self._aead.decrypt(nonce, body, self._aad_v1(record_id, field))
            except InvalidTag:
                pass
            else:
                return self.seal(record_id, field, plaintext, request_id=request_id)
        raise self._unreadable(record_id, field)

    def _unreadable(self, record_id: str, field: str) -> RecordUnreadable:
        return RecordUnreadable(
            f"Record {record_id} ({field}) of tenant {self.tenant!r} in region "
            f"{self.region!r} failed authentication: the ciphertext was altered, moved from "
            "another record or request, or sealed under another key. Nothing of it is "
            "returned."
        )

    def keyed_hash(self, data: bytes) -> str:
        mac = self._hash_mac.copy()
        mac.update(data)
        return KEYED_HASH_PREFIX + mac.hexdigest()

    def index_hash(self, id_type: str, normalised: str) -> str:
        msg = id_type.encode() + b"\0" + normalised.encode()
        mac = self._index_mac.copy()
        mac.update(msg)
        return mac.hexdigest()
