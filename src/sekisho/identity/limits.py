"""Rates and budgets per key and per tenant: admit before the upstream call, settle after.

Two kinds of limit:

* **rates** (``requests_per_minute``, ``tokens_per_minute``) are GCRA buckets: up to the limit at
  once, refilled continuously at limit/60 per second (as OpenAI's own limits behave). Each is one
  number per key in the store (the "theoretical arrival time").
* **budgets** (``tokens_per_day``, ``tokens_per_month``) are counters of calendar windows in
  the tenant's zone (``tenants.NAME.limits.timezone``, else ``limits.timezone``); they reset at
  local midnight and on the first of the month. Usage is recorded under the tenant's day.

``admit`` charges the request and its *estimated* tokens to every applicable limit atomically
(all or nothing); ``settle`` replaces the estimate with the real usage and records usage per
tenant, key and model. The tolerance this implies is documented in docs/identity.md: requests
are never over-admitted; token limits can be exceeded only by requests already admitted whose
real usage came out above their estimate.

Backends: in-process (default; atomic because nothing awaits between check and charge) and
Redis (one Lua script per admit, so several gateway processes share limits exactly).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from sekisho.errors import QuotaExhausted, RateLimited, ServiceUnavailable
from sekisho.identity.keys import Principal
from sekisho.identity.spec import GatewayLimitsSpec, LimitsSpec, Quota

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from sekisho.identity.usage import UsageStore

log = logging.getLogger("sekisho.identity.limits")

RATE, BUDGET = 0, 1
_MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class Check:
    """One limit a request is charged to."""

    counter: str  # storage key, unique per scope, kind and (for budgets) window
    mode: int  # RATE or BUDGET
    limit: int
    period: float  # RATE: seconds the limit is per; BUDGET: epoch second the window ends
    tokens: bool  # charged with tokens (True) or with one per request (False)
    label: str  # for people: "tenant 'acme' tokens_per_day"
    scope: str  # "key" or "tenant"
    kind: str  # requests_per_minute, tokens_per_minute, tokens_per_day or tokens_per_month


@dataclass(slots=True)
class Admission:
    """A request admitted under its limits; settle it exactly once with the real usage."""

    tenant: str
    key_id: str
    model: str
    estimated_tokens: int
    checks: tuple[Check, ...]
    day: str  # usage is recorded under the day the request was admitted
    settled: bool = field(default=False)
    # OpenAI's x-ratelimit-* headers, as this request left the limits (its estimate charged)
    headers: tuple[tuple[str, str], ...] = ()


class Refusal(Exception):
    def __init__(self, index: int, retry_after: float) -> None:
        self.index = index
        self.retry_after = retry_after


# What is left of a limit after a charge: (units left, seconds until it is whole again).
Left = tuple[int, float]


class Backend(Protocol):
    async def take(self, checks: Sequence[Check], costs: Sequence[int]) -> list[Left]:
        """Charge every check its cost, or none of them and raise Refusal; return what is left
        of each."""

    async def adjust(self, checks: Sequence[Check], deltas: Sequence[int]) -> None:
        """Add (or refund, when negative) cost after the fact; never refuses."""

    async def close(self) -> None: ...


class MemoryBackend:
    """Limits of one process. Atomic because take() never awaits."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._values: dict[str, tuple[float, float]] = {}  # counter → (value, expires at)
        self._ops = 0

    def _get(self, counter: str, now: float) -> float:
        got = self._values.get(counter)
        return got[0] if got is not None and got[1] > now else 0.0

    async def take(self, checks: Sequence[Check], costs: Sequence[int]) -> list[Left]:
        now = self._clock()
        news: list[float] = []
        worst: Refusal | None = None
        for i, (c, cost) in enumerate(zip(checks, costs, strict=True)):
            value = self._get(c.counter, now)
            if c.mode == RATE:
                new = max(value, now) + cost * c.period / c.limit
                if new - now > c.period:
                    wait = new - c.period - now
                    if worst is None or wait > worst.retry_after:
                        worst = Refusal(i, wait)
            else:
                new = value + cost
                wait = max(c.period - now, 0.0)
                if new > c.limit and (worst is None or wait > worst.retry_after):
                    worst = Refusal(i, wait)
            news.append(new)
        if worst is not None:
            raise worst
        left: list[Left] = []
        for c, new in zip(checks, news, strict=True):
            expires = new if c.mode == RATE else c.period + 86400
            self._values[c.counter] = (new, expires)
            left.append(_left(c, new, now))
        self._ops += 1
        if self._ops % 10000 == 0:
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
        return left

    async def adjust(self, checks: Sequence[Check], deltas: Sequence[int]) -> None:
        now = self._clock()
        for c, delta in zip(checks, deltas, strict=True):
            if delta == 0:
                continue
            value = self._get(c.counter, now)
            if c.mode == RATE:
                new = max(max(value, now) + delta * c.period / c.limit, now)
                self._values[c.counter] = (new, new)
            else:
                self._values[c.counter] = (max(value + delta, 0.0), c.period + 86400)

    async def close(self) -> None:
        return None


# KEYS: counters. ARGV: 4 per check — mode, limit, period (ms for RATE; window end in epoch
# seconds for BUDGET), cost. Redis' own clock is used so that every process agrees on "now".
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local failed, worst = 0, 0
local news = {}
for i = 1, #KEYS do
  local b = (i - 1) * 4
  local mode, limit = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local p, cost = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  local new, over, wait = 0, false, 0
  if mode == 0 then
    if value < now then value = now end
    new = value + cost * p / limit
    if new - now > p then over, wait = true, new - p - now end
  else
    new = value + cost
    if new > limit then over, wait = true, p * 1000 - now end
  end
  if over and (failed == 0 or wait > worst) then failed, worst = i, math.max(wait, 0) end
  news[i] = new
end
if failed > 0 then return {failed, math.ceil(worst)} end
local out = {0, 0}
for i = 1, #KEYS do
  local b = (i - 1) * 4
  if tonumber(ARGV[b + 1]) == 0 then
    redis.call('SET', KEYS[i], string.format('%.3f', news[i]), 'PX',
               math.ceil(news[i] - now) + 1000)
  else
    redis.call('SET', KEYS[i], string.format('%d', news[i]), 'EXAT', tonumber(ARGV[b + 3]) + 86400)
  end
  out[#out + 1] = string.format('%.3f', news[i])
end
out[#out + 1] = string.format('%.3f', now)
return out
"""

_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
for i = 1, #KEYS do
  local b = (i - 1) * 4
  local mode, limit = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local p, delta = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  if mode == 0 then
    if value < now then value = now end
    local new = value + delta * p / limit
    if new < now then new = now end
    redis.call('SET', KEYS[i], string.format('%.3f', new), 'PX', math.ceil(new - now) + 1000)
  else
    local new = value + delta
    if new < 0 then new = 0 end
    redis.call('SET', KEYS[i], string.format('%d', new), 'EXAT', p + 86400)
  end
end
return 0
"""


class RedisBackend:
    """Limits shared by every gateway process through one Redis, one Lua script per call."""

    def __init__(self, client: Redis, namespace: str) -> None:
        self.client = client
        self.prefix = f"sekisho:{namespace}:rl:"
        self._take = client.register_script(_TAKE)
        self._adjust = client.register_script(_ADJUST)

    def _args(self, checks: Sequence[Check], amounts: Sequence[int]) -> tuple[list[str], list[Any]]:
        keys = [self.prefix + c.counter for c in checks]
        argv: list[Any] = []
        for c, amount in zip(checks, amounts, strict=True):
            period = c.period * 1000 if c.mode == RATE else int(c.period)
            argv += [c.mode, c.limit, period, amount]
        return keys, argv

    async def take(self, checks: Sequence[Check], costs: Sequence[int]) -> list[Left]:
        from redis.exceptions import RedisError

        keys, argv = self._args(checks, costs)
        try:
            failed, wait_ms, *values = await self._take(keys=keys, args=argv)
        except (RedisError, OSError) as exc:
            # Fail closed: without the shared counters no process can know what is left.
            raise ServiceUnavailable(
                f"sekisho cannot reach Redis to check rate limits ({type(exc).__name__}); "
                "the request was not sent. Check the `redis:` setting and the server.",
                code="limits_unavailable",
            ) from None
        if int(failed):
            raise Refusal(int(failed) - 1, int(wait_ms) / 1000)
        now_ms = float(values[-1])
        return [
            _left(c, float(v) / 1000 if c.mode == RATE else float(v), now_ms / 1000)
            for c, v in zip(checks, values, strict=False)
        ]

    async def adjust(self, checks: Sequence[Check], deltas: Sequence[int]) -> None:
        from redis.exceptions import RedisError

        keys, argv = self._args(checks, deltas)
        try:
            await self._adjust(keys=keys, args=argv)
        except (RedisError, OSError) as exc:  # the response is already out; keep the estimate
            log.warning("could not settle token usage in Redis", extra={"error": str(exc)})

    async def close(self) -> None:
        await self.client.aclose()


def _left(c: Check, new: float, now: float) -> Left:
    """What is left of ``c`` once its counter is ``new`` (a rate's theoretical arrival time,
    or a budget's count), and how long until it is whole again."""
    if c.mode == RATE:
        used = max(new - now, 0.0)
        return max(0, math.floor((c.period - used) * c.limit / c.period + 1e-9)), used
    return max(0, c.limit - int(new)), max(c.period - now, 0.0)


def ratelimit_headers(checks: Sequence[Check], left: Sequence[Left]) -> tuple[tuple[str, str], ...]:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``: of the request limits
    and of the token limits, the one with the least left (a key's or its tenant's; for tokens, a
    rate or a budget)."""
    out: list[tuple[str, str]] = []
    for unit, tokens in (("requests", False), ("tokens", True)):
        worst: tuple[int, float, int] | None = None
        for c, (remaining, reset) in zip(checks, left, strict=True):
            if c.tokens == tokens and (worst is None or remaining < worst[0]):
                worst = (remaining, reset, c.limit)
        if worst is not None:
            out += [
                (f"x-ratelimit-limit-{unit}", str(worst[2])),
                (f"x-ratelimit-remaining-{unit}", str(worst[0])),
                (f"x-ratelimit-reset-{unit}", duration(worst[1])),
            ]
    return tuple(out)


def duration(seconds: float) -> str:
    """As OpenAI writes a reset time: ``20ms``, ``1s``, ``6m0s``, ``3h2m1s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    total = math.ceil(seconds)
    h, rest = divmod(total, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    return f"{m}m{sec}s" if m else f"{sec}s"


class _Calendar:
    """Day and month windows in one zone, recomputed only when a window ends."""

    def __init__(self, zone: str) -> None:
        self.zone = ZoneInfo(zone)
        self.day_end = -math.inf
        self.day = self.month = ""
        self.month_end = 0.0

    def at(self, now: float) -> _Calendar:
        if now >= self.day_end:
            local = datetime.fromtimestamp(now, self.zone)
            midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
            self.day = midnight.strftime("%Y-%m-%d")
            self.day_end = _next(midnight, days=1).timestamp()
            first = midnight.replace(day=1)
            self.month = first.strftime("%Y-%m")
            self.month_end = _next(first, months=1).timestamp()
        return self


def _next(start: datetime, *, days: int = 0, months: int = 0) -> datetime:
    if months:
        y, m = divmod(start.month, 12)
        naive = start.replace(year=start.year + y, month=m + 1, tzinfo=None)
    else:
        naive = start.replace(tzinfo=None) + timedelta(days=days)
    return naive.replace(tzinfo=start.tzinfo)  # local midnight, whatever DST did meanwhile


_KINDS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "tokens_per_month")


class Limiter:
    """Admits requests under the limits of their key and tenant; records what they used."""

    def __init__(
        self,
        *,
        tenants: Mapping[str, LimitsSpec | None],
        defaults: GatewayLimitsSpec | None = None,
        backend: Backend | None = None,
        usage: UsageStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.defaults = defaults or GatewayLimitsSpec()
        self.tenants = dict(tenants)
        self.backend: Backend = backend or MemoryBackend(clock)
        self.usage = usage
        self._clock = clock
        self._calendars: dict[str, _Calendar] = {}  # by zone: a tenant abroad has its own
        self._seeded: set[str] = set()  # budget counters started from the recorded usage
        # Told (tenant, scope, limit) for each request a limit with no room left refused (the
        # gateway counts them in sekisho_limit_refusals_total).
        self.on_refused: Callable[[str, str, str], None] | None = None

    async def _seed(self, checks: Sequence[Check], principal: Principal, now: float) -> None:
        """In-process limits (no Redis): a day's or a month's budget starts from the usage
        already recorded for that window (usage.db), so a restart or a reload that replaces
        the workers does not hand out a fresh budget. Once per counter and process."""
        if not isinstance(self.backend, MemoryBackend) or self.usage is None:
            return
        fresh = [c for c in checks if c.mode == BUDGET and c.counter not in self._seeded]
        if not fresh:
            return
        cal = self._calendar(principal.tenant).at(now)
        today = date.fromisoformat(cal.day)
        for c in fresh:
            self._seeded.add(c.counter)
            since = today if ":tpd:" in c.counter else today.replace(day=1)
            by_key = c.counter.startswith("key:")
            rows = await self.usage.query(
                since,
                today,
                tenant=principal.tenant,
                key_ids=[principal.key_id] if by_key else None,
            )
            used = sum(r.total_tokens for r in rows)
            if used:
                await self.backend.adjust([c], [used])

    def quotas(self, principal: Principal) -> tuple[Quota | None, Quota | None]:
        """(the key's limits, the tenant's limits); None where there are none."""
        tenant = self.tenants.get(principal.tenant)
        per_key = tenant.per_key if tenant is not None and tenant.per_key else self.defaults.per_key
        return (
            None if per_key.unlimited else per_key,
            None if tenant is None or tenant.unlimited else tenant,
        )

    def _calendar(self, tenant: str) -> _Calendar:
        """The tenant's days and months: in its own zone (tenants.NAME.limits.timezone), else
        in the gateway's (limits.timezone)."""
        spec = self.tenants.get(tenant)
        return self._zone(spec.timezone if spec is not None and spec.timezone else None)

    def _zone(self, zone: str | None) -> _Calendar:
        zone = zone or self.defaults.timezone
        cal = self._calendars.get(zone)
        if cal is None:
            cal = self._calendars[zone] = _Calendar(zone)
        return cal

    def checks(self, principal: Principal, now: float) -> tuple[list[Check], str]:
        cal = self._calendar(principal.tenant).at(now)
        out: list[Check] = []
        key_quota, tenant_quota = self.quotas(principal)
        # An API key belongs to one tenant; a signed-in subject may act for several (its
        # token names the tenant): its per-key limits are per tenant, as the tenant's are.
        key = (
            principal.key_id
            if principal.auth != "oidc"
            else f"{principal.tenant}/{principal.key_id}"
        )
        for scope, ident, quota in (
            ("key", key, key_quota),
            ("tenant", principal.tenant, tenant_quota),
        ):
            if quota is None:
                continue
            for kind in _KINDS:
                limit: int | None = getattr(quota, kind)
                if limit is None:
                    continue
                label = f"{scope} '{ident}' {kind} ({limit})"
                base = f"{scope}:{ident}:"
                named = (label, scope, kind)
                if kind == "requests_per_minute":
                    out.append(Check(base + "rpm", RATE, limit, _MINUTE, False, *named))
                elif kind == "tokens_per_minute":
                    out.append(Check(base + "tpm", RATE, limit, _MINUTE, True, *named))
                elif kind == "tokens_per_day":
                    counter = f"{base}tpd:{cal.day}"
                    out.append(Check(counter, BUDGET, limit, cal.day_end, True, *named))
                else:
                    counter = f"{base}tpmo:{cal.month}"
                    out.append(Check(counter, BUDGET, limit, cal.month_end, True, *named))
        return out, cal.day

    async def admit(self, principal: Principal, model: str, estimated_tokens: int) -> Admission:
        """Charge one request and its estimated tokens, or raise RateLimited naming the limit."""
        estimated_tokens = max(0, int(estimated_tokens))
        now = self._clock()
        checks, day = self.checks(principal, now)
        if checks:
            await self._seed(checks, principal, now)
            costs = [estimated_tokens if c.tokens else 1 for c in checks]
            for c, cost in zip(checks, costs, strict=True):
                if cost > c.limit:
                    # The same request can never pass: the SDKs must not send it again.
                    raise RateLimited(
                        f"This request is estimated at {cost} tokens, more than the whole "
                        f"{c.label} allows; send a smaller request (or lower max_tokens).",
                        code="request_exceeds_limit",
                        headers={"x-should-retry": "false"},
                    )
            try:
                left = await self.backend.take(checks, costs)
            except Refusal as refusal:
                c = checks[refusal.index]
                if self.on_refused is not None:
                    self.on_refused(principal.tenant, c.scope, c.kind)
                retry = max(1, math.ceil(refusal.retry_after))
                unit = "tokens" if c.tokens else "requests"
                headers = {
                    "Retry-After": str(retry),
                    f"x-ratelimit-limit-{unit}": str(c.limit),
                    f"x-ratelimit-remaining-{unit}": "0",
                    f"x-ratelimit-reset-{unit}": duration(refusal.retry_after),
                }
                if c.mode == BUDGET:
                    # A day's or a month's budget used up: OpenAI's insufficient_quota, and
                    # no automatic retry (the SDKs would retry within seconds, not hours).
                    raise QuotaExhausted(
                        f"Quota used up: {c.label}. It renews in {retry} s (Retry-After).",
                        headers={**headers, "x-should-retry": "false"},
                    ) from None
                # The SDKs read retry-after-ms first: a bucket that refills in 100 ms is
                # retried then, not after the whole second Retry-After rounds up to.
                headers["retry-after-ms"] = str(max(1, math.ceil(refusal.retry_after * 1000)))
                raise RateLimited(
                    f"Rate limit reached: {c.label}. Retry after {retry} s.", headers=headers
                ) from None
            left_headers = ratelimit_headers(checks, left)
            return Admission(principal.tenant, principal.key_id, model, estimated_tokens,
                             tuple(checks), day, headers=left_headers)  # fmt: skip
        return Admission(principal.tenant, principal.key_id, model, estimated_tokens, (), day)

    async def settle(
        self, admission: Admission, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Replace the estimate with real usage (refund or charge the difference); record it."""
        if admission.settled:
            return
        admission.settled = True
        used = max(0, prompt_tokens) + max(0, completion_tokens)
        delta = used - admission.estimated_tokens
        token_checks = [c for c in admission.checks if c.tokens]
        if delta and token_checks:
            await self.backend.adjust(token_checks, [delta] * len(token_checks))
        if self.usage is not None:
            await self.usage.record(
                admission.day,
                admission.tenant,
                admission.key_id,
                admission.model,
                max(0, prompt_tokens),
                max(0, completion_tokens),
            )

    def today(self, tenant: str | None = None) -> str:
        """Today's date in the tenant's zone (without one: in the gateway's)."""
        cal = self._zone(None) if tenant is None else self._calendar(tenant)
        return cal.at(self._clock()).day

    async def close(self) -> None:
        if self.usage is not None:  # first: its last counters go through the backend's client
            await self.usage.close()
        await self.backend.close()


REDIS_TIMEOUT = 2.0  # seconds a Redis may take to answer before it counts as down


def redis_client(
    url: str, max_connections: int = 64, *, socket_timeout: float | None = None
) -> Redis:
    """A client whose pool makes bursts wait for a connection instead of failing; with
    ``socket_timeout`` a Redis that stops answering is an error after that many seconds.

    A pooled connection that Redis closed while it sat idle (its ``timeout`` setting, a
    restart, CLIENT KILL, a proxy's idle timer) is replaced before a command is sent on it.
    redis-py checks for that only with maintenance notifications off; left on ("auto", its
    default, for Redis Enterprise's failovers), every such connection failed its next command,
    and each was a request refused 503 ``limits_unavailable`` with Redis up.
    """
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.maint_notifications import MaintNotificationsConfig

    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    return Redis(connection_pool=pool)


def build_limiter(
    *,
    tenants: Mapping[str, LimitsSpec | None],
    defaults: GatewayLimitsSpec | None,
    redis_url: str | None,
    data_dir: Path,
) -> Limiter:
    """The limiter a gateway process uses: Redis when configured, else in-process + SQLite."""
    from sekisho.identity.usage import RedisUsage, SQLiteUsage

    defaults = defaults or GatewayLimitsSpec()
    if redis_url:
        # A Redis that stops answering (paused, its host gone) is an error within 2 s: every
        # limited request would otherwise wait on it for ever, and shutdown with them.
        client = redis_client(redis_url, socket_timeout=REDIS_TIMEOUT)
        return Limiter(
            tenants=tenants,
            defaults=defaults,
            backend=RedisBackend(client, defaults.namespace),
            usage=RedisUsage(client, defaults.namespace),
        )
    return Limiter(tenants=tenants, defaults=defaults, usage=SQLiteUsage(data_dir / "usage.db"))
