"""Usage per tenant, key, model and day: what settle() recorded, for the admin API and reports.

SQLite under the data directory by default: requests add to counters in memory, written in one
transaction at most every ``FLUSH_SECONDS`` (and before every query and at close), so that the
request path never waits on a database write for accounting. Redis hashes when Redis is
configured, so that every gateway process adds to the same numbers, batched the same way.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sekisho.errors import UnusableFile

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("sekisho.identity.usage")
_MAX_DAYS = 400  # a query spans at most this many days (a year and a bit)
FLUSH_SECONDS = 1.0
_SEP = "\x1f"


@dataclass(frozen=True, slots=True)
class UsageRow:
    tenant: str
    key_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageStore(Protocol):
    async def record(
        self, day: str, tenant: str, key_id: str, model: str, prompt: int, completion: int
    ) -> None: ...

    async def query(
        self,
        since: date,
        until: date,
        *,
        tenant: str | None = None,
        key_ids: Collection[str] | None = None,
        model: str | None = None,
    ) -> list[UsageRow]:
        """Sums over the days since..until (inclusive), one row per tenant, key and model."""

    async def close(self) -> None: ...


def _days(since: date, until: date) -> list[str]:
    if until < since:
        raise ValueError(f"'until' ({until}) is before 'since' ({since})")
    span = (until - since).days + 1
    if span > _MAX_DAYS:
        raise ValueError(f"a usage query spans at most {_MAX_DAYS} days, not {span}")
    return [(since + timedelta(days=i)).isoformat() for i in range(span)]


def _keep(
    row: UsageRow, tenant: str | None, key_ids: Collection[str] | None, model: str | None
) -> bool:
    return (
        (tenant is None or row.tenant == tenant)
        and (key_ids is None or row.key_id in key_ids)
        and (model is None or row.model == model)
    )


class _Batched(abc.ABC):
    """Counters gathered in memory by ``record`` and written by ``_write_batch`` at most every
    ``FLUSH_SECONDS``, before every query and at close. A failed write keeps them for the next
    flush: the request path never waits on, or fails for, accounting."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str, str, str], list[int]] = {}
        self._flusher: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()

    async def record(
        self, day: str, tenant: str, key_id: str, model: str, prompt: int, completion: int
    ) -> None:
        acc = self._pending.get((day, tenant, key_id, model))
        if acc is None:
            self._pending[(day, tenant, key_id, model)] = [1, prompt, completion]
        else:
            acc[0] += 1
            acc[1] += prompt
            acc[2] += completion
        if self._flusher is None:
            loop = asyncio.get_running_loop()
            self._flusher = loop.call_later(FLUSH_SECONDS, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flusher = None
        task = asyncio.get_running_loop().create_task(self.flush())
        task.add_done_callback(_log_failure)

    async def flush(self) -> None:
        """Write the counters gathered so far, in one batch."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            rows = [(d, t, k, m, v[0], v[1], v[2]) for (d, t, k, m), v in batch.items()]
            try:
                await self._write_batch(rows)
            except Exception:
                for k, v in batch.items():  # keep them for the next flush
                    acc = self._pending.setdefault(k, [0, 0, 0])
                    for i in range(3):
                        acc[i] += v[i]
                raise

    @abc.abstractmethod
    async def _write_batch(self, rows: list[tuple[str, str, str, str, int, int, int]]) -> None:
        """Add one batch of counters to the backing store (SQLite, Redis)."""

    async def _stop_flushing(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        with contextlib.suppress(Exception):
            await self.flush()


class SQLiteUsage(_Batched):
    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS usage (
        day TEXT NOT NULL, tenant TEXT NOT NULL, key_id TEXT NOT NULL, model TEXT NOT NULL,
        requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        PRIMARY KEY (day, tenant, key_id, model)
    );
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        try:
            self._conn().executescript(self._SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise UnusableFile("the usage counters", path, exc) from None

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # Usage is accounting, not the ledger: a power cut may lose the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
        return conn

    async def _write_batch(self, rows: list[tuple[str, str, str, str, int, int, int]]) -> None:
        # a batch a second at most: on the event loop it costs less than a thread hop would
        self._write(rows)

    def _write(self, rows: list[tuple[str, str, str, str, int, int, int]]) -> None:
        conn = self._conn()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                " requests = requests + excluded.requests,"
                " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                " completion_tokens = completion_tokens + excluded.completion_tokens",
                rows,
            )

    async def query(
        self,
        since: date,
        until: date,
        *,
        tenant: str | None = None,
        key_ids: Collection[str] | None = None,
        model: str | None = None,
    ) -> list[UsageRow]:
        days = _days(since, until)
        await self.flush()
        sql = (
            "SELECT tenant, key_id, model, SUM(requests), SUM(prompt_tokens),"
            " SUM(completion_tokens) FROM usage WHERE day BETWEEN ? AND ?"
        )
        args: list[str] = [days[0], days[-1]]
        if tenant is not None:
            sql += " AND tenant = ?"
            args.append(tenant)
        if model is not None:
            sql += " AND model = ?"
            args.append(model)
        rows = self._conn().execute(sql + " GROUP BY tenant, key_id, model ORDER BY 1, 2, 3", args)
        out = [UsageRow(*r) for r in rows]
        return [r for r in out if key_ids is None or r.key_id in key_ids]

    async def close(self) -> None:
        await self._stop_flushing()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning(
            "could not write usage counters; kept for the next flush",
            extra={"error": str(task.exception())},
        )


class RedisUsage(_Batched):
    """One hash per day: field tenant␟key␟model␟{r,p,c} → count. Every process adds its
    batches to the same hashes (HINCRBY), so a query sees every process's usage up to its
    last flush (at most ``FLUSH_SECONDS`` old)."""

    def __init__(self, client: Redis, namespace: str, *, retain_days: int = _MAX_DAYS) -> None:
        super().__init__()
        self.client = client
        self.prefix = f"sekisho:{namespace}:usage:"
        self.retain = retain_days * 86400

    async def _write_batch(self, rows: list[tuple[str, str, str, str, int, int, int]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for day, tenant, key_id, model, requests, prompt, completion in rows:
            base = _SEP.join((tenant, key_id, model, ""))
            pipe.hincrby(self.prefix + day, base + "r", requests)
            if prompt:
                pipe.hincrby(self.prefix + day, base + "p", prompt)
            if completion:
                pipe.hincrby(self.prefix + day, base + "c", completion)
        for day in {row[0] for row in rows}:
            pipe.expire(self.prefix + day, self.retain)
        await pipe.execute()

    async def query(
        self,
        since: date,
        until: date,
        *,
        tenant: str | None = None,
        key_ids: Collection[str] | None = None,
        model: str | None = None,
    ) -> list[UsageRow]:
        await self.flush()
        pipe = self.client.pipeline(transaction=False)
        for day in _days(since, until):
            pipe.hgetall(self.prefix + day)
        sums: dict[tuple[str, str, str], list[int]] = {}
        for fields in await pipe.execute():
            for raw_field, raw_value in fields.items():
                parts = raw_field.decode().split(_SEP)
                if len(parts) != 4:
                    continue
                t, k, m, kind = parts
                acc = sums.setdefault((t, k, m), [0, 0, 0])
                acc["rpc".index(kind)] += int(raw_value)
        rows = [UsageRow(t, k, m, *acc) for (t, k, m), acc in sorted(sums.items())]
        return [r for r in rows if _keep(r, tenant, key_ids, model)]

    async def close(self) -> None:
        await self._stop_flushing()  # the client belongs to whoever made it (the limiter)
