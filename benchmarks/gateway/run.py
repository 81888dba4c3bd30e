#!/usr/bin/env python3
"""sekisho's gateway benchmark, in one command: the mock upstream directly, through LiteLLM and
through sekisho, side by side and alternating, at concurrency 1, 16 and 64, plain and streamed.

    python3 benchmarks/gateway/run.py            # full run (~13 min): 15 s runs, 2 rounds
    python3 benchmarks/gateway/run.py --quick    # ~3 min: 5 s runs, 1 round, 1 cold start each

It sets up what it needs once per machine (wrk; /tmp/bench-venv for the mock; /tmp/litellm-venv
with litellm[proxy]==1.106.2 and opentelemetry-sdk, as the shared baseline), starts the mock,
measures each gateway's cold start (process start to its first successful chat completion) and
leaves the last instance running, loads all three targets with harness/bench.py, prints the
table with the ratios sekisho/LiteLLM and the issue's budgets, and stops everything it started,
however the run ends. Standard library only: run it with any Python 3.11.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # keep the benchmark folder free of __pycache__

import procs  # noqa: E402
from floor import floor  # noqa: E402
from procs import HARNESS, REPO, Processes, completes, fail, free_port, say  # noqa: E402

SCENARIOS = "chat:1,chat:16,chat:64,stream:1,stream:16,stream:64"
LITELLM_KEY = "sk-bench-1234"  # the master key in harness/litellm/config.yaml

# The issue's budgets (issue 2, "Performance"), checked against what this run measured.
MIN_THROUGHPUT_RATIO = 20.0  # sekisho req/s ÷ LiteLLM req/s at c=16 and c=64
MAX_CPU_MS_PER_REQUEST = 0.4
MAX_CPU_US_PER_CHUNK = 30.0
MAX_ADDED_P50_MS_C1 = 0.5
MAX_ADDED_P99_MS_C1 = 2.0
LEDGER_P50_ALLOWANCE_MS = 2.0  # issue 5: the ledger's two durable writes, p50 at c=1
MAX_RSS_MB = 120.0
MAX_COLD_START_S = 1.5


# -- the gateways -----------------------------------------------------------------------------


class Sekisho:
    """One `sekisho serve` process in front of the mock, on a fresh data directory per start."""

    def __init__(self, args: argparse.Namespace, procs_: Processes, mock_url: str) -> None:
        self.exe = args.sekisho
        self.procs = procs_
        self.port = free_port()
        self.mock_url = mock_url
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.key = ""
        self.data_dir = ""

    def cold_start(self, body: bytes) -> tuple[Any, float]:
        self.data_dir = tempfile.mkdtemp(prefix="sekisho-bench-")
        data_dir = self.data_dir
        self.procs.on_exit(lambda: shutil.rmtree(data_dir, ignore_errors=True))
        config = Path(self.data_dir) / "sekisho.yaml"
        script = REPO / "benchmarks" / "config_for_mock.sh"
        out = subprocess.run(
            ["bash", str(script), self.mock_url, str(self.port)],
            capture_output=True,
            text=True,
            check=True,
        )
        config.write_text(out.stdout)
        created = subprocess.run(
            [self.exe, "keys", "create", "--tenant", "demo", "--data-dir", self.data_dir],
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            fail(f"sekisho keys create failed: {created.stderr.strip()}")
        self.key = created.stdout.strip().splitlines()[-1]
        cmd = [self.exe, "serve", "--config", str(config), "--data-dir", self.data_dir]
        t0 = time.monotonic()
        proc = self.procs.start("sekisho", cmd)
        url = self.url + "/chat/completions"
        self.procs.wait_until(proc, lambda: completes(url, body, self.key), "sekisho", 60)
        return proc, time.monotonic() - t0


class LiteLLM:
    """LiteLLM 1.106.2, one uvicorn worker, exactly as in the shared baseline."""

    def __init__(self, args: argparse.Namespace, procs_: Processes, mock_url: str) -> None:
        self.exe = args.litellm
        self.procs = procs_
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.key = LITELLM_KEY
        self.env = dict(
            os.environ,
            MOCK_API_BASE=mock_url,
            LITELLM_MODE="PRODUCTION",  # no .env loading, production defaults
            LITELLM_LOG="ERROR",
            LITELLM_LOCAL_MODEL_COST_MAP="True",  # offline: no cost-map fetch at start
        )

    def cold_start(self, body: bytes) -> tuple[Any, float]:
        cmd = [
            self.exe,
            "--config",
            str(HARNESS / "litellm" / "config.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--num_workers",
            "1",
        ]
        t0 = time.monotonic()
        proc = self.procs.start("litellm", cmd, self.env)
        url = self.url + "/chat/completions"
        self.procs.wait_until(proc, lambda: completes(url, body, self.key), "LiteLLM", 180)
        return proc, time.monotonic() - t0


def cold_starts(gw: Sekisho | LiteLLM, name: str, n: int, body: bytes) -> tuple[Any, list[float]]:
    """Start ``n`` times, keep the last instance running for the load."""
    times: list[float] = []
    proc = None
    for i in range(n):
        if proc is not None:
            gw.procs.stop(proc)
        proc, secs = gw.cold_start(body)
        times.append(secs)
        say(f"{name} cold start {i + 1}/{n}: {secs:.2f} s to first chat completion")
    time.sleep(0.5)
    return proc, times


def chunks_per_stream(mock_url: str) -> int:
    """SSE events carrying a chunk in one of the mock's streams (without ``data: [DONE]``)."""
    body = json.loads(procs.chat_body())
    body["stream"] = True
    req = urllib.request.Request(
        mock_url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    return sum(1 for ln in lines if ln.startswith("data:") and ln.strip() != "data: [DONE]")


# -- the report -------------------------------------------------------------------------------


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarise(rows: list[dict[str, Any]]) -> dict[tuple[str, int, str], dict[str, Any]]:
    """Per (kind, conns, target): medians over rounds, added latency against direct per round."""
    out: dict[tuple[str, int, str], dict[str, Any]] = {}
    direct = {(r["round"], r["kind"], r["conns"]): r for r in rows if r["target"] == "direct"}
    keys = sorted({(r["kind"], r["conns"], r["target"]) for r in rows})
    for kind, conns, target in keys:
        sel = [r for r in rows if (r["kind"], r["conns"], r["target"]) == (kind, conns, target)]
        add50, add99 = [], []
        for r in sel:
            d = direct.get((r["round"], kind, conns))
            if d is not None and target != "direct":
                add50.append(r["p50_ms"] - d["p50_ms"])
                add99.append(r["p99_ms"] - d["p99_ms"])
        cpu = [r["cpu_ms_per_req"] for r in sel if r.get("cpu_ms_per_req") is not None]
        rss = [r["rss_mb"] for r in sel if r.get("rss_mb") is not None]
        out[(kind, conns, target)] = {
            "rps": _median([r["rps"] for r in sel]),
            "rps_all": [r["rps"] for r in sel],
            "p50": _median([r["p50_ms"] for r in sel]),
            "p99": _median([r["p99_ms"] for r in sel]),
            "add50": _median(add50),
            "add99": _median(add99),
            "cpu": _median(cpu),
            "rss": max(rss) if rss else None,
            "errors": sum(r["errors"] for r in sel),
            "fwd": _median([r["fwd_pct"] for r in sel if "fwd_pct" in r]),
        }
    return out


def quiet_c1(
    bench: Any, targets: list[tuple[str, str, str]], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Plain c=1 latency once more, with nothing reading the processes meanwhile.

    The harness samples each target's memory every 0.25 s from ``/proc/PID/smaps_rollup``,
    which walks the process's page tables: ~2 ms of kernel time per read for sekisho's
    ~100 MB on this 2-vCPU machine. Measured A/B (same build twice, wrk at c=1, 2 rounds of
    10 s each): p99 2.02–2.14 ms without such reads and 3.98–4.52 ms with them; p50 unchanged.
    At c=1 the request's steps hop between threads and processes, so a vCPU taken for 2 ms
    shows in ~1% of requests: the p99. This phase measures the same scenario (same wrk script
    and body, same processes, targets alternating) without the sampler; the harness's own
    numbers stay in the table above. Returns median p50/p99 (ms) and errors per target.
    """
    body_file = Path(args.out) / "quiet-chat-body.json"
    body_file.write_bytes(bench.make_bodies("mock-gpt", 1000)["chat"])
    got: dict[str, list[tuple[float, float, int]]] = {}
    rounds = max(2, args.rounds)
    say(f"c=1 latency without memory sampling: {rounds} rounds of {args.duration:g} s per target")
    for r in range(rounds):
        for name, url, key in targets if r % 2 == 0 else targets[::-1]:
            t = bench.Target(name, url, "mock-gpt", key, None)
            if args.warmup > 0:
                bench.run_wrk(t, "/chat/completions", str(body_file), 1, args.warmup, 30)
            res = bench.run_wrk(t, "/chat/completions", str(body_file), 1, args.duration, 30)
            errors = sum(res[k] for k in ("err_connect", "err_read", "err_write", "err_status"))
            errors += res["err_timeout"]
            got.setdefault(name, []).append((res["p50"] / 1000, res["p99"] / 1000, errors))
            say(
                f"  q{r + 1} chat c1 {name}: p50={res['p50'] / 1000:.2f}ms "
                f"p99={res['p99'] / 1000:.2f}ms err={errors}"
            )
    return {
        name: {
            "p50": statistics.median(x[0] for x in rows),
            "p99": statistics.median(x[1] for x in rows),
            "errors": sum(x[2] for x in rows),
        }
        for name, rows in got.items()
    }


def _f(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def report(
    data: dict[str, Any],
    cold: dict[str, list[float]],
    chunks: int,
    gateways: list[str],
    quiet: dict[str, dict[str, float]] | None = None,
    durable: dict[str, float] | None = None,
) -> tuple[str, list[tuple[str, str, str, bool | None]]]:
    """The markdown table of the run, and the budget checks (what, target, measured, met)."""
    s = summarise(data["rows"])
    scen = [(k, int(c)) for k, c in (x.split(":") for x in data["args"]["scenarios"].split(","))]
    lines = [
        "| scenario | target | req/s | p50 ms | p99 ms | +p50 ms | +p99 ms | CPU ms/req "
        "| RSS MB | err | fwd% |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, conns in scen:
        for target in ["direct", *gateways]:
            v = s.get((kind, conns, target))
            if v is None:
                continue
            rps_all = v["rps_all"]
            spread = f" [{min(rps_all):,.0f}..{max(rps_all):,.0f}]" if len(rps_all) > 1 else ""
            lines.append(
                f"| {kind} c{conns} | {target} | {v['rps']:,.1f}{spread} | {_f(v['p50'], '.2f')} "
                f"| {_f(v['p99'], '.2f')} | {_f(v['add50'], '+.2f')} | {_f(v['add99'], '+.2f')} "
                f"| {_f(v['cpu'], '.3f')} | {_f(v['rss'], '.0f')} | {v['errors']} "
                f"| {_f(v['fwd'], '.0f')} |"
            )
    lines.append("")
    if "litellm" in gateways and "sekisho" in gateways:
        lines += [
            "sekisho ÷ LiteLLM, same run:",
            "",
            "| scenario | throughput × | CPU per request: LiteLLM ÷ sekisho | "
            "added p50: LiteLLM − sekisho ms |",
            "|---|---|---|---|",
        ]
        for kind, conns in scen:
            a, b = s.get((kind, conns, "sekisho")), s.get((kind, conns, "litellm"))
            if a is None or b is None:
                continue
            cpu_ratio = b["cpu"] / a["cpu"] if a["cpu"] and b["cpu"] else None
            add_diff = b["add50"] - a["add50"] if a["add50"] is not None and b["add50"] else None
            lines.append(
                f"| {kind} c{conns} | {a['rps'] / b['rps']:.1f}× | {_f(cpu_ratio, '.1f')}× "
                f"| {_f(add_diff, '.2f')} |"
            )
        lines.append("")
    per_chunk: list[float] = []
    if "sekisho" in gateways:
        for conns in sorted({c for k, c in scen if k == "stream"}):
            st, ch = s.get(("stream", conns, "sekisho")), s.get(("chat", conns, "sekisho"))
            if st and ch and st["cpu"] is not None and ch["cpu"] is not None:
                per_chunk.append((st["cpu"] - ch["cpu"]) * 1000 / chunks)
        lines.append(
            "CPU µs per streamed chunk (sekisho) = (CPU ms per streamed request − CPU ms per "
            f"plain request, same concurrency) × 1000 ÷ {chunks} chunks per stream: "
            + ", ".join(f"{x:.1f}" for x in per_chunk)
            + (f" (median {statistics.median(per_chunk):.1f})" if per_chunk else "")
        )
        lines.append("")
    for name, times in cold.items():
        lines.append(
            f"cold start {name}: median {statistics.median(times):.2f} s "
            f"[{min(times):.2f}..{max(times):.2f}] over {len(times)} start(s)"
        )
    if quiet and "direct" in quiet and "sekisho" in quiet:
        d, k = quiet["direct"], quiet["sekisho"]
        lines += [
            "",
            "chat c1 again without memory sampling (see `quiet_c1`), medians over rounds:",
            "",
            "| target | p50 ms | p99 ms | +p50 ms | +p99 ms | err |",
            "|---|---|---|---|---|---|",
            f"| direct | {d['p50']:.2f} | {d['p99']:.2f} | – | – | {d['errors']:.0f} |",
            f"| sekisho | {k['p50']:.2f} | {k['p99']:.2f} | {k['p50'] - d['p50']:+.2f} "
            f"| {k['p99'] - d['p99']:+.2f} | {k['errors']:.0f} |",
        ]
    if durable:
        lines += [
            "",
            "The durability floor on this disk (`floor.py`, same run, no gateway): the three "
            "commits a request makes at c=1 (decision, exchange, outcome), each a WAL append and "
            f"an fdatasync of its own: CPU {durable['cpu_ms']:.3f} ms per request, wall "
            f"{durable['wall_p50_ms']:.2f} ms p50 and {durable['wall_p99_ms']:.2f} ms p99.",
        ]
    checks = budget_checks(s, scen, cold, per_chunk, gateways, quiet)
    return "\n".join(lines), checks


def budget_checks(
    s: dict[tuple[str, int, str], dict[str, Any]],
    scen: list[tuple[str, int]],
    cold: dict[str, list[float]],
    per_chunk: list[float],
    gateways: list[str],
    quiet: dict[str, dict[str, float]] | None = None,
) -> list[tuple[str, str, str, bool | None]]:
    checks: list[tuple[str, str, str, bool | None]] = []
    if "sekisho" not in gateways:
        return checks
    mine = {k: v for k, v in s.items() if k[2] == "sekisho"}
    if "litellm" in gateways:
        for kind, conns in scen:
            if conns < 16 or (kind, conns, "litellm") not in s:
                continue
            ratio = s[(kind, conns, "sekisho")]["rps"] / s[(kind, conns, "litellm")]["rps"]
            checks.append(
                (
                    f"throughput ÷ LiteLLM, {kind} c{conns}",
                    f"≥ {MIN_THROUGHPUT_RATIO:.0f}×",
                    f"{ratio:.1f}×",
                    ratio >= MIN_THROUGHPUT_RATIO,
                )
            )
    plain_cpu = [v["cpu"] for (k, _, _), v in mine.items() if k == "chat" and v["cpu"] is not None]
    if plain_cpu:
        worst = max(plain_cpu)
        checks.append(
            (
                "CPU per request (plain, worst concurrency)",
                f"< {MAX_CPU_MS_PER_REQUEST} ms",
                f"{worst:.3f} ms",
                worst < MAX_CPU_MS_PER_REQUEST,
            )
        )
    if per_chunk:
        m = statistics.median(per_chunk)
        checks.append(
            (
                "CPU per streamed chunk (median)",
                f"< {MAX_CPU_US_PER_CHUNK:.0f} µs",
                f"{m:.1f} µs",
                m < MAX_CPU_US_PER_CHUNK,
            )
        )
    c1 = s.get(("chat", 1, "sekisho"))
    if c1 and c1["add50"] is not None:
        checks.append(
            (
                "added p50 at c=1 (plain)",
                f"< {MAX_ADDED_P50_MS_C1} ms",
                f"{c1['add50']:.2f} ms",
                c1["add50"] < MAX_ADDED_P50_MS_C1,
            )
        )
        # Issue 5 allows the ledger's two durable writes < 2 ms more at p50, c=1.
        allowed = MAX_ADDED_P50_MS_C1 + LEDGER_P50_ALLOWANCE_MS
        checks.append(
            (
                "added p50 at c=1, with the ledger's allowance (issue 5)",
                f"< {allowed} ms",
                f"{c1['add50']:.2f} ms",
                c1["add50"] < allowed,
            )
        )
        checks.append(
            (
                "added p99 at c=1 (plain)",
                f"< {MAX_ADDED_P99_MS_C1:.0f} ms",
                f"{c1['add99']:.2f} ms",
                c1["add99"] < MAX_ADDED_P99_MS_C1,
            )
        )
    if quiet and "direct" in quiet and "sekisho" in quiet:
        add50 = quiet["sekisho"]["p50"] - quiet["direct"]["p50"]
        add99 = quiet["sekisho"]["p99"] - quiet["direct"]["p99"]
        ok = quiet["sekisho"]["errors"] == 0
        checks.append(
            (
                "added p50 at c=1, no memory sampling, with the ledger's allowance",
                f"< {MAX_ADDED_P50_MS_C1 + LEDGER_P50_ALLOWANCE_MS} ms",
                f"{add50:.2f} ms",
                ok and add50 < MAX_ADDED_P50_MS_C1 + LEDGER_P50_ALLOWANCE_MS,
            )
        )
        checks.append(
            (
                "added p99 at c=1, no memory sampling",
                f"< {MAX_ADDED_P99_MS_C1:.0f} ms",
                f"{add99:.2f} ms",
                ok and add99 < MAX_ADDED_P99_MS_C1,
            )
        )
    rss = [v["rss"] for v in mine.values() if v["rss"] is not None]
    if rss:
        checks.append(
            (
                "RSS under load (peak)",
                f"< {MAX_RSS_MB:.0f} MB",
                f"{max(rss):.0f} MB",
                max(rss) < MAX_RSS_MB,
            )
        )
    if "sekisho" in cold:
        m = statistics.median(cold["sekisho"])
        checks.append(
            ("cold start (median)", f"< {MAX_COLD_START_S} s", f"{m:.2f} s", m < MAX_COLD_START_S)
        )
    return checks


def checks_table(checks: list[tuple[str, str, str, bool | None]]) -> str:
    lines = ["| budget (issue 2) | target | measured | |", "|---|---|---|---|"]
    for what, target, measured, met in checks:
        lines.append(f"| {what} | {target} | {measured} | {'met' if met else '**MISSED**'} |")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="about 3 minutes: --duration 5 --warmup 1 --rounds 1 --cold-starts 1",
    )
    ap.add_argument("--duration", type=float, default=15, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=3, help="seconds of unrecorded load first")
    ap.add_argument("--rounds", type=int, default=2, help="repeat all scenarios, order reversed")
    ap.add_argument("--cold-starts", type=int, default=3, help="cold starts per gateway")
    ap.add_argument("--scenarios", default=SCENARIOS, help=f"bench.py scenarios ({SCENARIOS})")
    ap.add_argument("--no-litellm", action="store_true", help="only direct and sekisho")
    ap.add_argument(
        "--sekisho",
        default=str(REPO / ".venv" / "bin" / "sekisho"),
        help="the sekisho executable (default: the repo's .venv)",
    )
    ap.add_argument(
        "--litellm", default=None, help="litellm CLI (default: set up /tmp/litellm-venv)"
    )
    ap.add_argument(
        "--out",
        default="/tmp/sekisho-bench",
        help="directory for logs, bench.json and report.md (default /tmp/sekisho-bench)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds, args.cold_starts = 5, 1, 1, 1
    if args.cold_starts < 1 or args.rounds < 1:
        ap.error("--cold-starts and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.sekisho).exists():
        fail(f"no sekisho executable at {args.sekisho}; run ./run test once, or pass --sekisho")
    loadgen = procs.ensure_wrk()
    mock_python = procs.ensure_bench_venv()
    if not args.no_litellm and args.litellm is None:
        args.litellm = str(procs.ensure_litellm_venv())
    body = procs.chat_body()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    procs_ = Processes(out / "logs")
    with procs_.running():
        mock_port = free_port()
        mock = procs.start_mock(procs_, mock_python, mock_port)
        mock_url = f"http://127.0.0.1:{mock_port}/v1"
        chunks = chunks_per_stream(mock_url)
        say(f"mock upstream on {mock_url} (pid {mock.pid}), {chunks} chunks per stream")
        gateways: dict[str, Sekisho | LiteLLM] = {}
        if not args.no_litellm:
            gateways["litellm"] = LiteLLM(args, procs_, mock_url)
        gateways["sekisho"] = Sekisho(args, procs_, mock_url)
        cold: dict[str, list[float]] = {}
        bench_argv = ["--target", f"direct={mock_url}", "--pid", f"direct={mock.pid}"]
        for name, gw in gateways.items():
            proc, cold[name] = cold_starts(gw, name, args.cold_starts, body)
            bench_argv += [
                "--target",
                f"{name}={gw.url}",
                "--api-key",
                f"{name}={gw.key}",
                "--pid",
                f"{name}={proc.pid}",
            ]
        bench_json = out / "bench.json"
        bench_argv += [
            "--scenarios",
            args.scenarios,
            "--duration",
            str(args.duration),
            "--warmup",
            str(args.warmup),
            "--rounds",
            str(args.rounds),
            "--json-out",
            str(bench_json),
        ]
        say("load: python3 harness/bench.py " + " ".join(bench_argv))
        sys.path.insert(0, str(HARNESS))
        import bench  # type: ignore[import-not-found]

        rc: int = bench.main(bench_argv)
        quiet = None
        if "chat:1" in args.scenarios.split(",") and "sekisho" in gateways:
            sek = gateways["sekisho"]
            quiet = quiet_c1(bench, [("direct", mock_url, ""), ("sekisho", sek.url, sek.key)], args)
        durable = None
        if "sekisho" in gateways:
            say("the durability floor: three SQLite commits per request, no gateway")
            durable = floor(Path(gateways["sekisho"].data_dir).parent)
    data = json.loads(bench_json.read_text())
    table, checks = report(data, cold, chunks, list(gateways), quiet, durable)
    machine = data["machine"]
    header = (
        f"Run {started} ({machine['date']} UTC): {machine['cpu_model']}, {machine['host_cpus']} "
        f"CPUs, Python {machine['python']}, load generator {loadgen} "
        f"({' '.join(machine.get('wrk') or [])}), load average at start "
        f"{', '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}.\n"
        f"Command: python3 benchmarks/gateway/run.py {' '.join(argv or sys.argv[1:])}\n"
        f"Each run: {args.warmup:g} s warm-up + {args.duration:g} s measured, {args.rounds} "
        f"round(s), targets alternating. Medians over rounds [min..max of req/s].\n"
    )
    text = header + "\n" + table + "\n\n" + checks_table(checks) + "\n"
    (out / "report.md").write_text(text)
    print("\n" + text)
    say(f"raw rows: {bench_json}; this report: {out / 'report.md'}; logs: {out / 'logs'}")
    return rc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nbenchmark: interrupted; everything it started has been stopped", file=sys.stderr)
        sys.exit(130)
