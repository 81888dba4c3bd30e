"""An endpoint's max_concurrency shared through Redis by every gateway process and instance.

Against the real Redis at 127.0.0.1:6379 (skipped, saying so, where none runs): the slots
themselves, the wait for a slot held by another process, leases that end when their process
dies, and real `sekisho serve` instances in front of one simulator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from harness import demo_sim_specs, free_port, request, start_example
from sekisho.identity.limits import redis_client
from sekisho.routing.health import EndpointHealth
from sekisho.routing.slots import SharedSlots, SlotsUnavailable
from serve_process import ServeProcess, Simulators, write_config

URL = "redis://127.0.0.1:6379/0"
pytestmark = pytest.mark.redis
EP = "sim-domestic-tokyo"


@pytest.fixture
def namespace(redis_namespace: str) -> str:
    """A fresh Redis key namespace (tests/conftest.py), skipped where no Redis runs."""
    return redis_namespace


@pytest.fixture
async def slots(namespace: str) -> AsyncIterator[Any]:
    """Three processes' views of the same slots (each with its own client and owner id)."""
    made: list[SharedSlots] = []

    def make(lease: float = 30.0) -> SharedSlots:
        s = SharedSlots(redis_client(URL), namespace, lease_seconds=lease)
        made.append(s)
        return s

    made_fn: Any = make
    yield made_fn
    for s in made:
        await s.close()


async def in_use(namespace: str, endpoint: str = EP) -> int:
    client = redis_client(URL)
    try:
        return int(await client.zcard(f"sekisho:{namespace}:slots:{endpoint}"))
    finally:
        await client.aclose()


async def test_processes_together_never_hold_more_than_the_cap(slots: Any, namespace: str) -> None:
    a, b, c = slots(), slots(), slots()
    got = await asyncio.gather(*(s.try_take(EP, 3) for s in (a, b, c) for _ in range(10)))
    assert sum(got) == 3
    assert a.held(EP) + b.held(EP) + c.held(EP) == 3
    assert await in_use(namespace) == 3
    assert not await c.try_take(EP, 3)
    holder = next(s for s in (a, b, c) if s.held(EP))
    holder.give_back(EP)
    await asyncio.sleep(0.05)  # given back in the background
    assert await in_use(namespace) == 2
    assert await c.try_take(EP, 3)


async def test_a_dead_processs_slots_come_free_when_their_lease_ends(
    slots: Any, namespace: str
) -> None:
    dead, alive = slots(lease=1.0), slots()
    assert await dead.try_take(EP, 1)
    assert dead._renewer is not None
    dead._renewer.cancel()  # the process died: nobody renews or gives back its slot
    dead._held.clear()
    assert not await alive.try_take(EP, 1)
    await asyncio.sleep(1.2)
    assert await alive.try_take(EP, 1)


async def test_a_live_process_keeps_its_slots_past_the_lease_by_renewing_them(
    slots: Any,
) -> None:
    holder, other = slots(lease=1.0), slots()
    assert await holder.try_take(EP, 1)
    await asyncio.sleep(2.5)  # two and a half leases; renewed every third of one
    assert not await other.try_take(EP, 1)
    holder.give_back(EP)
    await asyncio.sleep(0.05)
    assert await other.try_take(EP, 1)


async def test_a_take_cancelled_midway_leaves_no_slot_taken(slots: Any, namespace: str) -> None:
    s = slots()
    for spins in range(12):  # cancel at a different point each time
        task = asyncio.create_task(s.try_take(EP, 5))
        for _ in range(spins):
            await asyncio.sleep(0)
        task.cancel()
        try:
            if await task:
                s.give_back(EP)
        except asyncio.CancelledError:
            pass
    await asyncio.sleep(0.1)
    assert await in_use(namespace) == 0


async def test_a_slot_freed_in_another_process_goes_to_a_waiter_here(slots: Any) -> None:
    here = EndpointHealth(EP, slots())
    there = EndpointHealth(EP, slots())
    assert await there.take(1, 1.0, "t")
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiting = asyncio.create_task(here.take(1, 3.0, "t"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    there.release("t")
    assert await waiting
    # 0.2 s held, parked 50 ms by its process, then found within the poll's backoff
    assert loop.time() - started < 1.0
    assert (here.in_flight, there.in_flight) == (1, 0)


async def test_a_waiter_gives_up_after_its_timeout_and_stops_asking(slots: Any) -> None:
    here = EndpointHealth(EP, slots())
    there = EndpointHealth(EP, slots())
    assert await there.take(1, 1.0, "t")
    assert not await here.take(1, 0.2, "t")
    await asyncio.sleep(0.1)
    assert here.poller is not None and here.poller.done()
    assert here.in_flight == 0


async def test_a_slot_released_here_passes_to_a_local_waiter_without_redis(
    slots: Any, namespace: str
) -> None:
    s = slots()
    st = EndpointHealth(EP, s)
    assert await st.take(1, 1.0, "t")
    waiting = asyncio.create_task(st.take(1, 2.0, "t"))
    await asyncio.sleep(0.05)
    st.release("t")
    assert await waiting
    assert s.held(EP) == 1 and await in_use(namespace) == 1  # the same slot, handed over
    st.release("t")
    await asyncio.sleep(0.2)
    assert s.held(EP) == s.parked(EP) == 0 and await in_use(namespace) == 0


async def test_a_slot_freed_elsewhere_goes_to_the_waiting_tenant_holding_fewest_here(
    slots: Any,
) -> None:
    """Within a process the shared cap is fair too: a slot its poller takes in Redis goes to
    the waiting tenant holding the fewest of the endpoint's slots here, not to the oldest
    waiter."""
    here = EndpointHealth(EP, slots())
    there = EndpointHealth(EP, slots())
    assert await here.take(2, 1.0, "agency-a")
    assert await there.take(2, 1.0, "agency-x")
    a = asyncio.create_task(here.take(2, 3.0, "agency-a"))
    while here.waiting < 1:  # once Redis said the endpoint is full
        await asyncio.sleep(0.005)
    b = asyncio.create_task(here.take(2, 3.0, "agency-b"))
    await asyncio.sleep(0)
    assert here.waiting == 2
    there.release("agency-x")
    assert await b
    assert not a.done() and here.held == {"agency-a": 1, "agency-b": 1}
    here.release("agency-a")  # handed over here, no Redis: A's own waiter
    assert await a
    assert here.in_flight == 2 and here.held == {"agency-a": 1, "agency-b": 1}


async def members(namespace: str) -> list[bytes]:
    client = redis_client(URL)
    try:
        return list(await client.zrange(f"sekisho:{namespace}:slots:{EP}", 0, -1))
    finally:
        await client.aclose()


async def test_a_slot_nobody_here_uses_is_reused_within_50_ms_then_given_back(
    slots: Any, namespace: str
) -> None:
    """Back-to-back requests reuse the slot their process parked (no Redis round trip: the
    same member stays in the set); one idle for longer than 50 ms goes back to everyone."""
    s = slots()
    st = EndpointHealth(EP, s)
    assert await st.take(2, 1.0, "t")
    first = await members(namespace)
    st.release("t")
    assert s.parked(EP) == 1 and await members(namespace) == first  # still held, parked
    for _ in range(20):  # back to back: a reuse never yields to the loop (nor its sweeper)
        assert await st.take(2, 1.0, "t")
        st.release("t")
    assert await members(namespace) == first  # the one slot, reused all along
    other = SharedSlots(redis_client(URL), namespace)
    try:
        assert await other.try_take(EP, 2)  # the cap counts the parked slot: one left
        assert not await other.try_take(EP, 2)
        await asyncio.sleep(0.2)  # parked longer than 50 ms: given back
        assert s.parked(EP) == 0
        assert await other.try_take(EP, 2)
    finally:
        await other.close()


async def test_an_unreachable_redis_is_a_clear_refusal() -> None:
    s = SharedSlots(redis_client(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1), "x")
    try:
        with pytest.raises(SlotsUnavailable) as e:
            await s.try_take(EP, 2)
        assert e.value.status == 503
        assert "cannot reach Redis" in e.value.message and EP in e.value.message
    finally:
        await s.close()


def test_an_endpoint_seen_full_is_tried_last_but_only_while_that_is_recent() -> None:
    import time

    from harness import EXAMPLE
    from sekisho.config import parse_config
    from sekisho.routing import Health, Selector

    config = parse_config(EXAMPLE.read_text(encoding="utf-8"), "sekisho.yaml")
    routes = config.catalogue.routes("gpt-4o")
    assert len(routes) >= 2
    full = routes[0].endpoint
    object.__setattr__(full, "max_concurrency", 2)
    health = Health()
    shared = SharedSlots(redis_client(URL), "x")
    health.share_slots(shared)
    selector = Selector(health)
    shared._in_use[full.id] = (2, time.monotonic())
    assert all(selector.plan(routes, 9)[-1].endpoint.id == full.id for _ in range(20))
    shared._in_use[full.id] = (2, time.monotonic() - 1.5)  # seen full, but 1.5 s ago
    firsts = {selector.plan(routes, 9)[0].endpoint.id for _ in range(200)}
    assert full.id in firsts


# -- real gateways ------------------------------------------------------------------------


def _capped(namespace: str | None, cap: int) -> Any:
    def mutate(raw: dict[str, Any]) -> None:
        for ep in raw["endpoints"]:
            ep["max_concurrency"] = cap
            ep["timeouts"] = {"connect": 10, "first_byte": 10, "total": 20}
        if namespace is not None:
            raw["redis"] = URL
            raw.setdefault("limits", {})["namespace"] = namespace

    return mutate


BODY = {"model": "llama-3.1-swallow-70b", "messages": [{"role": "user", "content": "x"}]}


def _load(gateways: list[ServeProcess], n: int) -> set[int]:
    keys = [g.key("demo") for g in gateways]

    def one(i: int) -> int:
        g, key = gateways[i % len(gateways)], keys[i % len(gateways)]
        headers = {"authorization": f"Bearer {key}"}
        r = request(
            "POST", f"{g.base_url}/chat/completions", json_body=BODY, headers=headers, timeout=30
        )
        return r.status_code

    with ThreadPoolExecutor(12) as pool:
        return set(pool.map(one, range(n)))


@pytest.mark.slow
def test_two_gateway_instances_share_one_cap(tmp_path: Path, namespace: str) -> None:
    """Two `sekisho serve` instances (own data directories, as two containers) in front of one
    endpoint with max_concurrency 2: with redis: the endpoint never has more than 2 in flight.
    Without it, each instance holds the whole cap (the control: more than 2)."""
    sims = Simulators(demo_sim_specs(delay_ms=200)).start()
    tokyo = sims.sims[EP].stats
    try:
        for shared in (False, True):
            raw = sims.config(_capped(namespace if shared else None, 2))
            gateways = [
                ServeProcess(
                    write_config(tmp_path / f"{shared}-{i}.yaml", raw), tmp_path / f"{shared}-{i}"
                )
                for i in range(2)
            ]
            try:
                for g in gateways:
                    g.start()
                tokyo.max_in_flight = 0
                assert _load(gateways, 24) == {200}
                if shared:
                    assert tokyo.max_in_flight == 2
                else:
                    assert tokyo.max_in_flight > 2
            finally:
                for g in gateways:
                    g.stop()
    finally:
        sims.stop()


@pytest.mark.slow
def test_workers_sharing_redis_hold_a_cap_smaller_than_their_number(
    tmp_path: Path, namespace: str
) -> None:
    """--workers 3 with max_concurrency 2: without Redis each worker must hold at least one
    slot (3 in all); with it the endpoint never has more than 2 in flight."""
    sims = Simulators(demo_sim_specs(delay_ms=200)).start()
    raw = sims.config(_capped(namespace, 2))
    g = ServeProcess(write_config(tmp_path / "sekisho.yaml", raw), tmp_path / "data", workers=3)
    try:
        g.start()
        assert _load([g], 24) == {200}
        assert sims.sims[EP].stats.max_in_flight == 2
    finally:
        g.stop()
        sims.stop()


def test_a_capped_endpoint_with_redis_down_is_refused_with_503_and_nothing_is_sent(
    tmp_path: Path,
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"

    def mutate(raw: dict[str, Any]) -> None:
        _capped(None, 2)(raw)
        raw["redis"] = dead
        raw.pop("limits", None)  # no rate limits: the slot is the only thing Redis is asked
        for tenant in raw["tenants"].values():
            tenant.pop("limits", None)

    h = start_example(tmp_path, mutate)
    try:
        key = h.key()
        r = request(
            "POST",
            f"{h.base_url}/chat/completions",
            json_body=BODY,
            headers={"authorization": f"Bearer {key}"},
        )
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "slots_unavailable"
        assert "cannot reach Redis" in err["message"]
        assert r.headers["retry-after"] == "1"
        assert sum(s.stats.requests for s in h.sims.values()) == 0
        # /readyz says so, and stays ready: every instance shares that Redis.
        ready = request("GET", f"{h.root}/readyz")
        assert ready.status_code == 200
        assert ready.json()["redis"]["ok"] is False
        assert "Error" in ready.json()["redis"]["error"]
    finally:
        h.stop()


def test_readyz_reports_a_reachable_redis(tmp_path: Path, namespace: str) -> None:
    h = start_example(tmp_path, _capped(namespace, 2))
    try:
        ready = request("GET", f"{h.root}/readyz")
        assert ready.status_code == 200 and ready.json()["redis"] == {"ok": True}
    finally:
        h.stop()


def test_a_redis_that_stops_answering_is_503_for_limited_requests_within_seconds(
    tmp_path: Path,
) -> None:
    """A paused Redis (SIGSTOP, a host gone quiet) accepts connections and answers nothing:
    every rate-limited request waited on it for ever (a 200 s client got nothing), and so did
    shutdown. It is an error within 2 s, as a refused connection is."""
    import socket
    import threading

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    held: list[socket.socket] = []

    def swallow() -> None:  # accept, read, never answer
        while True:
            try:
                conn, _ = hole.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=swallow, daemon=True).start()

    def mutate(raw: dict[str, Any]) -> None:
        raw["redis"] = f"redis://127.0.0.1:{hole.getsockname()[1]}/0"  # demo keeps its limits

    h = start_example(tmp_path, mutate)
    try:
        started = time.monotonic()
        r = request(
            "POST",
            f"{h.base_url}/chat/completions",
            json_body=BODY,
            headers={"authorization": f"Bearer {h.key()}"},
            timeout=30,
        )
        took = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "limits_unavailable"
        assert took < 8
        assert sum(s.stats.requests for s in h.sims.values()) == 0
    finally:
        stopping = time.monotonic()
        h.stop()
        assert time.monotonic() - stopping < 15  # the usage flush gives up too
        hole.close()
        for conn in held:
            conn.close()
