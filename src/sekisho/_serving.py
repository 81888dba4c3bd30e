"""Whether a gateway is serving a data directory: every gateway process holds a shared lock on
``serving.lock`` in it for as long as it runs, so a command that must not race requests (one
that destroys a tenant's data keys while a gateway would seal new records under them) can tell
and refuse. A lock, not a pid file: it is released by the kernel however the process ends.
Only processes on this host are seen; gateways sharing PostgreSQL stores from other hosts are
not."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK = "serving.lock"


def hold(data_dir: Path) -> int:
    """Take the shared lock for this process's life; the descriptor to close at shutdown."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        raise
    return fd


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
