"""Passive health: errors, timeouts and 429s mark an endpoint down for a backoff that doubles
with each consecutive failure; one success brings it back. In-flight counts enforce each
endpoint's concurrency limit (``max_concurrency``): a request that finds every slot taken waits
for one, for at most the endpoint's connect timeout. A slot that frees while requests wait goes
to the tenant holding the fewest of the endpoint's slots (first come, first served within a
tenant, and between tenants holding as many), so one tenant's burst cannot queue ahead of every
other tenant (公平性). Health is learned per process. The slots are counted per process too,
each holding its share with ``--workers N`` (``Health.cap``), unless ``redis:`` is configured:
then every process and instance shares one count of each endpoint's slots
(``sekisho.routing.slots``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from sekisho.routing.slots import SharedSlots, poll_for_slot

if TYPE_CHECKING:
    from sekisho.routing.catalogue import Endpoint


log = logging.getLogger("sekisho.routing")

MAX_RETRY_AFTER = 3600.0  # the longest Retry-After honoured (a bad header cannot park it for days)


class EndpointHealth:
    __slots__ = (
        "arrivals",
        "down_until",
        "endpoint_id",
        "failures",
        "held",
        "in_flight",
        "last_error",
        "limited_until",
        "poller",
        "queues",
        "shared",
    )

    def __init__(self, endpoint_id: str = "", shared: SharedSlots | None = None) -> None:
        self.endpoint_id = endpoint_id
        self.failures = 0
        self.down_until = 0.0
        # A 429's Retry-After: nothing is sent to the endpoint before it, even as a last resort
        # and whatever a probe says (a rate-limited endpoint still answers GET /models).
        self.limited_until = 0.0
        self.in_flight = 0  # slots this process holds
        # Of those, each tenant's (a capped endpoint's only): who is served first when a
        # slot frees while several tenants wait.
        self.held: dict[str, int] = {}
        self.last_error = ""
        # Requests waiting for a slot of a full endpoint: a queue per tenant, oldest first,
        # each waiter with its place in the arrival order across tenants.
        self.queues: dict[str, deque[tuple[int, asyncio.Future[bool]]]] = {}
        self.arrivals = 0
        # Set: the cap is shared through Redis with every other process and instance.
        self.shared = shared
        self.poller: asyncio.Task[None] | None = None

    def occupy(self, tenant: str) -> None:
        """Take a free slot for a request of ``tenant`` (the caller saw one free)."""
        self.in_flight += 1
        held = self.held
        held[tenant] = held.get(tenant, 0) + 1

    async def take(self, cap: int, timeout: float, tenant: str) -> bool:
        """Take one of the endpoint's ``cap`` slots for a request of ``tenant``, waiting for
        one at most ``timeout`` seconds; False if none came. With shared slots a free one is
        taken in Redis."""
        if self.shared is None:
            if self.in_flight < cap:
                self.occupy(tenant)
                return True
            return await self.wait_for_slot(tenant, timeout)
        if not self._anyone_waits() and (
            self.shared.reuse(self.endpoint_id) or await self.shared.try_take(self.endpoint_id, cap)
        ):
            self.occupy(tenant)
            return True
        return await self.wait_for_slot(tenant, timeout, cap)

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now."""
        return sum(1 for queue in self.queues.values() for _, w in queue if not w.done())

    def _anyone_waits(self) -> bool:
        return any(not w.done() for queue in self.queues.values() for _, w in queue)

    def _wake_fairest(self) -> bool:
        """Give a slot to a waiting request of the tenant holding the fewest of the endpoint's
        slots here, its longest waiting one (between tenants holding as many: the one whose
        request has waited longest); False if nobody waits."""
        queues, held = self.queues, self.held
        fairest: str | None = None
        least = (0, 0)
        emptied = []
        for tenant, queue in queues.items():
            while queue and queue[0][1].done():  # gave up waiting (its timeout, its client)
                queue.popleft()
            if not queue:
                emptied.append(tenant)
                continue
            rank = (held.get(tenant, 0), queue[0][0])
            if fairest is None or rank < least:
                fairest, least = tenant, rank
        for tenant in emptied:
            del queues[tenant]
        if fairest is None:
            return False
        queue = queues[fairest]
        queue.popleft()[1].set_result(True)
        if not queue:
            del queues[fairest]
        held[fairest] = held.get(fairest, 0) + 1
        return True

    def _hand_over(self) -> bool:
        """A slot newly taken in Redis, to the fairest waiter; False if nobody waits."""
        if not self._wake_fairest():
            return False
        self.in_flight += 1
        return True

    async def wait_for_slot(self, tenant: str, timeout: float, cap: int | None = None) -> bool:
        """Take a slot of a full endpoint once one is released to this caller (``release``
        chooses whom); False if none came within ``timeout`` seconds. ``release`` hands the
        slot over without giving it back in between, so a newcomer cannot take it. With
        shared slots (``cap`` given) a poller also asks Redis for slots freed elsewhere."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self.arrivals += 1
        queue = self.queues.get(tenant)
        if queue is None:
            queue = self.queues[tenant] = deque()
        queue.append((self.arrivals, waiter))
        shared = self.shared
        if shared is not None and cap is not None and (self.poller is None or self.poller.done()):
            self.poller = loop.create_task(
                poll_for_slot(shared, self.endpoint_id, cap, self._anyone_waits, self._hand_over)
            )
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release(tenant)  # handed over as the caller gave up: pass it on
            raise
        finally:
            timer.cancel()

    def release(self, tenant: str) -> None:
        """Give back a slot a request of ``tenant`` held: to the fairest waiter (see
        ``_wake_fairest``), else to the pool."""
        held = self.held
        n = held.get(tenant, 0)  # 0: an endpoint without a cap, whose slots nobody waits for
        if n > 1:
            held[tenant] = n - 1
        elif n:
            del held[tenant]
        if self.queues and self._wake_fairest():
            return
        self.in_flight -= 1
        if self.shared is not None:
            self.shared.park(self.endpoint_id)  # for the next request here, or given back


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
        self.shared: SharedSlots | None = None

    def share_slots(self, shared: SharedSlots) -> None:
        """Count every endpoint's slots in Redis, with every other process, from now on."""
        self.shared = shared
        for eid, st in self._state.items():
            st.shared, st.endpoint_id = shared, eid

    def cap(self, ep: Endpoint) -> int | None:
        """The slots this process may hold of the endpoint's ``max_concurrency``: all of them
        when they are shared through Redis; otherwise, with ``--workers N``, each worker holds
        cap // N (at least 1), so together they stay within the cap (when the cap is at least
        N)."""
        cap = ep.max_concurrency
        if cap is None or self.workers <= 1 or self.shared is not None:
            return cap
        return max(1, cap // self.workers)

    def is_full(self, ep: Endpoint) -> bool:
        """Whether the endpoint's slots were all taken when last seen (a hint for ordering;
        taking a slot decides)."""
        st = self.state(ep.id)  # an endpoint a plan considered is listed in /readyz from now
        cap = self.cap(ep)
        if cap is None:
            return False
        if self.shared is not None:
            return (self.shared.in_use(ep.id) or 0) >= cap
        return st.in_flight >= cap

    def state(self, endpoint_id: str) -> EndpointHealth:
        st = self._state.get(endpoint_id)
        if st is None:
            st = self._state[endpoint_id] = EndpointHealth(endpoint_id, self.shared)
        return st

    def is_up(self, endpoint_id: str) -> bool:
        st = self._state.get(endpoint_id)
        return st is None or st.down_until <= self._clock()

    def success(self, endpoint_id: str) -> None:
        st = self.state(endpoint_id)
        self._back(st, "answered a request")
        st.failures = 0
        st.down_until = 0.0
        st.limited_until = 0.0

    def probed(self, endpoint_id: str) -> None:
        """An active probe's answer: the endpoint is back, but a Retry-After it gave still
        stands (it answers GET /models while rate-limiting requests)."""
        st = self.state(endpoint_id)
        if st.limited_until > self._clock():
            return
        self._back(st, "answered a probe")
        st.failures = 0
        st.down_until = 0.0

    def _back(self, st: EndpointHealth, how: str) -> None:
        """The line that ends an outage in the log: each failure was an ``upstream failed``
        warning, and without it the endpoint's recovery showed only as their absence."""
        if st.failures >= self.failure_threshold:
            log.info(
                "endpoint is answering again",
                extra={"endpoint": st.endpoint_id, "failures": st.failures, "how": how},
            )

    def limited_for(self, endpoint_id: str) -> float:
        """Seconds left of the endpoint's own Retry-After (0: it may be sent to)."""
        st = self._state.get(endpoint_id)
        return 0.0 if st is None else max(0.0, st.limited_until - self._clock())

    def failure(self, endpoint_id: str, reason: str, retry_after: float | None = None) -> None:
        st = self.state(endpoint_id)
        st.failures += 1
        st.last_error = reason
        now = self._clock()
        if retry_after is not None:
            # The endpoint said how long: honoured as said (up to an hour), not cut to the
            # backoff's maximum, and the client is told the same.
            st.limited_until = max(st.limited_until, now + min(retry_after, MAX_RETRY_AFTER))
        if st.failures >= self.failure_threshold:
            # Doubling stops at the maximum: an endpoint down under load fails thousands of
            # times, and 2**1024 is past what a float holds (OverflowError, every request 500).
            n = min(st.failures - self.failure_threshold, 62)
            backoff = min(self.backoff_max, self.backoff_initial * (2**n))
            if retry_after is not None:
                backoff = max(backoff, min(retry_after, MAX_RETRY_AFTER))
            st.down_until = now + backoff

    def snapshot(self) -> dict[str, dict[str, object]]:
        now = self._clock()
        return {
            eid: {
                "up": st.down_until <= now,
                "consecutive_failures": st.failures,
                "down_for_seconds": max(0.0, round(st.down_until - now, 3)),
                "in_flight": st.in_flight,
                "waiting": st.waiting,
                "last_error": st.last_error,
                **(
                    {"slots_in_use_shared": self.shared.in_use(eid)}
                    if self.shared is not None
                    else {}
                ),
            }
            for eid, st in self._state.items()
        }
