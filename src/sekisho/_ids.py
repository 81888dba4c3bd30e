"""Random bytes and the identifiers sekisho mints (request ids, record ids).

Identifiers lead with the time in milliseconds, then 48 random bits
(``req_0193a4f2c1d8e41f09b3c2a7``).
They sort by creation time, so the indexes that hold them (the ledger's entries by request id,
the store's records by id and by request id) grow at their right edge: a batch of inserts
dirties one or two B-tree pages instead of one page per row at random places, and each of
those pages is a frame written to the WAL and fsynced (PostgreSQL's B-trees behave the same
way). The random half keeps ids unguessable and unique across processes.
"""

from __future__ import annotations

import os
import threading
import time


class _RandomPool:
    """Bytes from the OS CSPRNG, fetched 64 KiB at a time: ``os.urandom`` is a system call
    (tens of microseconds on some VMs) that also releases the GIL, and a request needs
    several random values. Each byte is handed out once; a forked child starts afresh."""

    def __init__(self, size: int = 65536) -> None:
        self._size = size
        self._buf = b""
        self._pos = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._pos + n > len(self._buf):
                self._buf, self._pos = os.urandom(max(self._size, n)), 0
            out = self._buf[self._pos : self._pos + n]
            self._pos += n
            return out

    def forget(self) -> None:
        """Drop what was fetched: a forked child must never reuse its parent's bytes."""
        self._buf, self._pos = b"", 0
        self._lock = threading.Lock()


_POOL = _RandomPool()
random_bytes = _POOL.take
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.forget)


def time_ordered_id(prefix: str) -> str:
    """``prefix`` + 12 hex digits of Unix milliseconds + 12 random hex digits."""
    return f"{prefix}{time.time_ns() // 1_000_000:012x}{random_bytes(6).hex()}"
