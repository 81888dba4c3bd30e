"""A tenant's cap on its requests in flight (tenants.NAME.limits.max_concurrent_requests):
counted per process without Redis (each of --workers N allowing its share), across every
process and instance with it (against the real Redis at 127.0.0.1:6379, skipped, saying so,
where none runs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from harness import free_port
from sekisho.errors import ConcurrencyLimited, ServiceUnavailable
from sekisho.identity.in_flight import TenantsInFlight
from sekisho.identity.limits import redis_client
from sekisho.routing.slots import SharedSlots

URL = "redis://127.0.0.1:6379/0"


async def test_a_tenant_past_its_cap_is_refused_until_one_of_its_requests_ends() -> None:
    counts = TenantsInFlight({"acme": 2, "beta": None})
    assert counts.caps == {"acme": 2}  # a tenant without a cap is never counted
    await counts.enter("acme")
    await counts.enter("acme")
    with pytest.raises(ConcurrencyLimited) as refused:
        await counts.enter("acme")
    err = refused.value
    assert (err.status, err.type, err.code) == (429, "rate_limit_error", "tenant_concurrency_limit")
    assert err.headers == {"retry-after": "1"}
    assert "Tenant 'acme' has 2 requests in flight (this gateway process)" in err.message
    assert "tenants.acme.limits.max_concurrent_requests: 2" in err.message
    counts.leave("acme")
    await counts.enter("acme")
    counts.leave("acme")
    counts.leave("acme")
    assert counts.counts == {}


async def test_each_worker_allows_its_share_and_says_so() -> None:
    counts = TenantsInFlight({"acme": 5}, workers=2)
    await counts.enter("acme")
    await counts.enter("acme")
    with pytest.raises(ConcurrencyLimited) as refused:
        await counts.enter("acme")
    assert "(this worker, which allows 2 of them: one of 2 workers)" in refused.value.message
    assert "max_concurrent_requests: 5" in refused.value.message
    one = TenantsInFlight({"acme": 1}, workers=4)
    await one.enter("acme")  # at least one each


async def test_a_reload_changes_the_cap_and_the_requests_counted_carry_on() -> None:
    counts = TenantsInFlight({"acme": 1})
    await counts.enter("acme")
    counts.set_caps({"acme": 2})
    await counts.enter("acme")
    counts.set_caps({"acme": None})
    assert "acme" not in counts.caps
    counts.leave("acme")  # counted before the reload: still given back
    counts.leave("acme")
    assert counts.counts == {}


@pytest.fixture
async def processes(redis_namespace: str) -> AsyncIterator[Any]:
    """``processes(caps)``: a process's count sharing the namespace's Redis with the others."""
    made: list[SharedSlots] = []

    def make(caps: dict[str, int | None]) -> TenantsInFlight:
        shared = SharedSlots(redis_client(URL), redis_namespace)
        made.append(shared)
        counts = TenantsInFlight(caps, workers=4)  # the cap is not divided: it is one count
        counts.share(shared)
        return counts

    yield make
    for shared in made:
        await shared.close()


@pytest.mark.redis
async def test_processes_sharing_redis_count_a_tenants_requests_together(
    processes: Any, redis_namespace: str
) -> None:
    one, two = processes({"acme": 2, "beta": 1}), processes({"acme": 2, "beta": 1})
    await one.enter("acme")
    await two.enter("acme")
    with pytest.raises(ConcurrencyLimited) as refused:
        await one.enter("acme")
    assert "has 2 requests in flight (every gateway process together)" in refused.value.message
    await two.enter("beta")  # each tenant its own count
    key = f"sekisho:{redis_namespace}:slots:tenant:acme"
    client = redis_client(URL)
    try:
        members = await client.zrange(key, 0, -1)
        assert len(members) == 2
        two.leave("acme")  # kept for this process's next request of the tenant...
        await two.enter("acme")
        assert await client.zrange(key, 0, -1) == members  # ...with no Redis round trip
        two.leave("acme")
        shared = two.shared
        assert shared is not None
        while shared.parked("tenant:acme"):  # then given back to every process
            await asyncio.sleep(0.01)
        await one.enter("acme")
        assert await client.zcard(key) == 2
    finally:
        await client.aclose()


async def test_a_shared_count_with_redis_unreachable_refuses_with_503() -> None:
    counts = TenantsInFlight({"acme": 2})
    shared = SharedSlots(redis_client(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1), "x")
    counts.share(shared)
    try:
        with pytest.raises(ServiceUnavailable) as refused:
            await counts.enter("acme")
        err = refused.value
        assert (err.status, err.code) == (503, "limits_unavailable")
        assert "cannot reach Redis to count tenant 'acme'" in err.message
        assert err.headers == {"retry-after": "1"}
    finally:
        await shared.close()
