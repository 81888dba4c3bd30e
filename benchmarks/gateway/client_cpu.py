#!/usr/bin/env python3
"""CPU per upstream request: aiohttp (as the gateway configures it) against sekisho's H1Client.

    .venv/bin/python benchmarks/gateway/client_cpu.py            # ~30 s: N=5000, 3 rounds
    .venv/bin/python benchmarks/gateway/client_cpu.py --n 1000 --rounds 1   # a quick look

Starts the shared mock upstream (uvloop + httptools, from /tmp/bench-venv) on a free loopback
port, then in this one process, on uvloop as the gateway runs, sends the shared benchmark's
chat body N times per cell: in batches of 1 and of 16 concurrent requests (asyncio.gather),
non-streaming (whole body read) and streaming (the body read line by line, as the gateway's
SSE loop does). Both clients run the same call shape as the transport: post, check status and
content-type, read or iterate lines, release. Cells alternate between the clients, round after
round, so both see the same machine. The figure is process CPU (time.process_time) per request
in this process only: the mock runs elsewhere. Median over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True

import procs  # noqa: E402
from procs import BENCH_VENV, Processes, free_port, say  # noqa: E402

SHARED_MOCK = Path("/work/shared/bench/mock_upstream.py")
HEADERS = {
    "content-type": "application/json",
    "user-agent": "sekisho/bench",
    "authorization": "Bearer mock-key",
}
CONNECT, FIRST_BYTE, TOTAL = 5.0, 30.0, 60.0

Request = Callable[[], Awaitable[int]]


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.node()} | {cpu} | {os.cpu_count()} cores | Linux {platform.release()} | "
        f"Python {platform.python_version()}"
    )


def aiohttp_requests(url: str, body: bytes, stream_body: bytes) -> tuple[Request, Request, object]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
    session = aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("accept-encoding",)
    )
    timeout = aiohttp.ClientTimeout(total=TOTAL, connect=CONNECT, sock_read=FIRST_BYTE)

    async def plain() -> int:
        resp = await session.post(
            url, data=body, headers=dict(HEADERS), timeout=timeout, allow_redirects=False
        )
        assert resp.status == 200 and "application/json" in resp.headers.get("content-type", "")
        try:
            data = await resp.read()
        finally:
            resp.release()
        return len(data)

    async def stream() -> int:
        resp = await session.post(
            url, data=stream_body, headers=dict(HEADERS), timeout=timeout, allow_redirects=False
        )
        assert resp.status == 200 and "text/event-stream" in resp.headers.get("content-type", "")
        n = 0
        content = resp.content
        while True:
            line = await content.readline()
            if not line:
                break
            line = line.rstrip(b"\r\n")
            n += 1
        resp.close()
        return n

    return plain, stream, session


def h1_requests(url: str, body: bytes, stream_body: bytes) -> tuple[Request, Request, object]:
    from sekisho.providers.h1 import H1Client

    client = H1Client()

    async def plain() -> int:
        status, headers, resp = await client.post(
            url,
            body,
            dict(HEADERS),
            connect=CONNECT,
            first_byte=FIRST_BYTE,
            total=TOTAL,
            endpoint_id="mock",
        )
        assert status == 200 and "application/json" in headers.get("content-type", "")
        data = await resp.read()
        return len(data)

    async def stream() -> int:
        status, headers, resp = await client.post(
            url,
            stream_body,
            dict(HEADERS),
            connect=CONNECT,
            first_byte=FIRST_BYTE,
            total=TOTAL,
            endpoint_id="mock",
        )
        assert status == 200 and "text/event-stream" in headers.get("content-type", "")
        n = 0
        async for _line in resp.lines():
            n += 1
        resp.close()
        return n

    return plain, stream, client


async def cell(request: Request, n: int, concurrency: int) -> float:
    """CPU µs per request for n requests, ``concurrency`` at a time."""
    gc.collect()
    t0 = time.process_time()
    if concurrency == 1:
        for _ in range(n):
            await request()
    else:
        for _ in range(n // concurrency):
            await asyncio.gather(*[request() for _ in range(concurrency)])
    return (time.process_time() - t0) / (n - n % concurrency) * 1e6


async def measure(url: str, n: int, rounds: int, concurrencies: list[int]) -> None:
    body = procs.chat_body()
    stream_body = body[:-1] + b', "stream": true}'
    clients = {
        "aiohttp": aiohttp_requests(url, body, stream_body),
        "h1": h1_requests(url, body, stream_body),
    }
    # Each client's answers must be the same before its cost means anything.
    for name, (plain, stream, _) in clients.items():
        size, lines = await plain(), await stream()
        say(f"{name}: {size} body bytes, {lines} stream lines per request")
        for _ in range(300):  # warm: connections open, caches filled
            await plain()
            await stream()
    results: dict[tuple[str, str, int], list[float]] = {}
    for r in range(rounds):
        for mode in ("plain", "stream"):
            for c in concurrencies:
                order = list(clients) if r % 2 == 0 else list(reversed(clients))
                for name in order:
                    plain, stream, _ = clients[name]
                    us = await cell(plain if mode == "plain" else stream, n, c)
                    results.setdefault((mode, name, c), []).append(us)
        say(f"round {r + 1}/{rounds} done")
    for _, _, handle in clients.values():
        await handle.close()  # type: ignore[attr-defined]

    print()
    print(f"CPU µs per request in the client process (median of {rounds} rounds, N={n})")
    print()
    print("| mode | concurrency | aiohttp µs | h1 µs | h1/aiohttp | saved µs | rounds a / h1 |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for mode in ("plain", "stream"):
        for c in concurrencies:
            a = results[(mode, "aiohttp", c)]
            h = results[(mode, "h1", c)]
            am, hm = statistics.median(a), statistics.median(h)
            each = " ".join(f"{x:.0f}" for x in a) + " / " + " ".join(f"{x:.0f}" for x in h)
            print(
                f"| {mode} | {c} | {am:.1f} | {hm:.1f} | {hm / am:.2f} | {am - hm:.1f} | {each} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="requests per cell (default 5000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16", help="comma-separated (default 1,16)")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = ap.parse_args()
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        python = procs.ensure_bench_venv()
    mock = SHARED_MOCK if SHARED_MOCK.exists() else procs.HARNESS / "mock_upstream.py"
    print(f"# machine: {machine()}")
    print(f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}; loop: {args.loop}; mock: {mock}")
    with Processes(Path("/tmp/sekisho-client-cpu-logs")).running() as ps:
        port = free_port()
        proc = ps.start("mock", [str(python), str(mock), "--port", str(port)])

        def up() -> bool:
            try:
                return procs.http_json(f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200
            except Exception:
                return False

        ps.wait_until(proc, up, "the mock upstream", 20)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(measure(url, args.n, args.rounds, concurrencies))
        else:
            asyncio.run(measure(url, args.n, args.rounds, concurrencies))


if __name__ == "__main__":
    main()
