"""How many files (file descriptors) the gateway may open: raised to the most the system allows
at start, said in the log, and watched while serving.

Every client connection takes a descriptor, every upstream connection another (a stream holds
both for its length), the ledger and the stores some more. Past the limit the event loop cannot
accept a connection, and tells nobody: uvloop (through libuv) accepts it and closes it at once,
so the client sees a reset; asyncio's own loop logs one line and pauses accepting.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger("sekisho.serve")

# Below this many open files the gateway warns at start: every client connection takes one,
# every upstream connection another (a stream holds both for its length), and the stores and
# the ledger some more.
FEW_FILES = 4096
# Where the kernel's ceiling for a process's open files is (Linux).
_NR_OPEN = "/proc/sys/fs/nr_open"


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raise this process's soft limit on open files (file descriptors) to its hard limit;
    return the limits now in force, (soft, hard), or None where there are none (Windows).

    The soft limit is 1024 by default (systemd, most shells) and the hard limit far above it:
    past the soft limit, the event loop cannot accept a connection, and the client is reset
    without an answer and without a line in the log. Workers inherit the raised limit."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:  # the kernel still has a ceiling
        try:
            with open(_NR_OPEN, encoding="ascii") as f:
                target = int(f.read().strip())
        except (OSError, ValueError):
            target = 1024 * 1024
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # e.g. macOS: past OPEN_MAX; keep what there is
            pass
    return soft, hard


def log_open_files_limit(limits: tuple[int, int] | None) -> None:
    """Say at start how many files the gateway may open; warn when that is few."""
    if limits is None:
        return
    soft, hard = limits
    extra = {"open_files_limit": soft, "hard_limit": hard}
    if soft < FEW_FILES:
        log.warning(
            "the gateway may open only %d files (file descriptors): each client connection "
            "takes one and each upstream connection another, and past the limit new "
            "connections are reset without an answer. Raise the hard limit "
            "(systemd: LimitNOFILE=65536; docker: --ulimit nofile=65536)",
            soft,
            extra=extra,
        )
    else:
        log.info("open files limit", extra=extra)


class DescriptorWatch:
    """Warns in the log when the process's open files near their limit. An event loop that
    cannot accept a connection for lack of a descriptor tells nobody (uvloop, through libuv,
    accepts it and closes it at once: the client sees a reset; asyncio's loop logs one line
    and pauses accepting), so the count is read every few seconds from /proc/self/fd instead:
    a warning at 90 % of the limit, at most once a minute."""

    def __init__(
        self,
        limit: int,
        count: Callable[[], int] | None = None,
        *,
        every_warning: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self._count = count or _open_descriptors
        self._every_warning = every_warning
        self._clock = clock
        self._warned_at: float | None = None
        self.used: int | None = None  # as last counted (sekisho_open_files)

    def check(self) -> bool:
        """Count now; log a warning if near the limit (and none was logged lately). True when
        near the limit."""
        try:
            used = self._count()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                return False
            used = self.limit  # listing them needs a descriptor too: none is left
        self.used = used
        if used < 0.9 * self.limit:
            return False
        now = self._clock()
        if self._warned_at is None or now - self._warned_at >= self._every_warning:
            self._warned_at = now
            log.warning(
                "%d of the %d files (file descriptors) the gateway may open are in use: at "
                "the limit new connections are reset without an answer. Raise the limit "
                "(systemd: LimitNOFILE=65536), or spread the load over more instances",
                used,
                self.limit,
                extra={"open_files": used, "open_files_limit": self.limit},
            )
        return True


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def descriptor_watch() -> DescriptorWatch | None:
    """A watch for this process, where open files can be counted (Linux), else None."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or not os.path.isdir("/proc/self/fd"):
        return None
    return DescriptorWatch(soft)
