"""API keys: prefixed, shown once, stored only as a hash, scoped to a tenant.

A key looks like ``sk-sekisho-<key id>-<secret>``. The key id is public (it appears in logs and
in the ledger's pseudonymous principal); only SHA-256 of the whole key is stored. Keys are
256-bit random values, so a fast hash is the right tool here (a slow password hash protects
low-entropy secrets; these are not).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sekisho.errors import AuthenticationFailed

PREFIX = "sk-sekisho-"
ROLES = ("admin", "auditor", "developer", "app")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      TEXT PRIMARY KEY,
    key_hash    BLOB NOT NULL,
    tenant      TEXT NOT NULL,
    role        TEXT NOT NULL,
    name        TEXT NOT NULL DEFAULT '',
    models      TEXT,
    created_at  REAL NOT NULL,
    expires_at  REAL,
    revoked_at  REAL
);
"""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for."""

    tenant: str
    key_id: str
    role: str
    models: frozenset[str] | None = None  # None: every model the tenant's policy allows

    @property
    def subject(self) -> str:
        return f"key:{self.key_id}"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    tenant: str
    role: str
    name: str
    models: tuple[str, ...] | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None


class KeyStore:
    """API keys in a SQLite file under the data directory."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        with self._conn() as conn:
            conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
        return conn

    def create(
        self,
        tenant: str,
        *,
        role: str = "app",
        name: str = "",
        models: tuple[str, ...] | None = None,
        expires_at: float | None = None,
    ) -> tuple[str, KeyInfo]:
        """Create a key; return the full key (to show once) and its stored description."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        full = f"{PREFIX}{key_id}-{secret}"
        now = time.time()
        self._conn().execute(
            "INSERT INTO api_keys (key_id, key_hash, tenant, role, name, models, created_at,"
            " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key_id,
                _hash(full),
                tenant,
                role,
                name,
                ",".join(models) if models is not None else None,
                now,
                expires_at,
            ),
        )
        info = KeyInfo(key_id, tenant, role, name, models, now, expires_at, None)
        return full, info

    def revoke(self, key_id: str) -> bool:
        cur = self._conn().execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        return cur.rowcount == 1

    def list(self, tenant: str | None = None) -> list[KeyInfo]:
        sql = "SELECT key_id, tenant, role, name, models, created_at, expires_at, revoked_at FROM api_keys"
        args: tuple[str, ...] = ()
        if tenant is not None:
            sql += " WHERE tenant = ?"
            args = (tenant,)
        rows = self._conn().execute(sql + " ORDER BY created_at", args).fetchall()
        return [
            KeyInfo(r[0], r[1], r[2], r[3], tuple(r[4].split(",")) if r[4] is not None else None,
                    r[5], r[6], r[7])
            for r in rows
        ]

    def authenticate(self, presented: str) -> Principal:
        """Resolve a presented key to a Principal, or raise AuthenticationFailed saying why."""
        if not presented.startswith(PREFIX):
            raise AuthenticationFailed(
                "Invalid API key: sekisho keys start with 'sk-sekisho-'. "
                "Create one with `sekisho keys create --tenant NAME`."
            )
        rest = presented[len(PREFIX) :]
        key_id, _, _ = rest.partition("-")
        row = self._conn().execute(
            "SELECT key_hash, tenant, role, models, expires_at, revoked_at FROM api_keys"
            " WHERE key_id = ?",
            (key_id,),
        ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _hash(presented)):
            raise AuthenticationFailed("Invalid API key: no such key (it may have been mistyped).")
        if row[5] is not None:
            raise AuthenticationFailed(f"API key {key_id} has been revoked.")
        if row[4] is not None and row[4] <= time.time():
            raise AuthenticationFailed(
                f"API key {key_id} expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(row[4]))}."
            )
        models = frozenset(row[3].split(",")) if row[3] is not None else None
        return Principal(tenant=row[1], key_id=key_id, role=row[2], models=models)


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
