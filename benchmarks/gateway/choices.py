#!/usr/bin/env python3
"""Which HTTP server, upstream HTTP client and JSON library for sekisho: measured, not assumed.

    python3 benchmarks/gateway/choices.py            # ~9 min: 4 variants, 4 scenarios, 2 rounds
    python3 benchmarks/gateway/choices.py --quick    # ~3 min
    python3 benchmarks/gateway/choices.py --all      # every combination (8 variants)

Each variant is mini_proxy.py, a minimal ASGI proxy with the shape of the gateway's hot path,
built from one server (uvicorn with uvloop and httptools, or granian's ASGI interface on
uvloop), one client (aiohttp or httpx) and one JSON library (orjson or json). One factor is
changed at a time from the gateway's current choice (uvicorn + aiohttp + orjson), and all
variants are loaded side by side with harness/bench.py in one run, so they see the same
machine. A micro-benchmark of the two JSON libraries on the benchmark's own request, response
and stream chunk comes first. The candidates live only in /tmp/choices-venv.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True

import procs  # noqa: E402
from procs import CHOICES_VENV, HARNESS, HERE, Processes, completes, free_port, say  # noqa: E402

# The same versions as the project's requirements.lock, so the incumbent is what ships.
PACKAGES = [
    "uvicorn==0.54.0",
    "uvloop==0.23.0",
    "httptools==0.9.0",
    "aiohttp==3.14.5",
    "orjson==3.13.0",
    "httpx",
    "granian",
]
INCUMBENT = ("uvicorn", "aiohttp", "orjson")
ONE_AT_A_TIME = [
    INCUMBENT,
    ("granian", "aiohttp", "orjson"),
    ("uvicorn", "httpx", "orjson"),
    ("uvicorn", "aiohttp", "json"),
]

JSON_MICRO = r"""
import json, sys, timeit, orjson
req = sys.stdin.buffer.read()
resp = (b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"mock-gpt",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"' + b"word " * 32 +
        b'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":250,"completion_tokens":32,'
        b'"total_tokens":282}}')
chunk = (b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"mock-gpt",'
         b'"choices":[{"index":0,"delta":{"content":" lazy"},"finish_reason":null}]}')
def jdumps(o): return json.dumps(o, separators=(",", ":"), ensure_ascii=False).encode()
out = {}
for name, loads, dumps in (("orjson", orjson.loads, orjson.dumps), ("json", json.loads, jdumps)):
    obj = loads(req)
    cases = {
        "parse request": lambda: loads(req),
        "serialise request": lambda: dumps(obj),
        "parse response": lambda: loads(resp),
        "parse chunk": lambda: loads(chunk),
    }
    for case, fn in cases.items():
        n = 20000
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
        out.setdefault(case, {})[name] = best
print(json.dumps(out))
"""


def label(v: tuple[str, str, str]) -> str:
    return "+".join(v)


def json_micro(python: Path) -> dict[str, dict[str, float]]:
    r = subprocess.run(
        [str(python), "-c", JSON_MICRO],
        input=procs.chat_body(),
        capture_output=True,
        check=True,
    )
    result: dict[str, dict[str, float]] = json.loads(r.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument("--quick", action="store_true", help="5 s runs, 1 round")
    ap.add_argument("--all", action="store_true", help="all 8 combinations, not one at a time")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scenarios", default="chat:1,chat:16,chat:64,stream:16")
    ap.add_argument("--out", default="/tmp/sekisho-choices")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 5, 1, 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    procs.ensure_wrk()
    mock_python = procs.ensure_bench_venv()
    python = procs.ensure_venv(
        CHOICES_VENV, PACKAGES, "import uvicorn, uvloop, httptools, aiohttp, orjson, httpx, granian"
    )
    versions = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m; print(', '.join(p + ' ' + "
            "m.version(p) for p in ('uvicorn','uvloop','httptools','granian','aiohttp','httpx',"
            "'orjson')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    say(f"candidates: {versions}")

    micro = json_micro(python)
    print("\nJSON, µs per operation (best of 5 × 20,000; the benchmark's 1.1 KB request):")
    print(f"  {'operation':<20} {'orjson':>8} {'json':>8} {'json ÷ orjson':>14}")
    for case, us in micro.items():
        print(
            f"  {case:<20} {us['orjson']:>8.2f} {us['json']:>8.2f} "
            f"{us['json'] / us['orjson']:>13.1f}×"
        )
    print()

    variants = (
        [
            (s, c, j)
            for s in ("uvicorn", "granian")
            for c in ("aiohttp", "httpx")
            for j in ("orjson", "json")
        ]
        if args.all
        else ONE_AT_A_TIME
    )
    body = procs.chat_body()
    procs_ = Processes(out / "logs")
    with procs_.running():
        mock_port = free_port()
        mock = procs.start_mock(procs_, mock_python, mock_port)
        mock_url = f"http://127.0.0.1:{mock_port}/v1"
        bench_argv = ["--target", f"direct={mock_url}", "--pid", f"direct={mock.pid}"]
        for v in variants:
            port = free_port()
            cmd = [
                str(python),
                str(HERE / "mini_proxy.py"),
                "--server",
                v[0],
                "--client",
                v[1],
                "--json",
                v[2],
                "--port",
                str(port),
                "--upstream",
                mock_url,
            ]
            t0 = time.monotonic()
            proc = procs_.start(label(v), cmd)
            url = f"http://127.0.0.1:{port}/v1"
            chat_url = url + "/chat/completions"
            procs_.wait_until(proc, functools.partial(completes, chat_url, body), label(v), 30)
            say(
                f"{label(v)} on {url} (pid {proc.pid}): first completion after "
                f"{time.monotonic() - t0:.2f} s"
            )
            bench_argv += ["--target", f"{label(v)}={url}", "--pid", f"{label(v)}={proc.pid}"]
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
        sys.path.insert(0, str(HARNESS))
        import bench  # type: ignore[import-not-found]

        bench.main(bench_argv)
    rows: list[dict[str, Any]] = json.loads(bench_json.read_text())["rows"]
    print_choices(rows, [label(v) for v in variants], micro)
    return 0


def print_choices(
    rows: list[dict[str, Any]], names: list[str], micro: dict[str, dict[str, float]]
) -> None:
    scen: list[tuple[str, int]] = []
    for r in rows:
        if (r["kind"], r["conns"]) not in scen:
            scen.append((r["kind"], r["conns"]))
    direct = {(r["round"], r["kind"], r["conns"]): r for r in rows if r["target"] == "direct"}
    base = label(INCUMBENT)
    print(
        "\nserver + client + JSON, medians over rounds; ratios against the incumbent "
        f"({base}) in the same run:"
    )
    hdr = (
        f"{'scenario':<10} {'variant':<24} {'req/s':>9} {'× req/s':>8} {'+p50 ms':>8} "
        f"{'+p99 ms':>8} {'CPU ms/req':>10} {'× CPU':>6} {'RSS MB':>7}"
    )
    print(hdr)
    print("-" * len(hdr))
    med: dict[tuple[str, int, str], dict[str, float]] = {}
    for kind, conns in scen:
        for name in names:
            sel = [r for r in rows if (r["kind"], r["conns"], r["target"]) == (kind, conns, name)]
            add50 = [r["p50_ms"] - direct[(r["round"], kind, conns)]["p50_ms"] for r in sel]
            add99 = [r["p99_ms"] - direct[(r["round"], kind, conns)]["p99_ms"] for r in sel]
            med[(kind, conns, name)] = {
                "rps": statistics.median(r["rps"] for r in sel),
                "add50": statistics.median(add50),
                "add99": statistics.median(add99),
                "cpu": statistics.median(r["cpu_ms_per_req"] for r in sel),
                "rss": max(r["rss_mb"] for r in sel),
            }
        for name in names:
            m, b = med[(kind, conns, name)], med[(kind, conns, base)]
            print(
                f"{kind + ' c' + str(conns):<10} {name:<24} {m['rps']:>9.0f} "
                f"{m['rps'] / b['rps']:>7.2f}× {m['add50']:>8.2f} {m['add99']:>8.2f} "
                f"{m['cpu']:>10.3f} {m['cpu'] / b['cpu']:>5.2f}× {m['rss']:>7.0f}"
            )
    print(
        "\n(× CPU below 1 means cheaper than the incumbent; CPU ms/req is the steadiest figure "
        "on this machine.)"
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nchoices: interrupted; everything it started has been stopped", file=sys.stderr)
        sys.exit(130)
