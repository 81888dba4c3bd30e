"""Tenants sharing an endpoint's max_concurrency (公平性): a tenant's burst of slow streams
cannot queue ahead of every other tenant. When a slot frees, it goes to a waiting request of
the tenant holding the fewest of the endpoint's slots (first come, first served within a
tenant); a tenant's max_concurrent_requests keeps it from holding every slot. The endpoint
here streams until the test opens each request's gate, so who got a slot is read from the
order the requests reached it, not from timings."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from gated_upstream import GatedUpstream
from harness import Harness, demo_sim_specs, example_config

EP = "sim-domestic-tokyo"
MODEL = "llama-3.1-swallow-70b"  # served by the domestic endpoint alone


class Tenants:
    """A gateway whose domestic endpoint (the gated one) two agencies share."""

    def __init__(self, h: Harness, upstream: GatedUpstream) -> None:
        self.h = h
        self.upstream = upstream
        self.keys = {t: h.key(t) for t in ("agency-a", "agency-b")}
        self.pool = ThreadPoolExecutor(16)

    def send(self, tenant: str, label: str) -> Future[str]:
        """Stream ``label`` as the tenant; the future holds what the stream said (or raises)."""
        client = openai.OpenAI(
            base_url=self.h.base_url, api_key=self.keys[tenant], max_retries=0, timeout=30
        )

        def stream() -> str:
            chunks = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": label}], stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        return self.pool.submit(stream)

    def waiting(self) -> int:
        async def read() -> int:
            return int(self.h.gateway.health.state(EP).waiting)

        return int(self.h.call(read()))

    def wait_until_waiting(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.waiting() != n:
            assert time.monotonic() < deadline, f"{self.waiting()} requests wait, not {n}"
            time.sleep(0.01)


def request_line(caplog: pytest.LogCaptureFixture, rid: str) -> logging.LogRecord:
    """The request's log line (written just after its answer went out)."""
    deadline = time.monotonic() + 10
    while True:
        found = [r for r in caplog.records if getattr(r, "request_id", None) == rid]
        if found:
            (line,) = found
            assert line.getMessage() == "request"
            return line
        assert time.monotonic() < deadline, "no log line"
        time.sleep(0.01)


def shared_endpoint(
    upstream: GatedUpstream, cap: int, redis: str | None, **limits: Any
) -> dict[str, Any]:
    raw = example_config()
    raw["routing"]["health"]["probe_interval_seconds"] = 0
    if redis is not None:  # a namespace of the Redis at 127.0.0.1:6379
        raw["redis"] = "redis://127.0.0.1:6379/0"
        raw["limits"] = {"namespace": redis}
    demo = raw["tenants"].pop("demo")
    for name in ("agency-a", "agency-b"):
        raw["tenants"][name] = copy.deepcopy(demo)
        raw["tenants"][name]["detection"]["output"] = {"action": "none", "types": []}
    raw["tenants"]["agency-a"]["limits"].update(limits)
    for ep in raw["endpoints"]:
        if ep["id"] == EP:
            ep["base_url"] = upstream.base_url
            ep["max_concurrency"] = cap
            # No request gives up waiting during a test: who gets a slot is the question.
            ep["timeouts"] = {"connect": 30, "first_byte": 30, "total": 60}
    return raw


@pytest.fixture
def agencies(tmp_path: Path) -> Iterator[Any]:
    """``agencies(cap, redis=None, **agency_a_limits)`` starts the gateway (sharing its counts
    in Redis under the namespace ``redis``); everything stops afterwards."""
    started: list[tuple[Harness, GatedUpstream, Tenants]] = []

    def start(cap: int, redis: str | None = None, **limits: Any) -> Tenants:
        upstream = GatedUpstream().start()
        specs = {k: v for k, v in demo_sim_specs().items() if k != EP}
        h = Harness(shared_endpoint(upstream, cap, redis, **limits), tmp_path, specs).start()
        tenants = Tenants(h, upstream)
        started.append((h, upstream, tenants))
        return tenants

    try:
        yield start
    finally:
        for h, upstream, tenants in started:
            upstream.open(*upstream.arrivals, *(f"a{i}" for i in range(10)), "b1", "b2")
            tenants.pool.shutdown(wait=True, cancel_futures=True)
            h.stop()
            upstream.stop()


def test_a_freed_slot_goes_to_the_tenant_holding_fewest_not_to_the_longest_queue(
    agencies: Any,
) -> None:
    """Agency A holds both slots and queues three more streams; agency B then asks once. The
    first slot to free goes to B, not to A's queue (which B used to wait behind until its
    connect timeout, and a 429 endpoints_busy)."""
    t = agencies(2)
    a = [t.send("agency-a", f"a{i}") for i in (1, 2)]
    t.upstream.wait_for_arrivals(2)
    a += [t.send("agency-a", f"a{i}") for i in (3, 4, 5)]
    t.wait_until_waiting(3)
    b = t.send("agency-b", "b1")
    t.wait_until_waiting(4)

    t.upstream.open("a1")
    assert t.upstream.wait_for_arrivals(3)[2] == "b1"
    # Each holds one now; A's next frees a slot and A holds none: its own queue goes on,
    # first come first served.
    t.upstream.open("a2")
    assert t.upstream.wait_for_arrivals(4)[3] == "a3"
    t.upstream.open("b1", "a3", "a4")
    assert t.upstream.wait_for_arrivals(6)[4:] == ["a4", "a5"]
    t.upstream.open("a5")
    assert b.result(10) == "done: b1"
    assert [f.result(10) for f in a] == [f"done: a{i}" for i in range(1, 6)]
    assert t.waiting() == 0


def test_with_one_tenant_waiting_the_order_is_still_first_come_first_served(
    agencies: Any,
) -> None:
    t = agencies(1)
    first = t.send("agency-a", "a1")
    t.upstream.wait_for_arrivals(1)
    later = []
    for i in (2, 3, 4):
        later.append(t.send("agency-a", f"a{i}"))
        t.wait_until_waiting(i - 1)
    for i in (1, 2, 3):
        t.upstream.open(f"a{i}")
        assert t.upstream.wait_for_arrivals(i + 1)[i] == f"a{i + 1}"
    t.upstream.open("a4")
    assert [f.result(10) for f in [first, *later]] == [f"done: a{i}" for i in (1, 2, 3, 4)]


def test_a_tenant_at_its_max_concurrent_requests_is_refused_at_once_and_others_keep_the_slots(
    agencies: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Agency A may have one request in flight: its second is refused at once (429 in
    OpenAI's shape, Retry-After, nothing sent) rather than wait for, or take, the endpoint's
    other slot, which B gets at once. The refusal's log line says who and why, as a rate
    limit's does; once A's stream ends, A may send again."""
    caplog.set_level(logging.INFO, logger="sekisho.app")
    t = agencies(2, max_concurrent_requests=1)
    a1 = t.send("agency-a", "a1")
    t.upstream.wait_for_arrivals(1)
    with pytest.raises(openai.RateLimitError) as refused:
        t.send("agency-a", "a2").result(10)
    resp = refused.value.response
    assert resp.headers["retry-after"] == "1"
    error = resp.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "tenant_concurrency_limit"
    assert (
        "Tenant 'agency-a' has 1 requests in flight (this gateway process), as many as its "
        "limit allows (tenants.agency-a.limits.max_concurrent_requests: 1)" in error["message"]
    )
    line = request_line(caplog, resp.headers["x-sekisho-request-id"])
    assert (line.status, line.error, line.tenant) == (429, "tenant_concurrency_limit", "agency-a")

    b1 = t.send("agency-b", "b1")
    assert t.upstream.wait_for_arrivals(2) == ["a1", "b1"]  # a2 never reached it
    t.upstream.open("a1", "b1", "a3")
    assert (a1.result(10), b1.result(10)) == ("done: a1", "done: b1")
    assert t.send("agency-a", "a3").result(10) == "done: a3"
    assert t.upstream.arrivals == ["a1", "b1", "a3"]


@pytest.mark.redis
def test_with_redis_a_tenants_requests_in_flight_are_counted_there(
    agencies: Any, redis_namespace: str
) -> None:
    """The gateway counts the capped tenant in the Redis its endpoints' slots are shared in,
    so every process and instance on it counts the same requests."""
    import redis

    t = agencies(2, redis=redis_namespace, max_concurrent_requests=1)
    a1 = t.send("agency-a", "a1")
    t.upstream.wait_for_arrivals(1)
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        assert client.zcard(f"sekisho:{redis_namespace}:slots:tenant:agency-a") == 1
    finally:
        client.close()
    with pytest.raises(openai.RateLimitError) as refused:
        t.send("agency-a", "a2").result(10)
    error = refused.value.response.json()["error"]
    assert error["code"] == "tenant_concurrency_limit"
    assert "has 1 requests in flight (every gateway process together)" in error["message"]
    b1 = t.send("agency-b", "b1")
    assert t.upstream.wait_for_arrivals(2) == ["a1", "b1"]
    t.upstream.open("a1", "b1")
    assert (a1.result(10), b1.result(10)) == ("done: a1", "done: b1")
