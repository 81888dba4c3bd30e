"""/metrics for what an SRE must see before it becomes an outage, or that was in the log only:
a durable writer falling behind (its queue, the time each batch commit takes), Redis
unreachable, the classifier failing closed, reloads refused, --workers workers dying."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import yaml
from prometheus_client.core import CounterMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from harness import Harness, demo_sim_specs, request, start_example
from sekisho.ledger.storage import NewEntry
from sekisho.metrics import MULTIPROC_ENV, Metrics
from serve_process import ServeProcess, Simulators, write_config
from tcp_proxy import TcpProxy

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def scrape(root: str) -> str:
    r = request("GET", f"{root}/metrics")
    assert r.status_code == 200
    return str(r.text)


def chat(h: Harness | ServeProcess, key: str, content: str = "hello") -> int:
    body = {**CHAT, "messages": [{"role": "user", "content": content}]}
    r = request("POST", f"{h.base_url}/chat/completions", json_body=body,
                headers={"authorization": f"Bearer {key}"})  # fmt: skip
    return int(r.status_code)


def until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- the durable writers ----------------------------------------------------------------------


def long_deadline(raw: dict[str, Any]) -> None:
    raw["ledger"] = {"deadline_ms": 10_000}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = start_example(tmp_path_factory.mktemp("opmetrics"), long_deadline, config_path=None)
    yield h
    h.stop()


def test_a_slow_ledger_shows_as_entries_waiting_and_a_slow_commit_before_any_refusal(
    gw: Harness,
) -> None:
    """The ledger's storage takes 1.5 s for a commit, well within its deadline: nothing is
    refused and /readyz stays 200, but /metrics shows the entry waiting while it commits, and
    the commit's time, so that an alert can fire before the deadline is reached."""
    ledger = gw.gateway.ledger
    original = ledger.storage.sequence
    release = threading.Event()
    stuck = threading.Event()

    def slow(entries: list[NewEntry]) -> int:
        if any(e.kind == "decision" for e in entries):
            stuck.set()
            release.wait(10)
        return int(original(entries))

    key = gw.key()
    before = scrape(gw.root)
    commits = value(before, "sekisho_writer_commit_seconds_count", writer="ledger", region="")
    refused = value(before, "sekisho_ledger_refusals_total", reason="deadline")
    assert value(before, "sekisho_writer_queue", writer="ledger", region="") == 0
    ledger.storage.sequence = slow
    answered: list[int] = []
    asking = threading.Thread(target=lambda: answered.append(chat(gw, key)))
    try:
        asking.start()
        assert stuck.wait(10)
        time.sleep(1.5)
        during = scrape(gw.root)
        assert value(during, "sekisho_writer_queue", writer="ledger", region="") == 1
        assert value(during, "sekisho_writer_up", writer="ledger", region="") == 1
    finally:
        release.set()
        asking.join(15)
        ledger.storage.sequence = original
    assert answered == [200]
    after = scrape(gw.root)
    assert value(after, "sekisho_writer_queue", writer="ledger", region="") == 0
    count = value(after, "sekisho_writer_commit_seconds_count", writer="ledger", region="")
    assert count is not None and count > (commits or 0)
    # The slow commit is in the histogram, above one second.
    fast = value(after, "sekisho_writer_commit_seconds_bucket", writer="ledger", region="",
                 le="1.0")  # fmt: skip
    assert fast is not None and fast < count
    # None refused meanwhile (the counter may hold earlier gateways' refusals in this process).
    assert value(after, "sekisho_ledger_refusals_total", reason="deadline") == refused


def test_each_store_batch_is_observed_with_its_size(gw: Harness) -> None:
    key = gw.key()
    before = scrape(gw.root)
    n = value(before, "sekisho_writer_batch_entries_sum", writer="store", region="jp") or 0
    assert chat(gw, key) == 200
    after = scrape(gw.root)
    assert value(after, "sekisho_writer_batch_entries_sum", writer="store", region="jp") == n + 1
    assert (value(after, "sekisho_writer_commit_seconds_count", writer="store", region="jp")
            or 0) >= 1  # fmt: skip
    assert value(after, "sekisho_writer_queue", writer="store", region="jp") == 0
    # The ledger's batches too: a request's decision and outcome entries at least.
    entries = value(after, "sekisho_writer_batch_entries_sum", writer="ledger", region="")
    assert entries is not None and entries >= 2


# -- the classifier ------------------------------------------------------------------------------


class Broken:
    scanner = None

    def scan(self, text: str) -> list[Any]:
        raise RuntimeError("a detector's defect")


def test_a_classifier_failure_is_counted_per_tenant_and_reason(gw: Harness) -> None:
    key = gw.key()
    pipeline = gw.gateway.pipeline
    before = value(scrape(gw.root), "sekisho_classifier_failures_total", tenant="demo",
                   reason="error") or 0  # fmt: skip
    memo = pipeline._memo
    pipeline._memo = lambda tenant: Broken()
    try:
        chat(gw, key)  # restricted: refused or sent where restricted may go
    finally:
        pipeline._memo = memo
    text = scrape(gw.root)
    assert value(text, "sekisho_classifier_failures_total", tenant="demo",
                 reason="error") == before + 1  # fmt: skip
    assert value(text, "sekisho_classified_requests_total", tenant="demo", level="restricted")


def test_a_text_too_dense_with_names_is_counted_as_a_classifier_failure(gw: Harness) -> None:
    key = gw.key()
    chat(gw, key, "マイナンバー 123456789018 " + "田中様、" * 20_500)
    text = scrape(gw.root)
    assert (value(text, "sekisho_classifier_failures_total", tenant="demo",
                  reason="too_many_names") or 0) >= 1  # fmt: skip


# -- reloads -----------------------------------------------------------------------------------


def test_reloads_are_counted_applied_and_refused(tmp_path: Path) -> None:
    config = tmp_path / "sekisho.yaml"
    h = start_example(tmp_path / "data", config_path=config)
    try:
        admin = h.key("demo", role="admin")

        def reload() -> int:
            r = request("POST", f"{h.root}/admin/v1/policy/reload",
                        headers={"authorization": f"Bearer {admin}"})  # fmt: skip
            return int(r.status_code)

        assert reload() == 200
        raw = yaml.safe_load(config.read_text(encoding="utf-8"))
        policy = raw["tenants"]["demo"]["policy"]
        policy["prefr"] = policy.pop("prefer")
        config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
        assert reload() == 400
        text = scrape(h.root)
        assert value(text, "sekisho_reloads_total", result="ok") == 1
        assert value(text, "sekisho_reloads_total", result="refused") == 1
    finally:
        h.stop()


# -- Redis ---------------------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_up_follows_whether_redis_answers(tmp_path: Path) -> None:
    try:
        redis_sync.Redis(host="127.0.0.1", port=6379, socket_timeout=1).ping()
    except redis_sync.exceptions.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    relay = TcpProxy(("127.0.0.1", 6379)).start()
    namespace = f"metrics2-{os.getpid()}"

    def shared(raw: dict[str, Any]) -> None:
        raw["redis"] = f"redis://127.0.0.1:{relay.port}/0"
        raw.setdefault("limits", {})["namespace"] = namespace

    h = start_example(tmp_path, shared)
    try:
        assert value(scrape(h.root), "sekisho_redis_up") == 1
        relay.stop()
        assert value(scrape(h.root), "sekisho_redis_up") == 0
    finally:
        h.stop()
        relay.stop()
        client = redis_sync.Redis(host="127.0.0.1", port=6379)
        for k in client.scan_iter(f"sekisho:{namespace}:*"):
            client.delete(k)


def test_without_redis_there_is_no_redis_series(gw: Harness) -> None:
    """A 0 would claim that a Redis nobody configured is down."""
    assert "sekisho_redis_up" not in scrape(gw.root)


# -- the --workers supervisor --------------------------------------------------------------------


class _Workers:
    """What prometheus_client's multiprocess collector reads from the workers' files."""

    def __init__(self, refused: int) -> None:
        self.refused = refused

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("sekisho_reloads", "reloads", labels=["result"])
        family.add_metric(["refused"], self.refused)
        yield family


def test_the_supervisors_counts_join_the_workers_in_a_scrape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reloads the supervisor judged add to those a worker refused before asking it; its
    count of dead workers is a counter of its own, 0 until one dies."""
    from sekisho.metrics import SUPERVISOR_COUNTS, _WithSupervisor, write_supervisor_counts

    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    metrics = Metrics()
    assert value(metrics.exposition().decode(), "sekisho_worker_deaths_total") == 0
    write_supervisor_counts(tmp_path, 2, {"ok": 3, "refused": 1})
    text = metrics.exposition().decode()
    assert value(text, "sekisho_worker_deaths_total") == 2
    assert value(text, "sekisho_reloads_total", result="ok") == 3
    assert value(text, "sekisho_reloads_total", result="refused") == 1

    merged = _WithSupervisor(_Workers(refused=2), tmp_path / SUPERVISOR_COUNTS)
    got = {(s.name, s.labels.get("result")): s.value for f in merged.collect() for s in f.samples}
    assert got[("sekisho_reloads_total", "refused")] == 3
    assert got[("sekisho_reloads_total", "ok")] == 3
    assert got[("sekisho_worker_deaths_total", None)] == 2
    (tmp_path / SUPERVISOR_COUNTS).write_text("{", encoding="utf-8")  # never half-read, but
    assert value(metrics.exposition().decode(), "sekisho_worker_deaths_total") == 0


def worker_pids(g: ServeProcess) -> set[int]:
    assert g.proc is not None
    pid = g.proc.pid
    out = set()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.add(int(child))
        except OSError:
            continue
    return out


@pytest.mark.slow
def test_with_two_workers_a_dead_worker_and_a_refused_reload_are_on_metrics(
    tmp_path: Path,
) -> None:
    sims = Simulators(demo_sim_specs()).start()
    config = write_config(tmp_path / "sekisho.yaml", sims.config())
    g = ServeProcess(config, tmp_path / "data", workers=2)
    try:
        g.start()
        assert value(scrape(g.root), "sekisho_worker_deaths_total") == 0
        victim = min(worker_pids(g))
        os.kill(victim, signal.SIGKILL)
        until(lambda: value(scrape(g.root), "sekisho_worker_deaths_total") == 1, 30)

        raw = yaml.safe_load(config.read_text(encoding="utf-8"))
        policy = raw["tenants"]["demo"]["policy"]
        policy["prefr"] = policy.pop("prefer")
        config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
        g.signal(signal.SIGHUP)
        until(lambda: value(scrape(g.root), "sekisho_reloads_total", result="refused") == 1, 30)
    finally:
        g.stop()
        sims.stop()
