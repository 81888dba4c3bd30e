"""Usage counters are gathered in memory and written in batches, yet every query is exact."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

import pytest

from sekisho.identity import usage as usage_module
from sekisho.identity.usage import SQLiteUsage


async def test_records_are_batched_and_a_query_sees_every_one(tmp_path: Path) -> None:
    store = SQLiteUsage(tmp_path / "usage.db")
    for _ in range(500):
        await store.record("2026-11-27", "demo", "k1", "gpt-4o", 10, 5)
    with sqlite3.connect(tmp_path / "usage.db") as conn:  # nothing written yet
        assert conn.execute("SELECT COUNT(*) FROM usage").fetchone() == (0,)
    (row,) = await store.query(date(2026, 11, 27), date(2026, 11, 27))
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (500, 5000, 2500)
    await store.close()


async def test_counters_are_flushed_on_a_timer_and_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    monkeypatch.setattr(usage_module, "FLUSH_SECONDS", 0.05)
    store = SQLiteUsage(tmp_path / "usage.db")
    await store.record("2026-11-27", "demo", "k1", "m", 1, 1)
    await asyncio.sleep(0.2)
    with sqlite3.connect(tmp_path / "usage.db") as conn:
        assert conn.execute("SELECT requests FROM usage").fetchone() == (1,)
    await store.record("2026-11-27", "demo", "k1", "m", 1, 1)
    await store.close()
    with sqlite3.connect(tmp_path / "usage.db") as conn:
        assert conn.execute("SELECT requests FROM usage").fetchone() == (2,)


async def test_a_failed_write_keeps_the_counters_for_the_next_flush(tmp_path: Path) -> None:
    store = SQLiteUsage(tmp_path / "usage.db")
    await store.record("2026-11-27", "demo", "k1", "m", 3, 4)
    real = store._write

    def broken(rows: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    store._write = broken  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        await store.flush()
    store._write = real  # type: ignore[method-assign]
    await store.record("2026-11-27", "demo", "k1", "m", 1, 1)
    (row,) = await store.query(date(2026, 11, 27), date(2026, 11, 27))
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (2, 4, 5)
    await store.close()
