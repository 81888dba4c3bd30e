"""What can go wrong in a store, as errors of sekisho's one hierarchy (stable codes)."""

from __future__ import annotations

from typing import Any

from sekisho.errors import ServiceUnavailable


class StoreError(ServiceUnavailable):
    """A store cannot keep its promise right now (cannot write, cannot be opened)."""

    code = "store_unavailable"


class StoreMisconfigured(StoreError):
    """A store belongs to another region, two regions share a store, or the schema is behind (or
    at a revision a newer sekisho made)."""

    code = "store_misconfigured"


class RecordUnreadable(StoreError):
    """A stored ciphertext failed authentication: it was altered, swapped, or its key is gone.

    Permanent, so not a 503: HTTP 500 with ``x-should-retry: false``, which the OpenAI SDKs
    honour (they retry 408, 409, 429 and 5xx otherwise, and each retry would be another ledger
    entry for the same failure)."""

    status = 500
    type = "server_error"
    code = "store_record_unreadable"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers.setdefault("x-should-retry", "false")


class KeyProviderError(StoreError):
    """The region's key-encryption key cannot be used (missing, unsafe file, Vault refused)."""

    code = "store_key_unavailable"


class RotationIncomplete(KeyProviderError):
    """``keys rotate`` stopped part way: a new KEK version may be current while some data keys
    are still wrapped under older versions (which still unwrap them)."""

    code = "store_rotation_incomplete"

    def __init__(self, message: str, *, version: int | None, rewrapped: int, left: int) -> None:
        super().__init__(message)
        self.version = version  # None: the KEK itself could not be rotated
        self.rewrapped = rewrapped
        self.left = left


class KeyFileMissing(KeyProviderError):
    """The region's local key file is not there (made only where nothing it wrapped exists)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class TenantKeyMissing(StoreError):
    """A tenant's data key is not in the keyring although the region used it: never re-made."""

    code = "store_key_missing"


class ErasureIncomplete(StoreError):
    """A deletion or key destruction committed, but SQLite could not copy its write-ahead log
    back and empty it (another connection, such as a running ``sqlite3 .backup``, holds a read
    snapshot): the erased bytes remain in the database file until a checkpoint succeeds."""

    code = "store_erasure_incomplete"

    def __init__(self, message: str, *, region: str, store: str, path: str) -> None:
        super().__init__(message)
        self.region = region
        self.store = store  # records | keyring
        self.path = path
        self.done = 0  # rows deleted or key generations destroyed before the checkpoint failed


class TenantKeyDestroyed(RecordUnreadable):
    """The tenant's data key was destroyed (crypto-shredded): its records can never be read.
    HTTP 410 Gone (never retried by a client), with ``x-should-retry: false`` too."""

    status = 410
    type = "invalid_request_error"
    code = "store_key_destroyed"
