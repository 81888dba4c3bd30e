#!/usr/bin/env python3
"""One large prompt and everyone else: how long other requests wait while the gateway handles a
document-sized prompt dense with personal data.

    python3 benchmarks/gateway/large_prompt.py [--src SRC] [--rounds 3]

Starts ``sekisho serve --with-simulators`` (the example config, a fresh data directory; ``--src``
a copy of ``src/`` to measure another build), then per round sends one ~3.9 MB prompt holding
150,000 e-mail addresses and, while it is handled, small requests one after another on another
connection. Prints the large request's time and the small requests' worst and median latency.
A gateway that scans on its event loop makes every other client wait for the whole scan.
Standard library only (and the project's venv).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True

from procs import REPO, Processes, free_port, say  # noqa: E402

VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def post(port: int, key: str, body: bytes) -> tuple[int, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, (time.perf_counter() - started) * 1000


def chat(text: str) -> bytes:
    return json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}).encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(REPO / "src"), help="the sekisho source tree to run")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not VENV_PYTHON.exists():
        raise SystemExit("run ./run test once first: it makes the project's venv")
    big = chat(" ".join(f"user{i}@example{i % 7}.co.jp" for i in range(150_000)))
    small = chat("hello")
    with tempfile.TemporaryDirectory(prefix="sekisho-large-") as tmp:
        data, port = Path(tmp) / "data", free_port()
        env = {**os.environ, "PYTHONPATH": args.src}
        procs = Processes(Path(tmp) / "logs")
        with procs.running():
            cmd = [str(VENV_PYTHON), "-m", "sekisho", "serve", "--with-simulators",
                   "--config", str(REPO / "examples" / "sekisho.yaml"),
                   "--data-dir", str(data), "--port", str(port)]  # fmt: skip
            proc = procs.start("sekisho", cmd, env)

            def ready() -> bool:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                    c.request("GET", "/readyz")
                    return c.getresponse().status == 200
                except OSError:
                    return False

            procs.wait_until(proc, ready, "sekisho", 30)
            create = [str(VENV_PYTHON), "-m", "sekisho", "keys", "create",
                      "--tenant", "demo", "--data-dir", str(data)]  # fmt: skip
            made = subprocess.run(create, capture_output=True, text=True, env=env, check=True)
            key = made.stdout.strip().splitlines()[-1]
            post(port, key, small)
            say(f"build {args.src}; prompt {len(big) / 1e6:.1f} MB, 150,000 addresses")
            print("| round | large request ms | small requests during it | small p50 ms "
                  "| small max ms |")  # fmt: skip
            print("|---|---|---|---|---|")
            for r in range(1, args.rounds + 1):
                result: dict[str, tuple[int, float]] = {}

                def large(into: dict[str, tuple[int, float]] = result) -> None:
                    into["big"] = post(port, key, big)

                worker = threading.Thread(target=large)
                worker.start()
                latencies = []
                while worker.is_alive():
                    status, ms = post(port, key, small)
                    assert status == 200, status
                    latencies.append(ms)
                worker.join()
                status, big_ms = result["big"]
                assert status == 200, status
                print(f"| {r} | {big_ms:,.0f} | {len(latencies)} | "
                      f"{statistics.median(latencies):,.1f} | {max(latencies):,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
