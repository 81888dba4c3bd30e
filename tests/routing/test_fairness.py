"""Tenants sharing an endpoint's max_concurrency (公平性): a tenant's burst of slow streams
cannot queue ahead of every other tenant. When a slot frees, it goes to a waiting request of
the tenant holding the fewest of the endpoint's slots (first come, first served within a
tenant). The endpoint here streams until the test opens each request's gate, so who got the
slot is read from the order the requests reached it, not from timings."""

from __future__ import annotations

import copy
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


def shared_endpoint(upstream: GatedUpstream, cap: int, **limits: Any) -> dict[str, Any]:
    raw = example_config()
    raw["routing"]["health"]["probe_interval_seconds"] = 0
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
    """``agencies(cap, **agency_a_limits)`` starts the gateway; everything stops afterwards."""
    started: list[tuple[Harness, GatedUpstream, Tenants]] = []

    def start(cap: int, **limits: Any) -> Tenants:
        upstream = GatedUpstream().start()
        specs = {k: v for k, v in demo_sim_specs().items() if k != EP}
        h = Harness(shared_endpoint(upstream, cap, **limits), tmp_path, specs).start()
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
