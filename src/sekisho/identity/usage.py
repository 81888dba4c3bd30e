"""Usage per tenant, key, model and day: what settle() recorded, for the admin API and reports.

SQLite under the data directory by default (one upsert per request); Redis hashes when Redis is
configured, so that every gateway process adds to the same numbers.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("sekisho.identity.usage")
_MAX_DAYS = 400  # a query spans at most this many days (a year and a bit)
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


class SQLiteUsage:
    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS usage (
        day TEXT NOT NULL, tenant TEXT NOT NULL, key_id TEXT NOT NULL, model TEXT NOT NULL,
        requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        PRIMARY KEY (day, tenant, key_id, model)
    );
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._conn().executescript(self._SCHEMA)

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

    async def record(
        self, day: str, tenant: str, key_id: str, model: str, prompt: int, completion: int
    ) -> None:
        self._conn().execute(
            "INSERT INTO usage VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT DO UPDATE SET"
            " requests = requests + 1, prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
            " completion_tokens = completion_tokens + excluded.completion_tokens",
            (day, tenant, key_id, model, prompt, completion),
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
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class RedisUsage:
    """One hash per day: field tenant␟key␟model␟{r,p,c} → count."""

    def __init__(self, client: Redis, namespace: str, *, retain_days: int = _MAX_DAYS) -> None:
        self.client = client
        self.prefix = f"sekisho:{namespace}:usage:"
        self.retain = retain_days * 86400

    async def record(
        self, day: str, tenant: str, key_id: str, model: str, prompt: int, completion: int
    ) -> None:
        base = _SEP.join((tenant, key_id, model, ""))
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(self.prefix + day, base + "r", 1)
        if prompt:
            pipe.hincrby(self.prefix + day, base + "p", prompt)
        if completion:
            pipe.hincrby(self.prefix + day, base + "c", completion)
        pipe.expire(self.prefix + day, self.retain)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:  # accounting must not fail a finished request
            log.warning("could not record usage in Redis", extra={"error": str(exc)})

    async def query(
        self,
        since: date,
        until: date,
        *,
        tenant: str | None = None,
        key_ids: Collection[str] | None = None,
        model: str | None = None,
    ) -> list[UsageRow]:
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
        return None  # the client belongs to whoever made it (shared with the limiter)
