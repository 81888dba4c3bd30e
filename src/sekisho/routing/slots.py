"""Endpoint concurrency caps shared through Redis by every gateway process and instance.

An endpoint's ``max_concurrency`` is usually a contract, not a preference: the provisioned
throughput bought for an Azure deployment, the GPUs a domestic operator sized for this
customer. Without Redis each gateway process holds its share of the cap (``Health.cap``), which
holds only when every process sits on one machine under one supervisor. With ``redis:`` the
cap is one count for all of them, however many containers run.

Each endpoint's slots are one sorted set, ``sekisho:<namespace>:slots:<endpoint id>``: a member
per slot taken, scored with its lease's end on Redis' own clock (so processes agree on "now").
Taking a slot is one Lua script (drop expired leases, count, add if below the cap), so two
processes can never both take the last one. A process renews the leases of the slots it holds
every third of a lease; a process that dies stops renewing, and its slots come free when their
leases end (``lease_seconds``, 30 s by default), with no one having to notice it died.

A slot given back while a request in the same process waits for one passes to that request
without touching Redis. A slot given back while nobody here waits is kept by its process for
up to 50 ms (``park``), for its next request to reuse without asking Redis, then given back:
under steady load most requests take and give back no slot in Redis at all (each would cost
two round trips), and a slot stays out of other processes' reach for 50 ms at most.

Requests that wait for a slot held elsewhere are served by one poller per endpoint and
process, which asks Redis again at 5 ms, then backing off to 50 ms. Within a process a slot
goes to the waiting tenant holding the fewest of the endpoint's slots there (``health``); across
processes, to whoever asks first after a slot comes free.

The same slots count each capped tenant's requests in flight (``identity.in_flight``), under
the id ``tenant:<name>`` (no endpoint id has a ``:``), leases, parking and all.

Fail closed: if Redis cannot be reached, a request to a capped endpoint is refused with 503
(nothing is sent), as the rate limits are; giving a slot back to an unreachable Redis is left
to the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sekisho.errors import ServiceUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("sekisho.routing")

# KEYS[1] the endpoint's slots; ARGV: cap, lease (ms), this slot's member.
# Returns {1, slots in use} if the slot was taken, {0, slots in use} if the endpoint is full.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return {1, n + 1}
end
return {0, n}
"""

# KEYS[1] the endpoint's slots; ARGV: lease (ms), then the members whose leases to extend
# (only those still there: a lease that already ended is not brought back).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return renewed
"""

_HINT_SECONDS = 1.0
_PARK = 0.05  # how long a process keeps a slot nobody uses for its next request
_POLL_FIRST = 0.005
_POLL_MAX = 0.05


class SlotsUnavailable(ServiceUnavailable):
    code = "slots_unavailable"


class SharedSlots:
    """This process's view of every capped endpoint's shared slots."""

    def __init__(
        self,
        client: Redis,
        namespace: str,
        *,
        lease_seconds: float = 30.0,
        owner: str | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self._owner = owner or f"{os.getpid()}-{secrets.token_hex(4)}"
        self._serial = itertools.count(1)
        self._held: dict[str, list[str]] = {}  # endpoint id -> members in use here
        # endpoint id -> members this process still holds but nobody uses, with when parked
        self._idle: dict[str, deque[tuple[str, float]]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        # endpoint id -> (slots in use, when seen): a hint for ordering, trusted for 1 s
        self._in_use: dict[str, tuple[int, float]] = {}
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)
        self._renewer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    def key(self, endpoint_id: str) -> str:
        return f"sekisho:{self.namespace}:slots:{endpoint_id}"

    def in_use(self, endpoint_id: str) -> int | None:
        """Slots in use at the endpoint, all processes together, as seen within the last
        second (None: not seen since)."""
        seen = self._in_use.get(endpoint_id)
        if seen is None or time.monotonic() - seen[1] > _HINT_SECONDS:
            return None
        return seen[0]

    def held(self, endpoint_id: str) -> int:
        """Slots of the endpoint in use by this process's requests."""
        return len(self._held.get(endpoint_id, ()))

    def parked(self, endpoint_id: str) -> int:
        """Slots of the endpoint this process holds for its next requests."""
        return len(self._idle.get(endpoint_id, ()))

    def reuse(self, endpoint_id: str) -> bool:
        """Take a slot this process parked, if it has one (no Redis round trip)."""
        idle = self._idle.get(endpoint_id)
        if not idle:
            return False
        member, _ = idle.pop()  # the most recently parked: the oldest ones age out
        self._held.setdefault(endpoint_id, []).append(member)
        return True

    def park(self, endpoint_id: str) -> None:
        """A slot no request here uses any more: keep it for the next one, for ``_PARK``
        seconds at most, then give it back (``_sweep``)."""
        members = self._held.get(endpoint_id)
        if not members:
            return
        self._idle.setdefault(endpoint_id, deque()).append((members.pop(), time.monotonic()))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Give back, one ZREM per endpoint, every slot parked longer than ``_PARK``."""
        from redis.exceptions import RedisError

        while any(self._idle.values()):
            await asyncio.sleep(_PARK / 2)
            stale = time.monotonic() - _PARK
            for endpoint_id, idle in list(self._idle.items()):  # parking may add endpoints
                members = []
                while idle and idle[0][1] <= stale:
                    members.append(idle.popleft()[0])
                if not members:
                    continue
                self._forget(endpoint_id, len(members))
                try:
                    await self.client.zrem(self.key(endpoint_id), *members)
                except (RedisError, OSError) as exc:
                    log.warning(
                        "could not give endpoint slots back in Redis; their leases will end them",
                        extra={"endpoint": endpoint_id, "error": str(exc)},
                    )

    def _forget(self, endpoint_id: str, n: int) -> None:
        """``n`` slots given back: the in-use hint counts them out."""
        seen = self._in_use.get(endpoint_id)
        if seen and seen[0]:
            self._in_use[endpoint_id] = (max(0, seen[0] - n), seen[1])

    async def try_take(self, endpoint_id: str, cap: int) -> bool:
        """Take one of the endpoint's ``cap`` slots if one is free; never waits for one."""
        from redis.exceptions import RedisError

        member = f"{self._owner}-{next(self._serial)}"
        try:
            taken, in_use = await self._take(
                keys=[self.key(endpoint_id)], args=[cap, self.lease_ms, member]
            )
        except asyncio.CancelledError:
            # The script may have run: give the member back rather than leave it to its lease.
            self._spawn(self._give_back(endpoint_id, member))
            raise
        except (RedisError, OSError) as exc:
            raise SlotsUnavailable(
                f"sekisho cannot reach Redis to take a slot of endpoint {endpoint_id!r} "
                f"(max_concurrency {cap}, shared by every gateway process; "
                f"{type(exc).__name__}); the request was not sent. Check the `redis:` setting "
                "and the server.",
                headers={"retry-after": "1"},
            ) from None
        self._in_use[endpoint_id] = (int(in_use), time.monotonic())
        if not taken:
            return False
        self._held.setdefault(endpoint_id, []).append(member)
        self._ensure_renewer()
        return True

    def give_back(self, endpoint_id: str) -> None:
        """Give one slot this process holds back to every process (in the background)."""
        members = self._held.get(endpoint_id)
        if not members:
            return
        member = members.pop()
        self._forget(endpoint_id, 1)
        self._spawn(self._give_back(endpoint_id, member))

    async def _give_back(self, endpoint_id: str, member: str) -> None:
        from redis.exceptions import RedisError

        try:
            await self.client.zrem(self.key(endpoint_id), member)
        except (RedisError, OSError) as exc:
            log.warning(
                "could not give an endpoint's slot back in Redis; its lease will end it",
                extra={"endpoint": endpoint_id, "error": str(exc)},
            )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            await self.renew()

    async def renew(self) -> None:
        """Extend the leases of every slot this process holds."""
        from redis.exceptions import RedisError

        for endpoint_id in list({*self._held, *self._idle}):
            members = [
                *self._held.get(endpoint_id, ()),
                *(m for m, _ in self._idle.get(endpoint_id, ())),
            ]
            if not members:
                continue
            try:
                await self._renew(keys=[self.key(endpoint_id)], args=[self.lease_ms, *members])
            except (RedisError, OSError) as exc:
                log.warning(
                    "could not renew endpoint slots in Redis; they end with their leases",
                    extra={"endpoint": endpoint_id, "error": str(exc)},
                )

    async def reachable(self, timeout: float) -> dict[str, object]:
        """Whether Redis answers a PING within ``timeout`` seconds, for /readyz."""
        from redis.exceptions import RedisError

        try:
            await asyncio.wait_for(self.client.ping(), timeout)
        except TimeoutError:
            return {"ok": False, "error": f"no answer to PING within {timeout:g} s"}
        except (RedisError, OSError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        return {"ok": True}

    async def close(self) -> None:
        """Stop renewing and give back every slot still held."""
        for task in (self._renewer, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for endpoint_id, members in self._held.items():
            for member in members:
                await self._give_back(endpoint_id, member)
        for endpoint_id, idle in self._idle.items():
            for member, _ in idle:
                await self._give_back(endpoint_id, member)
        self._held.clear()
        self._idle.clear()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.client.aclose()


async def poll_for_slot(
    slots: SharedSlots,
    endpoint_id: str,
    cap: int,
    waiting: Callable[[], bool],
    hand_over: Callable[[], bool],
) -> None:
    """While requests of this process wait for the endpoint, ask Redis for a slot again and
    again (5 ms, backing off to 50 ms) and hand each one taken to the oldest waiter; a slot no
    waiter took any more is given back. Ends when nobody waits; a Redis error ends it too (the
    waiters then run into their own timeouts)."""
    pause = _POLL_FIRST
    while waiting():
        try:
            taken = await slots.try_take(endpoint_id, cap)
        except SlotsUnavailable:
            return
        if taken:
            if not hand_over():
                slots.give_back(endpoint_id)
            pause = _POLL_FIRST
            continue
        await asyncio.sleep(pause)
        pause = min(_POLL_MAX, pause * 2)
