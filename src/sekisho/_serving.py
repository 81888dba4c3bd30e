"""Whether a gateway is serving a data directory: every gateway process holds a shared lock on
``serving.lock`` in it for as long as it runs, so a command that must not race requests (one
that destroys a tenant's data keys while a gateway would seal new records under them) can tell
and refuse. That command holds the lock exclusively for as long as it runs: a gateway starting
meanwhile waits until it has finished, then starts on what it left (``hold_when_free``). A
lock, not a pid file: it is released by the kernel however the process ends. Only processes on
this host are seen; gateways sharing PostgreSQL stores from other hosts are not."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

LOCK = "serving.lock"
log = logging.getLogger("sekisho.serve")


class Busy(Exception):
    """A command holds the data directory exclusively (``tenant delete``)."""


def hold(data_dir: Path) -> int:
    """Take the shared lock for this process's life; the descriptor to close at shutdown.
    Raises ``Busy`` while a command holds the lock exclusively."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Busy(str(data_dir)) from None
    except OSError:
        os.close(fd)
        raise
    return fd


async def hold_when_free(data_dir: Path, poll: float = 0.2, say_every: float = 30.0) -> int:
    """``hold``, waiting (and saying so in the log) while a command holds the data directory
    exclusively: a gateway starting during ``tenant delete`` starts once the deletion is over,
    on the stores and keyring as it left them, not on a tenant half destroyed."""
    said = 0.0
    while True:
        try:
            return hold(data_dir)
        except Busy:
            now = time.monotonic()
            if now - said >= say_every:
                said = now
                log.warning(
                    "a `sekisho tenant delete` is running on this data directory: the gateway "
                    "starts when it has finished",
                    extra={"data_dir": str(data_dir)},
                )
            await asyncio.sleep(poll)


@contextlib.contextmanager
def exclusively(data_dir: Path) -> Iterator[bool]:
    """Hold the lock exclusively while the block runs: no gateway serves ``data_dir`` and
    none starts meanwhile (each waits, ``hold_when_free``). Yields False, holding nothing,
    when a gateway is serving it already. (A data directory that is not there is not made:
    no gateway serves it, and the command says it is missing.)"""
    if not data_dir.is_dir():
        yield True
        return
    fd = os.open(data_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing drops the lock, if it was taken


def in_use(data_dir: Path) -> bool:
    """Whether any process holds the lock (a gateway is serving ``data_dir``)."""
    try:
        fd = os.open(data_dir / LOCK, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock, if it was taken
    return False
