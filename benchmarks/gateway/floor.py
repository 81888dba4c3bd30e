#!/usr/bin/env python3
"""The durability floor: what a request's three durable commits cost on this disk, with no
gateway around them.

    python3 benchmarks/gateway/floor.py [--dir DIR] [--n 1000]

A request through sekisho commits three times before its answer goes out: the decision entry
(ledger), the exchange (the home region's store) and the outcome entry (ledger). At c=1 no
other request shares those commits (group commit only helps under concurrency), so each one is
a WAL append and an ``fdatasync`` of its own. This measures that floor: three SQLite files in
WAL mode with ``synchronous=FULL`` (as the ledger and the store open theirs), one small indexed
row committed to each per "request", in one thread. It is a lower bound: the real commits
write more pages (Merkle nodes, indexes, encrypted bodies) and hop between threads.

It prints, and ``floor()`` returns, the CPU (user + system, this process) and the wall time per
three commits, so ``run.py`` can set the c=1 budgets beside what the disk itself costs, in the
same run. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path


def floor(directory: Path, n: int = 1000) -> dict[str, float]:
    """CPU ms and wall ms (median, p99) per three durable commits, in ``directory``."""
    with tempfile.TemporaryDirectory(prefix="sekisho-floor-", dir=directory) as tmp:
        conns = []
        for i in range(3):
            conn = sqlite3.connect(Path(tmp) / f"floor{i}.sqlite3", isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, request_id TEXT, body BLOB)")
            conn.execute("CREATE INDEX t_request ON t (request_id)")
            conns.append(conn)
        sql = "INSERT INTO t (request_id, body) VALUES (?, ?)"
        for _ in range(50):  # warm-up: the files' first pages
            for conn in conns:
                conn.execute(sql, (os.urandom(8).hex(), os.urandom(600)))
        walls = []
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(n):
            t0 = time.perf_counter()
            for conn in conns:
                conn.execute(sql, (os.urandom(8).hex(), os.urandom(600)))
            walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        for conn in conns:
            conn.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    walls.sort()
    return {
        "cpu_ms": cpu * 1000 / n,
        "wall_p50_ms": statistics.median(walls) * 1000,
        "wall_p99_ms": walls[min(n - 1, int(n * 0.99))] * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--n", type=int, default=1000, help="requests (three commits each)")
    args = ap.parse_args()
    if not args.dir.is_dir():
        ap.error(f"--dir {args.dir}: not a directory")
    if args.n < 1:
        ap.error("--n must be at least 1")
    got = floor(args.dir, args.n)
    print(f"three durable commits in {args.dir}, {args.n} times:")
    print(f"  CPU  {got['cpu_ms']:.3f} ms per request")
    print(f"  wall {got['wall_p50_ms']:.3f} ms p50, {got['wall_p99_ms']:.3f} ms p99")


if __name__ == "__main__":
    main()
