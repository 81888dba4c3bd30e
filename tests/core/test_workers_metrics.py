"""With ``serve --workers N`` a scrape of /metrics counts the whole gateway, not the one worker
that happened to answer it."""

from __future__ import annotations

import http.client
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import demo_sim_specs, request
from sekisho.metrics import Metrics
from serve_process import ServeProcess, Simulators, write_config

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


def chat_total(metrics: str) -> float:
    """All answered chat requests, summed over endpoints and statuses."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("sekisho_requests_total{") and 'route="chat"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def gauge(metrics: str, name: str) -> list[str]:
    return [line for line in metrics.splitlines() if line.startswith(name)]


@pytest.mark.slow
def test_every_scrape_counts_the_requests_of_every_worker(tmp_path: Path) -> None:
    sims = Simulators(demo_sim_specs(delay_ms=30)).start()  # slow enough that requests overlap
    g = ServeProcess(write_config(tmp_path / "sekisho.yaml", sims.config()), tmp_path / "data",
                     workers=2)  # fmt: skip
    try:
        g.start()
        key = g.key("demo")
        sent = 0
        pids: set[int] = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:
            tag = f"m{sent}-"

            def one(i: int, tag: str = tag) -> int:
                headers = {"authorization": f"Bearer {key}", "x-request-id": f"{tag}{i}"}
                for attempt in range(3):
                    try:  # fresh connections, so that both workers accept some
                        r = request("POST", f"{g.base_url}/chat/completions", json_body=CHAT,
                                    headers=headers)  # fmt: skip
                        return r.status_code
                    except (ConnectionError, http.client.RemoteDisconnected):
                        if attempt == 2:
                            raise
                        time.sleep(0.1)
                raise AssertionError("unreachable")

            with ThreadPoolExecutor(8) as pool:
                assert set(pool.map(one, range(16))) == {200}
            sent += 16
            time.sleep(0.2)  # the log lines reach the file
            pids |= {
                x["pid"]
                for x in g.log()
                if str(x.get("client_request_id", "")).startswith("m") and "pid" in x
            }
        assert len(pids) == 2, "both workers must have answered for this test to mean anything"

        answered_by: set[str] = set()
        for _ in range(12):  # fresh connections: scrapes land on either worker
            r = request("GET", f"{g.root}/metrics")
            assert r.status_code == 200
            assert chat_total(r.text) == sent, r.text[:2000]
            (in_flight,) = gauge(r.text, "sekisho_in_flight_requests")
            assert float(in_flight.split()[-1]) == 0
            up = gauge(r.text, "sekisho_endpoint_up{")
            assert up and all(re.search(r'pid="\d+"', line) for line in up)
            answered_by |= {m.group(1) for line in up for m in [re.search(r'pid="(\d+)"', line)]
                            if m}  # fmt: skip
        assert len(answered_by) == 2, "every worker publishes its view of endpoint health"
    finally:
        g.stop()
        sims.stop()


def test_a_gone_workers_live_gauges_are_dropped_its_counters_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = 2**22 + 12345  # above pid_max's default: no such process
    for name in (f"gauge_livesum_{gone}.db", f"gauge_liveall_{gone}.db", f"counter_{gone}.db",
                 f"gauge_livesum_{os.getpid()}.db"):  # fmt: skip
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    Metrics().forget_dead_workers()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"counter_{gone}.db",
        f"gauge_livesum_{os.getpid()}.db",
    ]


def test_workers_share_an_endpoints_concurrency_cap_instead_of_each_holding_all_of_it(
    tmp_path: Path,
) -> None:
    """max_concurrency 2 with --workers 2: each worker holds one slot, so the endpoint never
    has more than 2 requests in flight from the gateway (before: 2 per worker, 4 in all)."""
    sims = Simulators(demo_sim_specs(delay_ms=200)).start()
    raw = sims.config()
    for ep in raw["endpoints"]:
        ep["max_concurrency"] = 2
        ep["timeouts"] = {"connect": 10, "first_byte": 10, "total": 20}
    g = ServeProcess(write_config(tmp_path / "sekisho.yaml", raw), tmp_path / "data", workers=2)
    try:
        g.start()
        key = g.key("demo")
        body = {"model": "llama-3.1-swallow-70b", "messages": [{"role": "user", "content": "x"}]}

        def one(i: int) -> int:
            headers = {"authorization": f"Bearer {key}"}
            r = request("POST", f"{g.base_url}/chat/completions", json_body=body, headers=headers)
            return r.status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, range(24))) == {200}
        tokyo = sims.sims["sim-domestic-tokyo"].stats  # the only endpoint serving that model
        assert tokyo.chat == 24
        assert tokyo.max_in_flight <= 2
    finally:
        g.stop()
        sims.stop()
