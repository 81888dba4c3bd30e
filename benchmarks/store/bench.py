"""Sustained encrypted record writes per second (SQLite, PostgreSQL) and the latency one put
adds to a request at concurrency 1.

    .venv/bin/python benchmarks/store/bench.py [--seconds 10] [--concurrency 64] [--no-postgres]

Each record is a realistic exchange: a ~1 KiB prompt and ~0.5 KiB output sealed with
AES-256-GCM (full retention), keyed hashes of both, and three indexed identifiers. Every put
waits for its commit (SQLite WAL with synchronous=FULL, or a PostgreSQL commit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from sekisho.store import Exchange, RetentionSpec, Stores
from sekisho.types import Level

PG_URL = os.environ.get("SEKISHO_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Region:
    country: str
    store: str


@dataclass
class Tenant:
    home_region: str
    retention: RetentionSpec


class NullAudit:
    async def admin(
        self, actor: str, action: str, target: str, details: Mapping[str, object]
    ) -> None:
        return None


def exchange(i: int) -> Exchange:
    prompt = [
        {"role": "system", "content": "あなたは銀行の顧客サポート担当です。" * 8},
        {
            "role": "user",
            "content": f"口座番号 1234567 の残高を教えてください。電話 090-1234-{i % 10000:04d}"
            * 6,
        },
    ]
    return Exchange(
        request_id=f"req-{i}",
        tenant="bench",
        created_at=datetime.now(UTC),
        level=Level.CONFIDENTIAL,
        retention=RetentionSpec(mode="full", days=7),
        endpoint_id="sim-domestic-tokyo",
        model="gpt-4o",
        prompt=orjson.dumps(prompt),
        output=("ご確認ありがとうございます。残高は以下の通りです。" * 10).encode(),
        identifiers=[
            ("PHONE_JP", f"090-1234-{i % 10000:04d}"),
            ("BANK_ACCOUNT_JP", "1234567"),
            ("PERSON", "山田太郎"),
        ],
        prompt_tokens=300,
        completion_tokens=120,
    )


async def sustained(stores: Stores, seconds: float, concurrency: int) -> tuple[int, float]:
    tenant = stores.for_tenant("bench", "r")
    samples = [exchange(i) for i in range(1000)]
    done = 0
    stop = time.perf_counter() + seconds

    async def writer(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop:
            await tenant.put(samples[i % 1000])
            done += 1
            i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(writer(k) for k in range(concurrency)))
    return done, time.perf_counter() - start


async def latency(stores: Stores, n: int) -> list[float]:
    tenant = stores.for_tenant("bench", "r")
    samples = [exchange(i) for i in range(n)]
    out = []
    for ex in samples:
        t = time.perf_counter()
        await tenant.put(ex)
        out.append((time.perf_counter() - t) * 1000)
    return out


async def run(name: str, store: str, data_dir: Path, args: argparse.Namespace) -> dict[str, object]:
    stores = await Stores.open(
        {"r": Region("JP", store)},
        data_dir,
        audit=NullAudit(),
        tenants={"bench": Tenant("r", RetentionSpec(mode="full", days=7))},
        migrate=True,
    )
    try:
        await sustained(stores, 1.0, args.concurrency)  # warm up
        done, elapsed = await sustained(stores, args.seconds, args.concurrency)
        lat = sorted(await latency(stores, args.latency_samples))
    finally:
        await stores.close()
    result = {
        "backend": name,
        "records_per_s": round(done / elapsed),
        "concurrency": args.concurrency,
        "p50_ms": round(statistics.median(lat), 3),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 3),
    }
    print(
        f"{name:10s} {result['records_per_s']:>7,} records/s at concurrency {args.concurrency}; "
        f"one put at concurrency 1: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms"
    )
    return result


def _drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for s in (schema, schema + "_keyring"):
            conn.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')


async def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--latency-samples", type=int, default=500)
    p.add_argument("--no-postgres", action="store_true")
    args = p.parse_args()
    print(
        f"# {datetime.now(UTC):%Y-%m-%d} {platform.node()} {platform.machine()} "
        f"{os.cpu_count()} CPU, Python {platform.python_version()}, {platform.platform()}"
    )
    with tempfile.TemporaryDirectory(prefix="sekisho-bench-") as tmp:
        await run("sqlite", "sqlite", Path(tmp), args)
        if not args.no_postgres:
            schema = "bench_" + uuid.uuid4().hex[:8]
            try:
                await run("postgresql", f"{PG_URL}?schema={schema}", Path(tmp) / "pg", args)
            except Exception as exc:  # say so, never silently skip
                print(f"postgresql skipped: {exc}", file=sys.stderr)
            finally:
                with contextlib.suppress(Exception):
                    _drop_schema(schema)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
