#!/usr/bin/env python3
"""A stand-in for wrk when wrk cannot be installed: same command line, same JSON summary.

    loadgen.py -t1 -c16 -d15s --timeout=30s -s wrk_post.lua http://127.0.0.1:8080/v1/chat/completions

Closed loop like wrk: N keep-alive HTTP/1.1 connections, each sending its next request when the
previous response has been read completely (Content-Length or chunked, so SSE streams count to
their last byte). The request comes from the environment that harness/wrk_post.lua reads
(BENCH_BODY, BENCH_API_KEY) and the summary goes to BENCH_OUT in wrk_post.lua's format
(latencies in microseconds). Standard library asyncio with raw streams; it costs more CPU per
request than wrk, so on a small machine absolute req/s are lower, while ratios within one run
remain comparable. -t and -s are accepted and ignored (one event loop; the request is built
here, as wrk_post.lua would build it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import urllib.parse


class Stats:
    def __init__(self) -> None:
        self.latencies_us: list[int] = []
        self.bytes = 0
        self.errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    """Read one response; return (status, bytes read)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    size = len(head)
    if "content-length" in headers:
        n = int(headers["content-length"])
        await reader.readexactly(n)
        return status, size + n
    if "chunked" in headers.get("transfer-encoding", ""):
        while True:
            size_line = await reader.readuntil(b"\r\n")
            n = int(size_line.split(b";")[0], 16)
            data = await reader.readexactly(n + 2)
            size += len(size_line) + len(data)
            if n == 0:
                return status, size
    data = await reader.read()  # no length: until the server closes
    return status, size + len(data)


async def _connection(
    host: str, port: int, request: bytes, stop_at: float, timeout: float, stats: Stats
) -> None:
    while time.monotonic() < stop_at:
        try:
            opened = asyncio.open_connection(host, port)
            reader, writer = await asyncio.wait_for(opened, timeout)
        except (OSError, TimeoutError):
            stats.errors["connect"] += 1
            await asyncio.sleep(0.01)
            continue
        try:
            await _requests(reader, writer, request, stop_at, timeout, stats)
        finally:
            writer.close()


async def _requests(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request: bytes,
    stop_at: float,
    timeout: float,
    stats: Stats,
) -> None:
    """Send requests on one connection until the run ends or the connection breaks."""
    while time.monotonic() < stop_at:
        t0 = time.perf_counter()
        try:
            writer.write(request)
            await writer.drain()
        except OSError:
            stats.errors["write"] += 1
            return
        try:
            status, size = await asyncio.wait_for(_read_response(reader), timeout)
        except TimeoutError:
            stats.errors["timeout"] += 1
            return
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            stats.errors["read"] += 1
            return
        if time.monotonic() <= stop_at:
            stats.latencies_us.append(int((time.perf_counter() - t0) * 1e6))
            stats.bytes += size
            if status > 399:
                stats.errors["status"] += 1


def _percentile(sorted_us: list[int], p: float) -> int:
    if not sorted_us:
        return 0
    return sorted_us[min(len(sorted_us) - 1, int(len(sorted_us) * p / 100))]


async def run(args: argparse.Namespace) -> dict[str, float]:
    url = urllib.parse.urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    with open(os.environ["BENCH_BODY"], "rb") as f:
        body = f.read()
    key = os.environ.get("BENCH_API_KEY", "")
    path = url.path + (f"?{url.query}" if url.query else "")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\nContent-Length: {len(body)}\r\n"
        + (f"Authorization: Bearer {key}\r\n" if key else "")
        + "\r\n"
    )
    request = head.encode() + body
    stats = Stats()
    start = time.monotonic()
    stop_at = start + args.duration
    await asyncio.gather(
        *(
            _connection(host, port, request, stop_at, args.timeout, stats)
            for _ in range(args.connections)
        )
    )
    elapsed = time.monotonic() - start
    lat = sorted(stats.latencies_us)
    return {
        "requests": len(lat),
        "duration_us": int(elapsed * 1e6),
        "bytes": stats.bytes,
        **{f"err_{k}": v for k, v in stats.errors.items()},
        "lat_min": lat[0] if lat else 0,
        "lat_max": lat[-1] if lat else 0,
        "lat_mean": statistics.fmean(lat) if lat else 0.0,
        "lat_stdev": statistics.pstdev(lat) if len(lat) > 1 else 0.0,
        "p50": _percentile(lat, 50),
        "p90": _percentile(lat, 90),
        "p99": _percentile(lat, 99),
        "p999": _percentile(lat, 99.9),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-v"], ["--version"]):
        print("loadgen.py (wrk-compatible Python load generator, sekisho benchmarks)")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-t", "--threads", default="1", help="accepted for wrk compatibility")
    ap.add_argument("-c", "--connections", type=int, required=True)
    ap.add_argument("-d", "--duration", type=_seconds, required=True)
    ap.add_argument("--timeout", type=_seconds, default=30.0)
    ap.add_argument("-s", "--script", help="accepted for wrk compatibility (wrk_post.lua)")
    ap.add_argument("url")
    args = ap.parse_args(argv)
    summary = asyncio.run(run(args))
    out = os.environ.get("BENCH_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(summary, f)
    print(
        f"{summary['requests']} requests in {summary['duration_us'] / 1e6:.2f}s, "
        f"p50 {summary['p50'] / 1000:.2f}ms p99 {summary['p99'] / 1000:.2f}ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
