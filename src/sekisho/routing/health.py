"""Passive health: errors, timeouts and 429s mark an endpoint down for a backoff that doubles
with each consecutive failure; one success brings it back. In-flight counts enforce each
endpoint's concurrency limit (``max_concurrency``): a request that finds every slot taken waits
for one, first come first served, for at most the endpoint's connect timeout. State is per
process (each gateway process learns on its own); with ``--workers N`` each holds its share of
the slots (``Health.cap``)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sekisho.routing.catalogue import Endpoint


class EndpointHealth:
    __slots__ = ("down_until", "failures", "in_flight", "last_error", "waiters")

    def __init__(self) -> None:
        self.failures = 0
        self.down_until = 0.0
        self.in_flight = 0
        self.last_error = ""
        # Requests waiting for a slot of a full endpoint, oldest first.
        self.waiters: deque[asyncio.Future[bool]] = deque()

    async def wait_for_slot(self, timeout: float) -> bool:
        """Take a slot of a full endpoint once one is released to this caller (callers are
        served in arrival order); False if none came within ``timeout`` seconds. ``release``
        hands the slot over without giving it back in between, so a newcomer cannot take it."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release()  # handed over as the caller gave up: pass it on
            raise
        finally:
            timer.cancel()

    def release(self) -> None:
        """Give back a slot: to the longest waiting caller, else to the pool."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self.in_flight -= 1


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Health:
    def __init__(
        self,
        *,
        failure_threshold: int = 1,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        workers: int = 1,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.workers = workers
        self._clock = clock
        self._state: dict[str, EndpointHealth] = {}

    def cap(self, ep: Endpoint) -> int | None:
        """This process's share of the endpoint's ``max_concurrency``: with ``--workers N``
        each worker holds cap // N slots (at least 1), so together they stay within the cap
        (when the cap is at least N)."""
        cap = ep.max_concurrency
        if cap is None or self.workers <= 1:
            return cap
        return max(1, cap // self.workers)

    def state(self, endpoint_id: str) -> EndpointHealth:
        st = self._state.get(endpoint_id)
        if st is None:
            st = self._state[endpoint_id] = EndpointHealth()
        return st

    def is_up(self, endpoint_id: str) -> bool:
        st = self._state.get(endpoint_id)
        return st is None or st.down_until <= self._clock()

    def success(self, endpoint_id: str) -> None:
        st = self.state(endpoint_id)
        st.failures = 0
        st.down_until = 0.0

    def failure(self, endpoint_id: str, reason: str, retry_after: float | None = None) -> None:
        st = self.state(endpoint_id)
        st.failures += 1
        st.last_error = reason
        if st.failures >= self.failure_threshold:
            n = st.failures - self.failure_threshold
            backoff = min(self.backoff_max, self.backoff_initial * (2**n))
            if retry_after is not None:
                backoff = min(self.backoff_max, max(backoff, retry_after))
            st.down_until = self._clock() + backoff

    def snapshot(self) -> dict[str, dict[str, object]]:
        now = self._clock()
        return {
            eid: {
                "up": st.down_until <= now,
                "consecutive_failures": st.failures,
                "down_for_seconds": max(0.0, round(st.down_until - now, 3)),
                "in_flight": st.in_flight,
                "waiting": sum(1 for w in st.waiters if not w.done()),
                "last_error": st.last_error,
            }
            for eid, st in self._state.items()
        }
