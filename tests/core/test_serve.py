"""`sekisho serve` as operators run it: a subprocess with flags, serving through simulators on
loopback; its health, readiness, metrics and logs; graceful shutdown; bad upstreams and configs."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness import demo_sim_specs, example_config, free_port, request
from serve_process import ServeProcess, Simulators, write_config

DEAD_MODEL = "gpt-unreachable"


def with_dead_endpoints(raw: dict[str, Any]) -> None:
    """Two domestic endpoints for one model, where nothing listens."""
    template = raw["endpoints"][0]
    for name in ("dead-osaka", "dead-sapporo"):
        ep = {k: v for k, v in template.items() if k not in ("models", "id", "base_url")}
        ep.update(
            id=name,
            base_url=f"http://127.0.0.1:{free_port()}/v1",
            models=[{"id": DEAD_MODEL}],
            timeouts={"connect": 1, "first_byte": 2, "total": 5},
        )
        raw["endpoints"].append(ep)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, Simulators]]:
    """One `sekisho serve` for the module: config port and data_dir overridden by flags."""
    tmp = tmp_path_factory.mktemp("serve")
    sims = Simulators().start()

    def mutate(raw: dict[str, Any]) -> None:
        raw["server"]["port"] = 1  # never used: --port wins
        raw["server"]["data_dir"] = str(tmp / "data-from-config")  # never used: --data-dir wins
        with_dead_endpoints(raw)
        raw["server"]["keep_alive_seconds"] = 1.5

    config = write_config(tmp / "sekisho.yaml", sims.config(mutate))
    g = ServeProcess(config, tmp / "data")
    try:
        g.start()
        yield g, sims
    finally:
        g.stop()
        sims.stop()


def client(g: ServeProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0, timeout=20)


def test_a_refused_request_is_logged_with_who_asked(
    served: tuple[ServeProcess, Simulators],
) -> None:
    """Refusals were logged without tenant and key: the first thing a SOC looks for."""
    g, _ = served
    c = client(g, g.key())
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(
            model="no-such-model",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": "trace-refused-1"},
        )
    deadline = time.monotonic() + 5
    while True:
        found = [x for x in g.log() if x.get("client_request_id") == "trace-refused-1"]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert found, "no log line for the refused request"
    line = found[0]
    assert line["status"] == 404 and line["error"] == "model_not_found"
    assert line["tenant"] == "demo" and line["key_id"] and line["client"] == "127.0.0.1"


def test_an_idle_connection_is_kept_for_keep_alive_seconds_then_closed(
    served: tuple[ServeProcess, Simulators],
) -> None:
    """server.keep_alive_seconds (1.5 here; behind a load balancer, above its idle timeout)."""
    g, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read()
    time.sleep(0.8)  # idle, but within the time: the same connection serves again
    conn.request("GET", "/healthz")
    assert conn.getresponse().read()
    sock = conn.sock
    assert sock is not None
    started = time.monotonic()
    assert sock.recv(1) == b""  # the gateway closes it once it has been idle that long
    assert 1.0 < time.monotonic() - started < 4


def test_flags_choose_the_port_and_the_data_directory(
    served: tuple[ServeProcess, Simulators],
) -> None:
    g, _ = served
    completion = client(g, g.key()).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello"}]
    )
    assert completion.choices[0].message.content
    assert (g.data_dir / "identity.db").exists()
    assert (g.data_dir / "keys" / "ledger.key").exists()
    assert not (g.data_dir.parent / "data-from-config").exists()


@pytest.mark.parametrize("blocker", ["a file where a directory is needed", "a read-only disk"])
def test_an_unusable_data_directory_stops_start_up_with_its_path_and_reason(
    tmp_path: Path, blocker: str
) -> None:
    if blocker == "a read-only disk":
        disk = tmp_path / "ro"
        disk.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(disk)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.strip()}")
        data_dir, reason = disk, "Read-only file system"
    else:
        (tmp_path / "file").write_text("not a directory")
        data_dir, reason = tmp_path / "file" / "data", "Not a directory"
    config = write_config(tmp_path / "sekisho.yaml", example_config())
    try:
        for argv in (
            ["serve", "--config", str(config), "--data-dir", str(data_dir)],
            ["keys", "create", "--tenant", "demo", "--data-dir", str(data_dir)],
        ):
            done = subprocess.run(
                [sys.executable, "-m", "sekisho", *argv],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode in (1, 2), done.stderr
            assert "Traceback" not in done.stderr
            assert str(data_dir) in done.stderr and reason in done.stderr
    finally:
        if blocker == "a read-only disk":
            subprocess.run(["umount", "-l", str(data_dir)], check=False)


@pytest.mark.parametrize(
    ("file", "what"), [("identity.db", "the API key store"), ("usage.db", "the usage counters")]
)
def test_a_damaged_state_file_stops_start_up_naming_it_and_is_left_as_it_was(
    tmp_path: Path, file: str, what: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    damaged = bytes(range(256)) * 20
    (data_dir / file).write_bytes(damaged)
    (data_dir / file).chmod(0o600)  # restored privately (a 0644 file is refused before)
    config = write_config(tmp_path / "sekisho.yaml", example_config())
    done = subprocess.run(
        [sys.executable, "-m", "sekisho", "serve", "--config", str(config),
         "--data-dir", str(data_dir), "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert f"cannot use {what} at {data_dir / file}: file is not a database" in done.stderr
    assert (data_dir / file).read_bytes() == damaged  # evidence kept for whoever restores it


def test_healthz_and_readyz(served: tuple[ServeProcess, Simulators]) -> None:
    g, _ = served
    health = request("GET", f"{g.root}/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = request("GET", f"{g.root}/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert set(body["endpoints"]) >= {"sim-domestic-tokyo", "sim-global-japaneast"}


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_metrics_count_requests_latency_tokens_and_upstream_errors_by_endpoint_and_jurisdiction(
    served: tuple[ServeProcess, Simulators],
) -> None:
    g, _ = served
    c = client(g, g.key())
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "count me"}]
    )
    usage = raw.parse().usage
    endpoint, jurisdiction = (
        raw.headers["x-sekisho-endpoint"],
        raw.headers["x-sekisho-jurisdiction"],
    )
    with pytest.raises(openai.APIStatusError):
        c.chat.completions.create(model=DEAD_MODEL, messages=[{"role": "user", "content": "x"}])
    streamed = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "stream me"}], stream=True
    )
    stream_endpoint = streamed.headers["x-sekisho-endpoint"]
    assert list(streamed.parse())

    r = request("GET", f"{g.root}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = _samples(r.text)

    requests = samples["sekisho_requests_total"]
    assert any(
        labels == {"route": "chat", "status": "200", "endpoint": endpoint,
                   "jurisdiction": jurisdiction} and value >= 1
        for labels, value in requests
    ), requests  # fmt: skip
    assert any(lb["status"] == "502" and lb["route"] == "chat" for lb, _ in requests)
    counts = samples["sekisho_request_duration_seconds_count"]
    assert any(lb["endpoint"] == endpoint and v >= 1 for lb, v in counts)
    buckets = [lb["le"] for lb, _ in samples["sekisho_request_duration_seconds_bucket"]]
    assert "+Inf" in buckets and len(set(buckets)) > 5
    tokens = {
        lb["direction"]: v
        for lb, v in samples["sekisho_tokens_total"]
        if lb["endpoint"] == endpoint
    }
    assert usage is not None
    assert (
        tokens["prompt"] >= usage.prompt_tokens and tokens["completion"] >= usage.completion_tokens
    )
    errors = samples["sekisho_upstream_errors_total"]
    assert {lb["endpoint"] for lb, v in errors if v >= 1} >= {"dead-osaka", "dead-sapporo"}
    assert all("jurisdiction" in lb for lb, _ in errors)
    # The model's own share of the latency, apart from the gateway's, and streams' TTFT.
    upstream = samples["sekisho_upstream_latency_seconds_count"]
    assert any(lb["endpoint"] == endpoint and lb["mode"] == "answer" and v >= 1
               for lb, v in upstream), upstream  # fmt: skip
    assert any(lb["endpoint"] == stream_endpoint and lb["mode"] == "first_event" and v >= 1
               for lb, v in upstream), upstream  # fmt: skip
    upstream_sum = sum(v for lb, v in samples["sekisho_upstream_latency_seconds_sum"])
    total_sum = sum(v for lb, v in samples["sekisho_request_duration_seconds_sum"])
    assert 0 < upstream_sum < total_sum
    ttft = samples["sekisho_time_to_first_token_seconds_count"]
    assert any(lb["endpoint"] == stream_endpoint and v >= 1 for lb, v in ttft), ttft


def test_the_in_flight_gauge_counts_the_requests_being_served(
    served: tuple[ServeProcess, Simulators],
) -> None:
    g, sims = served

    def in_flight() -> float:
        r = request("GET", f"{g.root}/metrics")
        return _samples(r.text)["sekisho_in_flight_requests"][0][1]

    assert in_flight() == 0
    for sim in sims.sims.values():
        sim.spec.delay_ms = 1500  # every simulator answers, 1.5 s late
    try:
        c = client(g, g.key())
        slow = threading.Thread(
            target=lambda: c.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "take your time"}]
            )
        )
        slow.start()
        seen = 0.0
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline and seen == 0:
            seen = in_flight()
            time.sleep(0.05)
        slow.join(10)
        assert seen == 1
        assert in_flight() == 0
    finally:
        for sim in sims.sims.values():
            sim.spec.delay_ms = 0.0


def test_every_log_line_is_json_and_each_request_is_logged_with_its_request_id(
    served: tuple[ServeProcess, Simulators],
) -> None:
    g, _ = served
    c = client(g, g.key())
    usages = []
    for i in range(3):
        answer = c.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "log me"}],
            extra_headers={"x-request-id": f"trace-log-{i}"},
            stream=i == 2,
            stream_options={"include_usage": True} if i == 2 else openai.NOT_GIVEN,
        )
        usages.append(answer.usage if i < 2 else list(answer)[-1].usage)
    deadline = time.monotonic() + 5
    while True:
        lines = g.log()  # fails if any line of stderr is not JSON
        logged = {x.get("client_request_id"): x for x in lines if x.get("msg") == "request"}
        if all(f"trace-log-{i}" in logged for i in range(3)) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for i in range(3):
        line = logged[f"trace-log-{i}"]
        assert line["status"] == 200 and line["tenant"] == "demo"
        assert line["endpoint"] in (
            "sim-domestic-tokyo",
            "sim-global-japaneast",
            "sim-global-useast",
        )
        assert {"ts", "level", "logger", "ms", "key_id", "pid"} <= set(line)
        assert line["upstream_request_id"].startswith("simreq_")  # the endpoint's own id
        assert line["client"] == "127.0.0.1"  # who sent it (no trusted proxy in between)
        # What it cost, streamed or not: the model used and its tokens, for chargeback.
        assert line["model"] in ("gpt-4o", "llama-3.1-swallow-70b")
        assert line["prompt_tokens"] == usages[i].prompt_tokens > 0
        assert line["completion_tokens"] == usages[i].completion_tokens > 0
    assert all(isinstance(x.get("msg"), str) and "level" in x for x in lines)
    assert all("request_id" in x for x in lines if x.get("msg") == "request")


def test_all_endpoints_refused_is_502_naming_each_and_the_gateway_stays_up(
    served: tuple[ServeProcess, Simulators],
) -> None:
    g, _ = served
    c = client(g, g.key())
    with pytest.raises(openai.APIStatusError) as err:
        c.chat.completions.create(model=DEAD_MODEL, messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 502
    error = err.value.response.json()["error"]
    assert error["code"] == "upstream_failed"
    assert "dead-osaka" in error["message"] and "dead-sapporo" in error["message"]
    assert request("GET", f"{g.root}/healthz").status_code == 200
    assert c.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "still here?"}]
    ).choices
    assert g.proc is not None and g.proc.poll() is None


@pytest.mark.slow
def test_two_workers_both_serve_requests(tmp_path: Path) -> None:
    sims = Simulators(demo_sim_specs(delay_ms=30)).start()  # slow enough that requests overlap
    config = write_config(tmp_path / "sekisho.yaml", sims.config())
    g = ServeProcess(config, tmp_path / "data", workers=2)
    try:
        g.start()
        key = g.key()
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "which worker?"}]}
        headers = {"authorization": f"Bearer {key}"}

        def one(i: int) -> int:  # a new connection each time, so the kernel picks a worker
            r = request("POST", f"{g.base_url}/chat/completions", json_body=body,
                        headers={**headers, "x-request-id": f"worker-{i}"})  # fmt: skip
            return r.status_code

        deadline = time.monotonic() + 30
        pids: set[int] = set()
        rounds = 0
        while len(pids) < 2 and time.monotonic() < deadline:
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(one, range(rounds * 32, rounds * 32 + 32)))
            assert statuses == [200] * 32
            rounds += 1
            time.sleep(0.2)  # let the log lines reach the file
            pids = {
                x["pid"] for x in g.log()
                if x.get("msg") == "request"
                and str(x.get("client_request_id")).startswith("worker-")
            }  # fmt: skip
        assert len(pids) == 2, f"only workers {pids} answered after {rounds * 32} requests"
        ready = {x["pid"] for x in g.log() if x.get("msg") == "sekisho ready"}
        assert pids == ready
        g.stop()
        # Each worker's last lines reach the log before it ends (uvicorn ends a worker by
        # raising SIGTERM again, which used to end it before its log writer's next turn).
        finished = {x.get("msg") for x in g.log()}
        for pid in pids:
            assert f"Finished server process [{pid}]" in finished, sorted(map(str, finished))
        assert g.log()[-1]["msg"] == "sekisho stopped"
    finally:
        g.stop()
        sims.stop()


def _slow_streams(
    tmp_path: Path, *, chunk_delay_ms: int, grace_seconds: float, keepalive: float = 0
) -> tuple[Simulators, ServeProcess]:
    """Simulators that stream slowly, and a started `serve` with that shutdown grace period
    (and server.stream_keepalive_seconds)."""
    sims = Simulators(demo_sim_specs(chunk_delay_ms=chunk_delay_ms)).start()

    def grace(raw: dict[str, Any]) -> None:
        raw["server"]["shutdown_grace_seconds"] = grace_seconds
        raw["server"]["stream_keepalive_seconds"] = keepalive

    config = write_config(tmp_path / "sekisho.yaml", sims.config(grace))
    g = ServeProcess(config, tmp_path / "data")
    g.start()
    return sims, g


def _start_stream(g: ServeProcess, content: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=20)
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": content}]}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"authorization": f"Bearer {g.key()}",
                          "content-type": "application/json"})  # fmt: skip
    return conn.getresponse()


@pytest.mark.slow
def test_sigterm_lets_an_in_flight_stream_finish_with_done_before_exit(tmp_path: Path) -> None:
    sims, g = _slow_streams(tmp_path, chunk_delay_ms=120, grace_seconds=20)
    try:
        resp = _start_stream(g, "a slow stream, please")
        assert resp.status == 200
        events: list[str] = []
        first = resp.readline().decode()
        assert first.startswith("data: ")
        events.append(first.strip())
        sent_term = time.monotonic()
        g.signal(signal.SIGTERM)

        refused = threading.Event()

        def probe() -> None:  # the listening socket closes while the stream drains
            time.sleep(0.5)
            try:
                request("GET", f"{g.root}/healthz", timeout=2)
            except OSError:
                refused.set()

        prober = threading.Thread(target=probe)
        prober.start()
        for raw_line in resp:
            line = raw_line.decode().strip()
            if line:
                events.append(line)
        prober.join()
        assert events[-1] == "data: [DONE]", events[-3:]
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        assert any(ch["choices"] and ch["choices"][0].get("finish_reason") == "stop"
                   for ch in chunks)  # fmt: skip
        assert time.monotonic() - sent_term > 0.5, "the stream was still in flight at SIGTERM"
        assert refused.is_set(), "new connections were still accepted during shutdown"
        code = g.wait(20)
        assert code in (0, -signal.SIGTERM), g.stderr()
    finally:
        g.stop()
        sims.stop()


def test_start_up_with_an_invalid_config_exits_2_listing_file_key_and_reason(
    tmp_path: Path,
) -> None:
    raw = example_config()
    raw["tenants"]["demo"]["polcy"] = raw["tenants"]["demo"].pop("policy")
    raw["endpoints"][0]["jurisdiction"]["country"] = "Japan"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw), encoding="utf-8")
    port = free_port()
    r = subprocess.run(
        [sys.executable, "-m", "sekisho", "serve", "--config", str(bad), "--port", str(port),
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "configuration is not valid (2 problems)" in r.stderr
    assert f"{bad}: tenants.demo.polcy: unknown key" in r.stderr
    assert f"{bad}: endpoints[0](sim-domestic-tokyo).jurisdiction.country: 'Japan'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "data").exists(), "nothing is created before the config validates"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_already_taken_stops_start_up_naming_it_before_anything_says_ready(
    tmp_path: Path, workers: int
) -> None:
    """On a taken port the log said "sekisho ready" and "Application startup complete", then
    uvicorn's bare "[Errno 98] address already in use" (exit 3)."""
    import socket

    config = write_config(tmp_path / "sekisho.yaml", example_config())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "sekisho", "serve", "--config", str(config),
             "--port", str(port), "--data-dir", str(tmp_path / "data"),
             "--workers", str(workers)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"sekisho: cannot listen on 127.0.0.1:{port}: ")
    assert "already in use" in last and "--port" in last and "did not start" in last
    assert "sekisho ready" not in r.stderr and "startup complete" not in r.stderr
    assert "Traceback" not in r.stderr


def test_a_stop_by_sigterm_ends_the_log_with_a_line_that_says_so(tmp_path: Path) -> None:
    """Stopped by SIGTERM, the log ended at "Waiting for application shutdown.": uvicorn
    raised the signal again before the last lines were written, and a clean stop looked like
    a kill."""
    g = ServeProcess(write_config(tmp_path / "sekisho.yaml", example_config()), tmp_path / "d")
    g.start()
    g.signal(signal.SIGTERM)
    assert g.wait(20) == -signal.SIGTERM  # as before: ended as SIGTERM ends a process
    messages = [line["msg"] for line in g.log()]
    assert "Application shutdown complete." in messages
    assert g.log()[-1]["msg"] == "sekisho stopped" and g.log()[-1]["signal"] == "SIGTERM"


def test_bad_command_line_flags_exit_2_naming_the_flag(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "sekisho", "serve", "--config", str(write_config(
            tmp_path / "ok.yaml", example_config())), "--workers", "0", "--port", "70000"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "command line: --workers: Input should be greater than or equal to 1" in r.stderr
    assert "command line: --port: Input should be less than or equal to 65535" in r.stderr
    assert "Traceback" not in r.stderr


def test_files_sekisho_makes_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """The key database (and every other file sekisho makes) is readable by its owner only,
    even from a shell whose umask lets everyone read new files."""
    import os
    import stat

    data_dir = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "sekisho", "keys", "create", "--tenant", "demo",
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, check=False,
        preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    made = [p for p in data_dir.rglob("*")]
    assert any(p.name == "identity.db" for p in made)
    for p in made:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, f"{p} is {oct(mode)}"


def test_a_data_directory_restored_readable_by_others_stops_start_up_with_a_chmod_hint(
    tmp_path: Path,
) -> None:
    """Restoring `.backup` copies under umask 022 left identity.db, the ledger and the stores
    0644 (and SQLite then made their -wal and -shm files 0644 too): the gateway served from
    them without a word."""
    import os
    import socket

    data_dir = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "sekisho", "keys", "create", "--tenant", "demo",
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (data_dir / "identity.db").chmod(0o644)  # as `sqlite3 … ".backup …"` makes it under 022
    (data_dir / "store-jp.db").write_bytes(b"")
    (data_dir / "store-jp.db").chmod(0o640)
    data_dir.chmod(0o755)
    config = write_config(tmp_path / "sekisho.yaml", example_config())
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    argv = [sys.executable, "-m", "sekisho", "serve", "--config", str(config),
            "--data-dir", str(data_dir), "--port", str(taken.getsockname()[1])]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2, done.stderr
        assert f"{data_dir / 'identity.db'} (0644)" in done.stderr
        assert f"{data_dir / 'store-jp.db'} (0640)" in done.stderr
        assert f"chmod -R go-rwx {data_dir}" in done.stderr and "umask 077" in done.stderr
        assert "the gateway did not start" in done.stderr and "Traceback" not in done.stderr
        os.chmod(data_dir / "identity.db", 0o600)
        os.chmod(data_dir / "store-jp.db", 0o600)
        # Private files in a directory others may enter: a warning, then on to the next check.
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1 and "cannot listen" in done.stderr, done.stderr
        assert f"chmod 700 {data_dir}" in done.stderr
    finally:
        taken.close()


@pytest.mark.slow
def test_a_stream_cut_by_the_end_of_the_grace_period_is_recorded_as_the_gateways_doing(
    tmp_path: Path,
) -> None:
    """A stream longer than shutdown_grace_seconds is cut when the grace period ends: it ends
    with an error event (gateway_shutdown) and a properly ended chunked body, as other failures
    after the first byte do (curl exited 18, the SDK raised a bare APIConnectionError); its
    outcome in the ledger says the gateway cut it (503 gateway_shutdown), not that its client
    left, and the last requests' log lines are written before the process exits."""
    sims, g = _slow_streams(tmp_path, chunk_delay_ms=400, grace_seconds=1)
    try:
        resp = _start_stream(g, "a very slow stream " * 10)
        assert resp.status == 200
        rid = resp.getheader("x-request-id")
        assert resp.readline().decode().startswith("data: ")
        g.signal(signal.SIGTERM)
        events = [line.decode().strip() for line in resp]  # the whole body, nothing cut
        events = [e for e in events if e]
        assert "data: [DONE]" not in events
        error = json.loads(events[-1].removeprefix("data: "))["error"]
        assert error["code"] == "gateway_shutdown" and error["type"] == "server_error"
        g.wait(20)
        from sekisho.ledger import parse_record
        from sekisho.ledger.storage import open_storage

        storage = open_storage(tmp_path / "data")
        try:
            leaves = [leaf for _, leaf, _, r, _ in storage.scan(0, storage.max_index() + 1)
                      if r == rid]  # fmt: skip
        finally:
            storage.close()
        outcomes = [parse_record(x) for x in leaves if b'"kind":"outcome"' in x]
        assert [(o.status, o.error_code) for o in outcomes] == [(503, "gateway_shutdown")]  # type: ignore[union-attr]
        logged = [x for x in g.log() if x.get("request_id") == rid]
        assert [x["msg"] for x in logged] == ["request"], g.stderr()[-2000:]
        assert logged[0]["error"] == "gateway_shutdown" and logged[0]["status"] == 503
        assert logged[0]["tenant"] == "demo" and "key_id" in logged[0]  # who, for chargeback
        assert "Exception in ASGI application" not in g.stderr()  # a cut, not a crash
        assert "without completing response" not in g.stderr()
    finally:
        g.stop()
        sims.stop()


@pytest.mark.slow
def test_the_end_of_the_grace_period_answers_what_is_still_in_flight(tmp_path: Path) -> None:
    """What the grace period's end cuts is answered, not dropped: a Responses API stream ends
    with its error event (the SDK raises an APIError saying why, not a bare connection
    error), and a request with no answer yet gets a 503 gateway_shutdown with Retry-After."""
    sims, g = _slow_streams(tmp_path, chunk_delay_ms=400, grace_seconds=1)
    try:
        key = g.key()
        c = openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0, timeout=20)
        stream = c.responses.create(model="gpt-4o", input="a very slow stream " * 10, stream=True)
        first = next(iter(stream))
        assert first.type == "response.created"
        for eid in sims.sims:
            sims.fault(eid, mode="hang")  # the next request waits for its answer

        answered: list[Any] = []

        def waiting() -> None:
            answered.append(
                request(
                    "POST",
                    g.base_url + "/chat/completions",
                    json_body={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"authorization": f"Bearer {key}"},
                    timeout=20,
                )
            )

        waiter = threading.Thread(target=waiting)
        waiter.start()
        time.sleep(0.3)
        g.signal(signal.SIGTERM)
        events = list(stream)  # ends with the error event, not a dropped connection
        assert events[-1].type == "error"
        assert events[-1].code == "gateway_shutdown"  # type: ignore[union-attr]
        assert events[-1].sequence_number > first.sequence_number
        waiter.join(20)
        (r,) = answered
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "gateway_shutdown"
        assert r.headers["retry-after"] == "1"
        assert r.headers["x-sekisho-request-id"]
        g.wait(20)
        assert "without completing response" not in g.stderr()
        assert "Exception in ASGI application" not in g.stderr()
    finally:
        g.stop()
        sims.stop()


@pytest.mark.slow
def test_a_kept_alive_responses_stream_cut_before_its_first_event_is_a_failed_response(
    tmp_path: Path,
) -> None:
    """The grace period ends while a stream started early (stream_keepalive_seconds) still
    waits for its endpoint: the client gets the response's whole life, response.created then
    response.failed saying gateway_shutdown, which the SDK's stream helper reads; an error
    event alone made it raise about a missing response.created instead."""
    sims, g = _slow_streams(tmp_path, chunk_delay_ms=0, grace_seconds=1, keepalive=0.2)
    try:
        for eid in sims.sims:
            sims.fault(eid, mode="hang")
        c = openai.OpenAI(base_url=g.base_url, api_key=g.key(), max_retries=0, timeout=20)
        with c.responses.stream(model="gpt-4o", input="think for a long time") as stream:
            g.signal(signal.SIGTERM)
            events = list(stream)
        assert [e.type for e in events] == ["response.created", "response.failed"]
        failed = events[-1].response  # type: ignore[union-attr]
        assert failed.status == "failed" and failed.error is not None
        assert failed.error.code == "gateway_shutdown"
        assert failed.id == events[0].response.id  # type: ignore[union-attr]
        g.wait(20)
        assert "Exception in ASGI application" not in g.stderr()
    finally:
        g.stop()
        sims.stop()


def test_simulate_runs_the_three_endpoints_on_the_ports_asked_until_stopped() -> None:
    """`sekisho simulate --base-port 0` (any free ports, so two can run side by side): each
    simulator answers the official client, labelled as a simulator, until SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sekisho", "simulate", "--base-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        urls: list[str] = []
        deadline = time.monotonic() + 30
        while len(urls) < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "http://127.0.0.1:" in line:
                urls.append(line.split()[-1])
        assert len(urls) == 3, proc.stderr.read() if proc.stderr else ""
        assert not any(u.startswith("http://127.0.0.1:910") for u in urls)
        c = openai.OpenAI(base_url=urls[0], api_key="x", max_retries=0)
        answer = c.chat.completions.create(
            model="llama-3.1-swallow-70b", messages=[{"role": "user", "content": "hi"}]
        )
        assert "SIMULATOR" in (answer.choices[0].message.content or "").upper()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_requests_outside_the_model_routes_are_logged_too_refusals_included(
    served: tuple[ServeProcess, Simulators],
) -> None:
    """A key guessed against /v1/models, /admin or /ledger, and who read what there, left no
    log line: only model calls were logged, so a SIEM saw none of it."""
    g, _ = served
    bad = {"authorization": "Bearer sk-sekisho-aaaaaaaaaaaa-guess"}
    key = g.key()
    asked = {
        "trace-other-0": ("/v1/models", bad, 401, "invalid_api_key"),
        "trace-other-1": ("/admin/v1/keys", bad, 401, "invalid_api_key"),
        "trace-other-2": ("/ledger/receipts/req_x", bad, 401, "invalid_api_key"),
        "trace-other-3": ("/v1/models", {"authorization": f"Bearer {key}"}, 200, None),
        "trace-other-4": ("/admin/v1/keys", {"authorization": f"Bearer {key}"}, 403, None),
    }
    for rid, (path, headers, status, _) in asked.items():
        got = request("GET", g.root + path, headers={**headers, "x-request-id": rid})
        assert got.status_code == status, (path, got.text)
    deadline = time.monotonic() + 5
    while True:
        logged = {x.get("request_id"): x for x in g.log() if x.get("msg") == "request"}
        if all(rid in logged for rid in asked) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for rid, (path, _, status, error) in asked.items():
        line = logged[rid]
        assert line["path"] == path and line["status"] == status
        assert line["client"] == "127.0.0.1"
        if error is not None:
            assert line["error"] == error
    assert logged["trace-other-3"]["tenant"] == "demo" and "key_id" in logged["trace-other-3"]
    assert logged["trace-other-4"]["error"] == "insufficient_role"  # an app key at /admin
    assert "guess" not in json.dumps(list(logged.values()))  # the presented key is not logged


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ((9101, 9102, 9103), 9101),
        ((9201, 9202, 9203), 9201),  # a copy of the example moved to other ports
        ((9201, 9203, 9202), None),  # not the simulators' order: their usual ports
    ],
)
def test_with_simulators_starts_them_where_the_configs_simulated_endpoints_point(
    ports: tuple[int, int, int], expected: int | None
) -> None:
    from sekisho.cli import simulator_base_port
    from sekisho.config import parse_config

    raw = example_config()
    names = ["sim-domestic-tokyo", "sim-global-japaneast", "sim-global-useast"]
    for ep in raw["endpoints"]:
        ep["base_url"] = f"http://127.0.0.1:{ports[names.index(ep['id'])]}/v1"
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True), "sekisho.yaml")
    assert simulator_base_port(config) == expected
