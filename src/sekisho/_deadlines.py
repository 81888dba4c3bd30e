"""One timer for many waiters: the ledger's and the regional stores' durable writes each wait
for a writer thread, and each must give up at its deadline without a timer of its own (a
timer per write was a measurable share of the CPU per request)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar


class Waiter(Protocol):
    @property
    def future(self) -> asyncio.Future[Any]: ...

    @property
    def give_up_at(self) -> float:
        """``time.monotonic()`` after which the waiter is refused."""
        ...


W = TypeVar("W", bound=Waiter)


async def refuse_late(
    waiting: deque[W], deadline: float, late: Callable[[W], BaseException]
) -> None:
    """Run forever: fail each waiter in ``waiting`` whose deadline passed with ``late(w)``.

    ``waiting`` is FIFO and every waiter has the same ``deadline`` from when it was queued, so
    the oldest is always on the left: a check stops at the first waiter still in time.
    Waiters already answered are dropped as they reach the left.
    """
    tick = min(0.05, deadline / 10)
    while True:
        await asyncio.sleep(tick)
        now = time.monotonic()
        while waiting and (waiting[0].future.done() or waiting[0].give_up_at <= now):
            waiter = waiting.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(late(waiter))


class WriterHealth:
    """Whether a durable writer (the ledger's, a regional store's) keeps its promises: what
    ``/readyz`` reports, so that a load balancer stops sending requests this process can only
    refuse.

    Failing while a commit has run past the deadline (a hanging disk), or while the last
    attempt failed (a storage error, a write refused at its deadline) less than ``recent``
    seconds ago with nothing committed since. Without traffic it reads healthy again after
    ``recent`` seconds: a balancer then sends a request or two, and a disk that still fails
    turns it back within one deadline. The writer thread calls ``begin`` and ``ok``/``failed``
    around each commit; plain float assignments, so no lock. ``lost`` is for good: what a
    retry cannot cure (the ledger's file deleted under it) keeps it unready until a restart.
    """

    __slots__ = ("_busy_since", "_failed_at", "_lost", "_ok_at", "_reason", "deadline", "recent")

    def __init__(self, deadline: float, recent: float = 10.0) -> None:
        self.deadline = deadline
        self.recent = recent
        self._busy_since = 0.0
        self._failed_at = 0.0
        self._ok_at = 0.0
        self._reason = ""
        self._lost = ""

    def begin(self) -> None:
        self._busy_since = time.monotonic()

    def ok(self) -> None:
        self._busy_since = 0.0
        self._ok_at = time.monotonic()

    def failed(self, reason: str, *, commit_ended: bool = True) -> None:
        if commit_ended:
            self._busy_since = 0.0
        self._failed_at = time.monotonic()
        self._reason = reason

    def lost(self, reason: str) -> None:
        self._lost = reason

    def state(self) -> tuple[bool, str]:
        """``(healthy, why)``; ``why`` is ``"ok"`` when healthy."""
        if self._lost:
            return False, self._lost
        now = time.monotonic()
        busy = self._busy_since
        if busy and now - busy > self.deadline:
            return False, (
                f"a durable write has been running for {now - busy:.1f} s, past the "
                f"{self.deadline:g} s deadline: the storage is slow or hanging"
            )
        if self._failed_at > self._ok_at and now - self._failed_at < self.recent:
            return False, self._reason
        return True, "ok"
