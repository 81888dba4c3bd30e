"""Rates and budgets in one process, with a clock the test controls."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from sekisho.errors import RateLimited
from sekisho.identity import GatewayLimitsSpec, LimitsSpec, Principal
from sekisho.identity.limits import Limiter, build_limiter
from sekisho.identity.usage import SQLiteUsage

# 2025-01-31 23:59:00 UTC: a minute before both a day and a month end.
T0 = 1738367940.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(tenant: str = "acme", key_id: str = "aaaaaaaaaaaa") -> Principal:
    return Principal(tenant=tenant, key_id=key_id, role="app")


def limiter(
    clock: Clock,
    tenant: dict[str, object] | None = None,
    per_key: dict[str, object] | None = None,
    tz: str = "UTC",
) -> Limiter:
    spec = LimitsSpec.model_validate(tenant or {})
    defaults = GatewayLimitsSpec.model_validate({"per_key": per_key or {}, "timezone": tz})
    return Limiter(tenants={"acme": spec, "globex": None}, defaults=defaults, clock=clock)


async def refused(lim: Limiter, p: Principal, tokens: int = 0) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        await lim.admit(p, "gpt-4o", tokens)
    assert info.value.status == 429
    return info.value


async def test_requests_per_minute_bursts_to_the_limit_then_refills_continuously() -> None:
    clock = Clock()
    lim = limiter(clock, per_key={"requests_per_minute": 6})
    for _ in range(6):
        await lim.admit(key(), "gpt-4o", 0)
    err = await refused(lim, key())
    assert "key 'aaaaaaaaaaaa' requests_per_minute (6)" in err.message
    assert err.headers["Retry-After"] == "10"  # one request refills every 10 s
    clock.now += 9.5
    await refused(lim, key())
    clock.now += 0.5
    await lim.admit(key(), "gpt-4o", 0)
    await refused(lim, key())


async def test_keys_have_separate_buckets_but_share_the_tenants() -> None:
    clock = Clock()
    lim = limiter(clock, tenant={"requests_per_minute": 3}, per_key={"requests_per_minute": 2})
    a, b = key(key_id="aaaaaaaaaaaa"), key(key_id="bbbbbbbbbbbb")
    await lim.admit(a, "m", 0)
    await lim.admit(a, "m", 0)
    assert "key 'aaaaaaaaaaaa'" in (await refused(lim, a)).message
    await lim.admit(b, "m", 0)
    assert "tenant 'acme' requests_per_minute (3)" in (await refused(lim, b)).message


async def test_each_refusal_names_the_tenant_and_the_limit_that_had_no_room() -> None:
    """What the gateway counts in sekisho_limit_refusals_total: which tenant, whether its key's
    limit or the tenant's, which limit; a request too large for a limit is not exhaustion."""
    clock = Clock()
    lim = limiter(clock, tenant={"tokens_per_month": 100}, per_key={"requests_per_minute": 2})
    told: list[tuple[str, str, str]] = []
    lim.on_refused = lambda *refusal: told.append(refusal)
    await lim.admit(key(), "m", 0)
    await lim.admit(key(), "m", 0)
    await refused(lim, key())
    other = key(key_id="bbbbbbbbbbbb")
    await lim.admit(other, "m", 90)
    await refused(lim, other, 20)
    await refused(lim, other, 101)  # can never pass: request_exceeds_limit
    assert told == [("acme", "key", "requests_per_minute"), ("acme", "tenant", "tokens_per_month")]


async def test_a_refused_request_charges_nothing() -> None:
    clock = Clock()
    lim = limiter(clock, tenant={"tokens_per_day": 100}, per_key={"requests_per_minute": 5})
    await lim.admit(key(), "m", 90)
    await refused(lim, key(), 20)  # over the tenant's budget: the key's rpm is not charged
    for _ in range(4):
        await lim.admit(key(), "m", 1)


async def test_daily_budget_resets_at_midnight_with_retry_after_until_then() -> None:
    clock = Clock()
    lim = limiter(clock, tenant={"tokens_per_day": 1000})
    await lim.admit(key(), "m", 1000)
    err = await refused(lim, key(), 1)
    assert "tenant 'acme' tokens_per_day (1000)" in err.message
    assert err.headers["Retry-After"] == "60"
    # OpenAI's code for a quota, not a rate, and no automatic retry by the SDKs
    assert err.code == "insufficient_quota" and err.headers["x-should-retry"] == "false"
    assert err.body()["error"]["type"] == "insufficient_quota"  # as OpenAI types it
    clock.now += 60  # 2025-02-01 00:00:00
    await lim.admit(key(), "m", 1000)


async def test_monthly_budget_spans_days_and_resets_on_the_first() -> None:
    clock = Clock(T0 - 86400 * 20)  # 2025-01-11
    lim = limiter(clock, tenant={"tokens_per_month": 500})
    await lim.admit(key(), "m", 300)
    clock.now += 86400 * 5
    await lim.admit(key(), "m", 200)
    err = await refused(lim, key(), 1)
    assert int(err.headers["Retry-After"]) == int(T0 + 60 - clock.now)
    clock.now = T0 + 60
    await lim.admit(key(), "m", 500)


async def test_budget_days_follow_the_configured_zone() -> None:
    clock = Clock(T0 - 9 * 3600)  # 2025-01-31 14:59 UTC, a minute before midnight in Tokyo
    lim = limiter(clock, tenant={"tokens_per_day": 10}, tz="Asia/Tokyo")
    await lim.admit(key(), "m", 10)
    assert (await refused(lim, key(), 1)).headers["Retry-After"] == "60"
    clock.now += 60
    await lim.admit(key(), "m", 10)


async def test_settle_refunds_an_overestimate_and_charges_an_underestimate() -> None:
    clock = Clock()
    lim = limiter(clock, tenant={"tokens_per_day": 1000})
    adm = await lim.admit(key(), "m", 800)
    await lim.settle(adm, 100, 50)  # 150 used: 650 come back
    await lim.settle(adm, 100, 50)  # settling twice changes nothing
    adm = await lim.admit(key(), "m", 850)
    await lim.settle(adm, 900, 0)  # the real usage was more than estimated
    await refused(lim, key(), 1)


async def test_tokens_per_minute_counts_real_usage_after_settle() -> None:
    clock = Clock()
    lim = limiter(clock, per_key={"tokens_per_minute": 600})
    adm = await lim.admit(key(), "m", 100)
    await lim.settle(adm, 300, 300)
    err = await refused(lim, key(), 10)
    assert "tokens_per_minute (600)" in err.message
    assert err.headers["Retry-After"] == "1"  # 10 tokens refill in 1 s
    assert err.code == "rate_limit_exceeded" and "x-should-retry" not in err.headers


async def test_a_request_larger_than_a_whole_limit_says_so() -> None:
    lim = limiter(Clock(), per_key={"tokens_per_minute": 100})
    err = await refused(lim, key(), 101)
    assert "more than the whole key 'aaaaaaaaaaaa' tokens_per_minute (100)" in err.message
    assert "Retry-After" not in err.headers
    assert err.code == "request_exceeds_limit" and err.headers["x-should-retry"] == "false"


async def test_tenant_without_limits_is_not_limited() -> None:
    lim = limiter(Clock())
    for _ in range(1000):
        adm = await lim.admit(key("globex"), "m", 10_000)
    assert adm.checks == ()


async def test_usage_is_recorded_per_tenant_key_and_model(tmp_path: Path) -> None:
    lim = build_limiter(tenants={}, defaults=None, redis_url=None, data_dir=tmp_path)
    for model, (p, c) in [("gpt-4o", (10, 5)), ("gpt-4o", (1, 1)), ("embed", (7, 0))]:
        await lim.settle(await lim.admit(key(), model, 0), p, c)
    await lim.settle(await lim.admit(key(key_id="bbbbbbbbbbbb"), "gpt-4o", 0), 2, 2)
    assert lim.usage is not None
    today = date.fromisoformat(lim.today())
    rows = await lim.usage.query(today, today, tenant="acme", key_ids={"aaaaaaaaaaaa"})
    got = {(r.model, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows}
    assert got == {("gpt-4o", 2, 11, 6), ("embed", 1, 7, 0)}
    rows = await lim.usage.query(today, today, model="gpt-4o")
    assert sum(r.total_tokens for r in rows) == 21
    await lim.close()
    # another process (a new store on the same file) sees the same numbers
    again = SQLiteUsage(tmp_path / "usage.db")
    assert len(await again.query(today, today)) == 3


async def test_usage_query_range_is_checked(tmp_path: Path) -> None:
    store = SQLiteUsage(tmp_path / "usage.db")
    with pytest.raises(ValueError, match="before 'since'"):
        await store.query(date(2025, 2, 1), date(2025, 1, 1))
    with pytest.raises(ValueError, match="at most 400 days"):
        await store.query(date(2020, 1, 1), date(2025, 1, 1))


async def test_unreachable_redis_refuses_requests_instead_of_ignoring_limits() -> None:
    from sekisho.errors import ServiceUnavailable
    from sekisho.identity.limits import RedisBackend, redis_client

    client = redis_client("redis://127.0.0.1:1/0")
    lim = Limiter(tenants={"acme": LimitsSpec(requests_per_minute=5)},
                  backend=RedisBackend(client, "down"))  # fmt: skip
    with pytest.raises(ServiceUnavailable, match="cannot reach Redis"):
        await lim.admit(key(), "m", 0)
    await lim.close()


async def test_a_request_is_admitted_at_the_estimate_it_is_charged_when_usage_is_missing() -> None:
    """Admission and the charge for an answer without usage estimate alike: about four ASCII
    characters or one Japanese character per token, so a Japanese prompt is not admitted at a
    third of its cost (a token limit would be overrun by what was admitted)."""
    from sekisho.call import Call
    from sekisho.pipeline import Pipeline

    class Recording:
        def __init__(self) -> None:
            self.estimates: list[int] = []

        async def admit(self, principal: Principal, model: str, estimated: int) -> None:
            self.estimates.append(estimated)

    pipeline = Pipeline.__new__(Pipeline)  # only the admission step is exercised
    limiter = Recording()
    pipeline.limiter = limiter  # type: ignore[assignment]
    for text, max_tokens, want in [
        ("個人情報の取扱い" * 75, 16, 600 + 16),  # 600 Japanese characters
        ("word " * 200, 16, 250 + 16),  # 1,000 ASCII characters
        ("hello", None, 2 + 256),  # no max_tokens: 256 assumed
    ]:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        call = Call("req_1", key(), "chat", "gpt-4o", body, [text])
        await pipeline._admit(call)
        assert limiter.estimates[-1] == want, text[:10]


async def test_each_admission_says_what_is_left_as_openai_does() -> None:
    """OpenAI's x-ratelimit-* headers: the least left of the request limits and of the token
    limits (a key's or its tenant's), and when each is whole again."""
    clock = Clock()
    lim = limiter(clock, tenant={"tokens_per_minute": 600}, per_key={"requests_per_minute": 3})
    h = dict((await lim.admit(key(), "m", 100)).headers)
    assert h == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "20s",  # one request refills every 20 s
        "x-ratelimit-limit-tokens": "600",
        "x-ratelimit-remaining-tokens": "500",
        "x-ratelimit-reset-tokens": "10s",
    }
    clock.now += 5
    h = dict((await lim.admit(key(), "m", 100)).headers)
    assert h["x-ratelimit-remaining-requests"] == "1"  # 3 - 2 + 0.25 refilled: still 1
    assert h["x-ratelimit-reset-requests"] == "35s"
    assert h["x-ratelimit-remaining-tokens"] == "450" and h["x-ratelimit-reset-tokens"] == "15s"
    await lim.admit(key(), "m", 1)
    err = await refused(lim, key(), 1)
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-limit-requests"] == "3"


async def test_a_budget_is_reported_when_it_is_the_tightest_token_limit() -> None:
    clock = Clock(T0 - 3600)  # an hour and a minute before the day ends
    lim = limiter(clock, tenant={"tokens_per_day": 1000, "tokens_per_minute": 100_000})
    h = dict((await lim.admit(key(), "m", 300)).headers)
    assert h["x-ratelimit-remaining-tokens"] == "700"
    assert h["x-ratelimit-limit-tokens"] == "1000"
    assert h["x-ratelimit-reset-tokens"] == "1h1m0s"
    assert "x-ratelimit-limit-requests" not in h  # no request limit: nothing to report
    assert (await Limiter(tenants={}).admit(key(), "m", 1)).headers == ()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0ms"), (0.0174, "17ms"), (1.0, "1s"), (1.2, "2s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_reset_times_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    from sekisho.identity.limits import duration

    assert duration(seconds) == text


async def test_a_restarted_process_starts_its_budgets_from_the_usage_recorded(
    tmp_path: Path,
) -> None:
    """Without Redis the budgets lived only in the process: a restart, or a reload that
    replaces the workers, handed every tenant and key a fresh day's and month's budget."""
    clock = Clock(T0 - 3600)  # 2025-01-31 22:59 UTC
    spec = LimitsSpec.model_validate(
        {"tokens_per_day": 1000, "tokens_per_month": 5000, "per_key": {"tokens_per_day": 800}}
    )

    def started() -> Limiter:
        return Limiter(
            tenants={"acme": spec}, clock=clock, usage=SQLiteUsage(tmp_path / "usage.db")
        )

    first = started()
    admission = await first.admit(key(), "m", 10)
    await first.settle(admission, 300, 400)  # 700 tokens of today's 1000 (the key's 800)
    await first.close()
    again = started()  # the same data directory, after a restart
    err = await refused(again, key(), 200)
    assert "tokens_per_day" in err.message and err.code == "insufficient_quota"
    await again.admit(key(), "m", 50)  # what is left of the day is still there
    other = key(key_id="bbbbbbbbbbbb")  # another key of the tenant: the tenant's day counts
    await refused(again, other, 300)
    await again.close()


async def test_a_signed_in_subjects_per_key_limits_are_per_tenant() -> None:
    """One OIDC subject acting for two tenants shared one per-key bucket: three requests in
    one tenant (limit 3) refused its first in the other (limit 100)."""
    clock = Clock()
    lim = Limiter(
        tenants={
            "demo": LimitsSpec.model_validate({"per_key": {"requests_per_minute": 3}}),
            "beta": LimitsSpec.model_validate({"per_key": {"requests_per_minute": 100}}),
        },
        clock=clock,
    )

    def dave(tenant: str) -> Principal:
        return Principal(tenant=tenant, key_id="oidc-e6b417e6b140", role="app", auth="oidc")

    for _ in range(3):
        await lim.admit(dave("demo"), "m", 1)
    await refused(lim, dave("demo"))
    await lim.admit(dave("beta"), "m", 1)  # its own bucket in beta


async def test_a_tenant_abroad_has_its_days_in_its_own_zone(tmp_path: Path) -> None:
    """A gateway in Tokyo serving an EU subsidiary: the Japanese tenant's day starts at
    Tokyo's midnight, the German tenant's at Berlin's (its budget renews then, and its usage
    is recorded under Berlin's date), where every tenant had the gateway's one zone."""
    clock = Clock(T0 - 9 * 3600)  # 2025-01-31 14:59 UTC: 23:59 in Tokyo, 15:59 in Berlin
    defaults = GatewayLimitsSpec.model_validate({"timezone": "Asia/Tokyo"})
    tenants = {
        "acme-jp": LimitsSpec.model_validate({"tokens_per_day": 10}),
        "acme-eu": LimitsSpec.model_validate({"tokens_per_day": 10, "timezone": "Europe/Berlin"}),
    }
    usage = SQLiteUsage(tmp_path / "usage.db")
    lim = Limiter(tenants=tenants, defaults=defaults, usage=usage, clock=clock)
    jp, eu = key("acme-jp"), key("acme-eu", "bbbbbbbbbbbb")
    await lim.settle(await lim.admit(jp, "m", 10), 5, 5)
    await lim.settle(await lim.admit(eu, "m", 10), 5, 5)
    assert (await refused(lim, jp, 1)).headers["Retry-After"] == "60"
    assert (await refused(lim, eu, 1)).headers["Retry-After"] == str(8 * 3600 + 60)
    assert lim.today("acme-jp") == "2025-01-31" and lim.today("acme-eu") == "2025-01-31"
    clock.now += 60  # 00:00 on 1 February in Tokyo, 16:00 on 31 January in Berlin
    await lim.settle(await lim.admit(jp, "m", 10), 5, 5)
    await refused(lim, eu, 1)
    assert lim.today("acme-jp") == "2025-02-01" and lim.today("acme-eu") == "2025-01-31"
    clock.now += 8 * 3600  # Berlin's midnight
    await lim.settle(await lim.admit(eu, "m", 10), 5, 5)
    await usage.flush()

    async def requests(tenant: str, day: date) -> int:
        return sum(r.requests for r in await usage.query(day, day, tenant=tenant))

    jan31, feb1 = date(2025, 1, 31), date(2025, 2, 1)
    assert (await requests("acme-jp", jan31), await requests("acme-jp", feb1)) == (1, 1)
    assert (await requests("acme-eu", jan31), await requests("acme-eu", feb1)) == (1, 1)
    await lim.close()
