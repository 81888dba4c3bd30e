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
without touching Redis. Requests that wait for a slot held elsewhere are served by one poller
per endpoint and process, which asks Redis again at 5 ms, then backing off to 50 ms: first
come, first served within a process, and, across processes, whoever asks first after a slot
comes free.

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
        self._held: dict[str, list[str]] = {}  # endpoint id -> members this process holds
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
        return len(self._held.get(endpoint_id, ()))

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
        seen = self._in_use.get(endpoint_id)
        if seen and seen[0]:
            self._in_use[endpoint_id] = (seen[0] - 1, seen[1])
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

        for endpoint_id, members in list(self._held.items()):
            if not members:
                continue
            try:
                await self._renew(keys=[self.key(endpoint_id)], args=[self.lease_ms, *members])
            except (RedisError, OSError) as exc:
                log.warning(
                    "could not renew endpoint slots in Redis; they end with their leases",
                    extra={"endpoint": endpoint_id, "error": str(exc)},
                )

    async def close(self) -> None:
        """Stop renewing and give back every slot still held."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for endpoint_id, members in self._held.items():
            for member in members:
                await self._give_back(endpoint_id, member)
        self._held.clear()
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
