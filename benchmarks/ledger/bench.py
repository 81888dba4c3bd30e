"""Ledger benchmark: durable appends/s, inclusion-proof latency at scale, added request latency.

    .venv/bin/python benchmarks/ledger/bench.py [--entries 10000000] [--seconds 5] [--keep DIR]

Prints one table. Targets (issue 5): >= 20,000 durable appends/s on SQLite with group commit;
an inclusion proof at 10 million entries in < 1 ms; the two durable writes of a request
(decision + outcome) add < 2 ms at concurrency 1.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sekisho.ledger import DecisionRecord, Ledger, OutcomeRecord, Signer, keyed_hash
from sekisho.ledger.storage import open_storage

ORIGIN = "bench.sekisho.example/log"
KEY = b"benchmark-tenant-key-0123456789"


def decision(rid: str) -> DecisionRecord:
    return DecisionRecord(
        time=datetime.now(UTC),
        request_id=rid,
        tenant="acme",
        principal="p-4f2a91",
        classification="confidential",
        findings={"email": 1, "jp_phone": 2},
        policy_digest="sha256:9b2c6d0e",
        action="allow",
        endpoint="sakura-tokyo-1",
        jurisdiction_country="JP",
        jurisdiction_region="tokyo",
        operator_name="Example GPU KK",
        operator_country="JP",
        model="llama-3.1-70b",
        storage_region="jp-east",
        prompt_hash=keyed_hash(KEY, rid.encode()),
    )


def outcome(rid: str) -> OutcomeRecord:
    return OutcomeRecord(datetime.now(UTC), rid, 200, 812, 240, keyed_hash(KEY, b"o"), None, 950)


async def appends_per_second(data: Path, concurrency: int, seconds: float) -> float:
    ledger = await Ledger.open(str(data), Signer.generate(ORIGIN), origin=ORIGIN)
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop:
            await ledger.append(decision(f"c{concurrency}-w{w}-{i}"))
            i += 1
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    await ledger.close()
    return done / elapsed


async def request_latency(data: Path, requests: int) -> tuple[float, float]:
    """p50 and p99 (ms) of decision + outcome, each durable, one request at a time."""
    ledger = await Ledger.open(str(data), Signer.generate(ORIGIN), origin=ORIGIN)
    samples = []
    for i in range(requests):
        rid = f"lat-{i}"
        started = time.perf_counter()
        await ledger.append(decision(rid))
        await ledger.append(outcome(rid))
        samples.append((time.perf_counter() - started) * 1000)
    await ledger.close()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def build_big_tree(path: Path, entries: int) -> float:
    storage = open_storage(str(path))
    storage.initialise(ORIGIN)
    have = storage.tree_size()
    started = time.perf_counter()
    chunk = 200_000
    template = decision("bulk").to_bytes()
    while have < entries:
        n = min(chunk, entries - have)
        storage.bulk_load([template + b" %d" % i for i in range(have, have + n)], chunk=chunk)
        have += n
        print(f"  bulk-loaded {have:,} / {entries:,}", flush=True)
    storage.close()
    return time.perf_counter() - started


async def proof_latency(path: Path, probes: int) -> tuple[float, float, int]:
    ledger = await Ledger.open(str(path), Signer.generate(ORIGIN), origin=ORIGIN)
    size = ledger.storage.tree_size()
    rng = random.Random(5)
    samples = []
    for _ in range(probes):
        index = rng.randrange(size)
        started = time.perf_counter()
        proof = ledger.inclusion_proof(index, size)
        samples.append((time.perf_counter() - started) * 1000)
        assert proof
    await ledger.close()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1], size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000_000, help="tree size for proofs")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument("--keep", type=Path, help="directory to keep the big tree in (reused)")
    args = parser.parse_args()

    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="sekisho-ledger-bench-") as tmp:
        for concurrency in (1, 16, 64, 256):
            data = Path(tmp) / f"c{concurrency}"
            data.mkdir()
            rate = asyncio.run(appends_per_second(data, concurrency, args.seconds))
            target = ">= 20,000/s" if concurrency > 1 else "-"
            name = f"durable appends/s, SQLite, concurrency {concurrency}"
            rows.append((name, f"{rate:,.0f}", target))
        data = Path(tmp) / "latency"
        data.mkdir()
        p50, p99 = asyncio.run(request_latency(data, 1000))
        rows.append(("decision + outcome durable, concurrency 1 (p50)", f"{p50:.3f} ms", "< 2 ms"))
        rows.append(("decision + outcome durable, concurrency 1 (p99)", f"{p99:.3f} ms", "-"))

        big_dir = args.keep or Path(tmp) / "big"
        big_dir.mkdir(parents=True, exist_ok=True)
        big = big_dir / f"ledger-{args.entries}.sqlite3"
        print(f"building a {args.entries:,}-entry tree in {big} ...", flush=True)
        build = build_big_tree(big, args.entries)
        p50, p99, size = asyncio.run(proof_latency(big, 2000))
        rows.append((f"inclusion proof at {size:,} entries (p50)", f"{p50:.3f} ms", "< 1 ms"))
        rows.append((f"inclusion proof at {size:,} entries (p99)", f"{p99:.3f} ms", "-"))
        rows.append(("bulk load of the tree (this run)", f"{build:.0f} s", "-"))

    print()
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}".rstrip())
    print(f"python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | {'result':>12} | {'target':>11} |")
    print(f"|{'-' * (width + 2)}|{'-' * 14}|{'-' * 13}|")
    for name, value, target in rows:
        print(f"| {name:<{width}} | {value:>12} | {target:>11} |")


if __name__ == "__main__":
    main()
