"""Selection orders only what the policy made eligible; health decides the order, never the set."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sekisho.routing import Health, Route, Selector
from sekisho.routing.catalogue import (
    DataTerms,
    Endpoint,
    Jurisdiction,
    ModelEntry,
    Operator,
)
from sekisho.routing.health import EndpointHealth


def endpoint(i: int, weight: float = 1.0, cap: int | None = None) -> Endpoint:
    return Endpoint(
        id=f"ep-{i}",
        family="openai",
        base_url=f"http://127.0.0.1:{9000 + i}/v1",
        models=(ModelEntry(id="m"),),
        jurisdiction=Jurisdiction(country="JP", region="tokyo"),
        operator=Operator(name="Op", country="JP"),
        data_terms=DataTerms(retention_days=0, trains_on_data=False),
        weight=weight,
        max_concurrency=cap,
    )


def routes(n: int, **kw: object) -> list[Route]:
    return [Route(ep, ep.models[0]) for ep in (endpoint(i, **kw) for i in range(n))]  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 8),
    attempts=st.integers(1, 10),
    down=st.sets(st.integers(0, 7)),
    tiers=st.lists(st.integers(0, 2), min_size=8, max_size=8),
    seed=st.integers(0, 2**32),
)
def test_plan_is_always_a_subset_of_the_eligible_routes(
    n: int, attempts: int, down: set[int], tiers: list[int], seed: int
) -> None:
    health = Health()
    eligible = routes(n)
    for i in down:
        if i < n:
            health.failure(f"ep-{i}", "test")
    plan = Selector(health, random.Random(seed)).plan(eligible, attempts, tiers[:n])
    ids = [r.endpoint.id for r in plan]
    assert len(ids) == len(set(ids)) == min(n, attempts)
    assert set(ids) <= {r.endpoint.id for r in eligible}
    healthy = [f"ep-{i}" for i in range(n) if i not in down]
    if healthy and attempts >= 1:
        assert ids[0] in healthy  # a down endpoint is tried only as a last resort


def test_weights_share_traffic_among_equally_preferred_endpoints() -> None:
    health = Health()
    eligible = [
        Route(endpoint(0, weight=3.0), ModelEntry(id="m")),
        Route(endpoint(1, weight=1.0), ModelEntry(id="m")),
    ]
    sel = Selector(health, random.Random(7))
    firsts = Counter(sel.plan(eligible, 2)[0].endpoint.id for _ in range(4000))
    assert 0.70 < firsts["ep-0"] / 4000 < 0.80


def test_a_more_preferred_tier_always_goes_first() -> None:
    sel = Selector(Health(), random.Random(1))
    eligible = routes(3)
    for _ in range(200):
        assert sel.plan(eligible, 3, [(0, 1), (1, 1), (1, 1)])[0].endpoint.id == "ep-0"


def test_backoff_doubles_and_success_restores() -> None:
    clock = Clock()
    health = Health(backoff_initial=1.0, backoff_max=8.0, clock=clock)
    health.failure("a", "boom")
    assert not health.is_up("a")
    clock.now += 1.01
    assert health.is_up("a")
    health.failure("a", "boom")  # second consecutive failure: 2 s
    clock.now += 1.5
    assert not health.is_up("a")
    clock.now += 0.6
    assert health.is_up("a")
    for _ in range(10):
        health.failure("a", "boom")
    assert health.state("a").down_until - clock.now <= 8.0  # capped
    health.success("a")
    assert health.is_up("a") and health.state("a").failures == 0


def test_an_endpoint_marked_down_says_so_in_the_log_once_it_answers_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each failure is an `upstream failed` warning; its recovery was only their absence."""
    health = Health(failure_threshold=2, clock=Clock())
    caplog.set_level(logging.INFO, logger="sekisho.routing")
    health.failure("a", "boom")
    health.success("a")  # one failure, under the threshold: it was never down
    for _ in range(3):
        health.failure("a", "boom")
    health.success("a")
    health.success("a")
    health.failure("b", "boom")
    health.failure("b", "boom")
    health.probed("b")
    back = [r for r in caplog.records if r.getMessage() == "endpoint is answering again"]
    assert [(r.__dict__["endpoint"], r.__dict__["failures"], r.__dict__["how"]) for r in back] == [
        ("a", 3, "answered a request"),
        ("b", 2, "answered a probe"),
    ]


def test_thousands_of_failures_keep_the_backoff_at_its_maximum() -> None:
    """An endpoint down under load fails thousands of times in a row: 2**1024 overflowed a
    float and every request through it became a 500."""
    clock = Clock()
    health = Health(backoff_initial=1.0, backoff_max=60.0, clock=clock)
    for _ in range(5000):
        health.failure("a", "boom")
    assert health.state("a").down_until - clock.now == 60.0


def test_retry_after_from_a_429_is_honoured() -> None:
    clock = Clock()
    health = Health(backoff_initial=1.0, backoff_max=60.0, clock=clock)
    health.failure("a", "429", retry_after=30)
    clock.now += 29
    assert not health.is_up("a")
    clock.now += 1.1
    assert health.is_up("a")


def test_a_retry_after_is_kept_past_the_backoff_maximum_and_through_probes() -> None:
    """Retry-After: 120 under backoff_max 60 parked the endpoint for 60 s while the client was
    told 120; an active probe (GET /models answers while requests are refused) ended it."""
    clock = Clock()
    health = Health(backoff_initial=1.0, backoff_max=60.0, clock=clock)
    health.failure("ep-0", "429", retry_after=120)
    assert health.limited_for("ep-0") == 120
    health.probed("ep-0")
    clock.now += 61
    assert not health.is_up("ep-0") and 58 < health.limited_for("ep-0") < 60
    health.failure("ep-1", "429", retry_after=10**9)
    assert health.limited_for("ep-1") == 3600  # at most an hour, whatever the header says


def test_an_endpoint_inside_its_retry_after_is_not_planned_even_as_a_last_resort() -> None:
    """The only eligible endpoint, rate-limited, was sent every request anyway (each one
    prolonging a provider's throttling)."""
    clock = Clock()
    health = Health(clock=clock)
    one, two = routes(1), routes(2)
    health.failure("ep-0", "429", retry_after=30)
    sel = Selector(health, random.Random(1))
    assert sel.plan(one, 3) == []
    assert [r.endpoint.id for r in sel.plan(two, 3)] == ["ep-1"]
    health.failure("ep-1", "500")  # down by backoff, not by its word: still a last resort
    assert [r.endpoint.id for r in sel.plan(two, 3)] == ["ep-1"]
    clock.now += 31
    assert "ep-0" in [r.endpoint.id for r in sel.plan(two, 3)]


def test_a_full_endpoint_is_tried_last() -> None:
    health = Health()
    eligible = routes(2, cap=1)
    health.state("ep-0").in_flight = 1
    plan = Selector(health, random.Random(3)).plan(eligible, 2)
    assert [r.endpoint.id for r in plan] == ["ep-1", "ep-0"]


async def test_slots_of_a_full_endpoint_go_to_waiters_in_arrival_order() -> None:
    ep = EndpointHealth()
    ep.in_flight = 1  # at a cap of 1
    order: list[str] = []

    async def waiter(name: str, timeout: float) -> None:
        if await ep.wait_for_slot("t", timeout):
            order.append(name)

    a = asyncio.create_task(waiter("a", 5))
    b = asyncio.create_task(waiter("b", 5))
    gone = asyncio.create_task(waiter("gone", 5))
    late = asyncio.create_task(waiter("late", 0.01))
    await asyncio.sleep(0.05)  # "late" timed out meanwhile: it holds nothing
    gone.cancel()
    ep.release("t")  # to "a": the count stays at 1, the slot changes hands
    await asyncio.sleep(0.01)
    assert order == ["a"] and ep.in_flight == 1
    ep.release("t")  # to "b"; the cancelled and timed-out waiters are passed over
    await asyncio.sleep(0.01)
    assert order == ["a", "b"] and ep.in_flight == 1
    ep.release("t")  # nobody waits: the slot is free
    assert ep.in_flight == 0
    await asyncio.gather(a, b, late, return_exceptions=True)
    assert gone.cancelled() and order == ["a", "b"]


async def test_a_slot_handed_to_a_caller_that_gives_up_passes_to_the_next() -> None:
    ep = EndpointHealth()
    ep.in_flight = 1
    first = asyncio.create_task(ep.wait_for_slot("t", 5))
    second = asyncio.create_task(ep.wait_for_slot("t", 5))
    await asyncio.sleep(0)
    ep.release("t")  # handed to "first"...
    first.cancel()  # ...which is cancelled before it could run
    assert await second is True
    assert ep.in_flight == 1  # one slot, held by "second": none leaked, none doubled


async def test_a_freed_slot_goes_to_the_tenant_holding_fewest_then_the_longest_waiting() -> None:
    ep = EndpointHealth()
    for tenant in ("a", "b", "c"):  # at a cap of 3, one slot each
        ep.occupy(tenant)
    order: list[str] = []

    async def waiter(tenant: str, name: str) -> None:
        if await ep.wait_for_slot(tenant, 5):
            order.append(name)

    tasks = [asyncio.create_task(waiter(t, n)) for t, n in (("b", "b2"), ("a", "a2"))]
    await asyncio.sleep(0)
    ep.release("c")  # a and b hold one each: b's request has waited longer
    await asyncio.sleep(0)
    assert order == ["b2"] and ep.held == {"a": 1, "b": 2}
    ep.release("b")  # a holds one, b now one too: a's, the only one left waiting
    await asyncio.gather(*tasks)
    assert order == ["b2", "a2"] and ep.held == {"a": 2, "b": 1} and ep.in_flight == 3
    for tenant in ("a", "a", "b"):
        ep.release(tenant)
    assert ep.in_flight == 0 and ep.held == {} and ep.queues == {}


def test_each_worker_holds_its_share_of_an_endpoints_cap() -> None:
    (one,) = routes(1, cap=10)
    (small,) = routes(1, cap=3)
    (free,) = routes(1)
    assert Health().cap(one.endpoint) == 10
    assert Health(workers=4).cap(one.endpoint) == 2  # 4 x 2 <= 10
    assert Health(workers=4).cap(small.endpoint) == 1  # at least one each
    assert Health(workers=4).cap(free.endpoint) is None
