"""kill -9 under load: the store is not corrupt and every record reported committed is there."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from sekisho.store import Stores
from store.helpers import Region, Sink

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent.parent


def test_kill_9_under_load_loses_no_committed_record(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "store.crash_writer", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=TESTS,
    )
    assert proc.stdout is not None
    committed: dict[str, str] = {}
    while len(committed) < 1500:
        line = proc.stdout.readline()
        assert line, "the writer stopped before the crash"
        record_id, request_id = line.decode().split()
        committed[record_id] = request_id
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for line in proc.stdout.read().decode().splitlines():  # printed before the kill landed
        if len(line.split()) == 2:
            committed[line.split()[0]] = line.split()[1]

    with sqlite3.connect(tmp_path / "store-jp.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    async def check() -> None:
        stores = await Stores.open({"jp": Region("JP")}, tmp_path, audit=Sink())
        jp = stores.region("jp")
        rows = await asyncio.to_thread(jp.records_by_id, "demo", list(committed))
        assert {r.record_id for r in rows} == set(committed)
        for row in rows[:: max(1, len(rows) // 50)]:
            keys = jp.keys_at("demo", row.key_generation)
            prompt = orjson.loads(
                keys.open(row.record_id, "prompt", row.prompt, request_id=row.request_id)
            )
            n, i = committed[row.record_id][1:].split("-")
            assert prompt[0]["content"] == f"prompt {n} {i}"
        assert jp.count() >= len(committed)  # committed but not yet reported is fine
        await stores.close()

    asyncio.run(check())
