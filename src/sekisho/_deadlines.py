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
