#!/usr/bin/env python3
"""What each OpenAI API costs through sekisho: chat completions, the Responses API and legacy
completions, plain and streamed, side by side in one run on one simulated upstream.

    python3 benchmarks/gateway/apis.py [--c 16] [--seconds 6] [--rounds 3] [--output-rule mask]

The upstream is sekisho's own simulator (``sekisho.simulator``, which speaks all three APIs in
their real wire formats; slower than the shared mock, so read the numbers as ratios between the
APIs, not against RESULTS.md's gateway tables). One ``sekisho serve`` process (config from
``config_for_mock.sh``, with ``responses_api`` and ``completions_api`` on) is loaded by wrk with
each API's request in turn, order alternating per round; CPU per request is the gateway
process's, from ``/proc``. Every request carries the same 1,000-character prompt (a customer's
name and an account number: the classifier has work), and every answer the same text; a
streamed answer has the same number of text pieces in both streaming APIs (so CPU per request
compares their per-event cost). ``--output-rule mask`` turns the tenant's output rule on (the
streamed text is then inspected piece by piece). Prints a table: req/s, p50/p99, CPU ms per
request, and each row's ratio to chat's.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True

import procs  # noqa: E402
from ab import load, thread_cpu  # noqa: E402
from procs import REPO, Processes, fail, free_port, say  # noqa: E402

PROMPT = (
    "Please summarise the following account history for customer Tanaka Taro, account number "
    "1234567, in three short bullet points. "
) * 8
PROMPT = PROMPT[:1000]

SIMULATOR = """
import asyncio, sys
from sekisho.simulator import SimulatedEndpoint, SimulatorServer

async def main() -> None:
    sim = SimulatorServer(SimulatedEndpoint("bench-sim", "Benchmark", models=("mock-gpt",),
                                            echo_chars=120))
    await sim.start(port=int(sys.argv[1]))
    await asyncio.Event().wait()

asyncio.run(main())
"""


def bodies() -> dict[str, bytes]:
    chat = {"model": "mock-gpt", "messages": [{"role": "user", "content": PROMPT}]}
    responses = {"model": "mock-gpt", "input": PROMPT}
    completions = {"model": "mock-gpt", "prompt": PROMPT, "max_tokens": 64}
    out = {}
    for name, body, path in (
        ("chat", chat, "/v1/chat/completions"),
        ("responses", responses, "/v1/responses"),
        ("completions", completions, "/v1/completions"),
    ):
        out[f"{name}|{path}"] = json.dumps(body).encode()
        out[f"{name} stream|{path}"] = json.dumps({**body, "stream": True}).encode()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--c", type=int, default=16, help="connections (concurrency)")
    ap.add_argument("--seconds", type=int, default=6, help="measured seconds per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--output-rule", choices=["none", "mask"], default="none")
    ap.add_argument("--only", help="run only this API and mode, e.g. 'responses stream'")
    args = ap.parse_args()
    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():
        fail("no project venv: run `./run test` once first")
    wrk = procs.ensure_wrk()
    logs = Path(tempfile.mkdtemp(prefix="sekisho-apis-"))
    data = logs / "data"
    data.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with Processes(logs).running() as procs_:
        procs_.on_exit(lambda: shutil.rmtree(logs, ignore_errors=True))
        sim_port = free_port()
        procs_.start("simulator", [str(python), "-c", SIMULATOR, str(sim_port)], env)
        port = free_port()
        config = subprocess.run(
            ["bash", str(REPO / "benchmarks" / "config_for_mock.sh"),
             f"http://127.0.0.1:{sim_port}/v1", str(port)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        config = config.replace(
            "    weight: 1\n", "    weight: 1\n    responses_api: true\n    completions_api: true\n"
        )
        if args.output_rule == "mask":
            config += "    detection:\n      output: { action: mask, types: [MY_NUMBER] }\n"
        (data / "sekisho.yaml").write_text(config)
        made = subprocess.run(
            [str(python), "-m", "sekisho", "keys", "create", "--tenant", "demo",
             "--data-dir", str(data)],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        if made.returncode != 0:
            fail(f"`sekisho keys create` failed: {made.stderr.strip()[-400:]}")
        key = made.stdout.strip().splitlines()[-1]
        cmd = [str(python), "-m", "sekisho", "serve", "--config", str(data / "sekisho.yaml")]
        gw = procs_.start("sekisho", [*cmd, "--data-dir", str(data)], env)
        base = f"http://127.0.0.1:{port}"
        chat = bodies()["chat|/v1/chat/completions"]
        procs_.wait_until(
            gw, lambda: procs.completes(f"{base}/v1/chat/completions", chat, key), "sekisho", 60
        )
        say(f"sekisho on {base}, simulator on {sim_port}; c{args.c}, {args.rounds} rounds")
        runs = bodies()
        if args.only:
            runs = {k: v for k, v in runs.items() if k.partition("|")[0] == args.only}
            if not runs:
                fail(f"--only {args.only!r}: no such API and mode")
        rows: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in runs}
        for r in range(args.rounds):
            for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                label, _, path = name.partition("|")
                body_file = logs / f"{label.replace(' ', '_')}.json"
                body_file.write_bytes(runs[name])
                load(wrk, f"{base}{path}", key, body_file, args.c, 2)  # warm-up
                before = thread_cpu(gw.pid)
                w = load(wrk, f"{base}{path}", key, body_file, args.c, args.seconds)
                after = thread_cpu(gw.pid)
                n = max(1, int(w["requests"]))
                errors = sum(int(w[k]) for k in ("err_status", "err_read", "err_timeout"))
                if errors:
                    fail(f"{label}: {errors} errors (see {logs}/sekisho.log)")
                cpu = (sum(after.values()) - sum(before.values())) * 1000 / n
                rps = n / (w["duration_us"] / 1e6)
                rows[name].append((rps, w["p50"] / 1000, w["p99"] / 1000, cpu))
                print(f"r{r + 1} {label:20} {rps:8,.0f} req/s  {cpu:6.3f} ms CPU/req", flush=True)
        print()
        print("| API | req/s | p50 ms | p99 ms | CPU ms/req | CPU ÷ chat's (same mode) |")
        print("|---|---|---|---|---|---|")
        medians = {
            name: tuple(statistics.median(x[i] for x in got) for i in range(4))
            for name, got in rows.items()
        }
        for name, (rps, p50, p99, cpu) in medians.items():
            label = name.partition("|")[0]
            ref = "chat stream" if label.endswith("stream") else "chat"
            ref_cpu = next((m[3] for n, m in medians.items() if n.partition("|")[0] == ref), cpu)
            print(
                f"| {label} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.3f} | "
                f"{cpu / ref_cpu:.2f}× |"
            )


if __name__ == "__main__":
    main()
