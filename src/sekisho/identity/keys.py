"""API keys: prefixed, shown once, stored only as a hash, scoped to a tenant.

A key looks like ``sk-sekisho-<key id>-<secret>``. The key id is public (it appears in logs and
in the ledger's pseudonymous principal); only SHA-256 of the whole key is stored. Keys are
256-bit random values, so a fast hash is the right tool here (a slow password hash protects
low-entropy secrets; these are not).

Every gateway process shares one SQLite file. A verified key is remembered in each process,
but every change to the keys (revoke, rotate) also writes a new random *epoch* into a small
memory-mapped file beside the database, which every process on the machine sees at once: a
cached answer is used only while the epoch is unchanged, its expiry has not passed and it is
younger than ``CACHE_SECONDS`` (a safety net for edits made to the database by other means).
So a revocation or an expiry set by rotation takes effect on the very next request in every
process, and a request whose key is known costs a dictionary lookup instead of a SQLite read
(which, measured under load, also hands the GIL to the ledger and store writer threads).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import mmap
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sekisho.errors import AuthenticationFailed, NotFound, PermissionDenied, UnusableFile
from sekisho.identity.roles import ROLES, TENANT_ROLES, check_role

__all__ = [
    "MAX_LIFETIME_SECONDS",
    "PREFIX",
    "ROLES",
    "KeyInfo",
    "KeyStore",
    "Principal",
    "TenantKeyLimit",
    "new_key_id",
    "shown_time",
]

PREFIX = "sk-sekisho-"
_KEY_ID = re.compile(r"^[0-9a-f]{12}$")
CACHE_SECONDS = 5.0
_CACHE_LIMIT = 10_000
_EPOCH_BYTES = 16
# The longest life a key may be given: 100 years. No credential needs more, and an expiry far
# beyond it (1e20 seconds) is past every date a clock or a datetime can show.
MAX_LIFETIME_SECONDS = 100 * 365 * 86400
_LAST_SHOWN = 253402300799.0  # 9999-12-31T23:59:59Z, the last second a datetime can show

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
# Columns added after the first release; an older file is upgraded in place on open.
_ADDED_COLUMNS = (
    ("owner", "TEXT"),  # subject of whoever created the key (developers see only their own)
    ("rotated_from", "TEXT"),  # key id this key succeeded
    ("successor", "TEXT"),  # key id that replaced this key on rotation
    # subject that rotated its predecessor into this key over the API (NULL: the operator's
    # command line, or before this column): only a key's own rotation carries its work on
    ("rotated_by", "TEXT"),
)
_COLUMNS = (
    "key_id, tenant, role, name, models, created_at, expires_at, revoked_at, owner,"
    " rotated_from, successor"
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: an API key or a person or workload signed in through OIDC."""

    tenant: str
    key_id: str  # API key id, or a stable pseudonym of an OIDC subject ("oidc-…")
    role: str  # the most privileged of `roles`
    models: frozenset[str] | None = None  # None: every model the tenant's policy allows
    roles: frozenset[str] = frozenset()  # empty when constructed: {role}
    subject: str = ""  # empty when constructed: "key:<key_id>"
    auth: str = "api_key"  # "api_key" or "oidc"
    expires_at: float | None = None  # the credential's expiry, if it has one

    def __post_init__(self) -> None:
        if not self.roles:
            object.__setattr__(self, "roles", frozenset({self.role}))
        if not self.subject:
            object.__setattr__(self, "subject", f"key:{self.key_id}")

    @property
    def actor(self) -> str:
        """Who the transparency log names as acting: a key by its public id; a signed-in
        person by the pseudonym of their subject, never the subject itself (an e-mail address
        at many providers), which a ledger entry could never be rid of."""
        return self.subject if self.auth != "oidc" else self.key_id


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
    owner: str | None = None
    rotated_from: str | None = None
    successor: str | None = None

    def state(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def new_key_id() -> str:
    return secrets.token_hex(6)


class KeyStore:
    """API keys in a SQLite file under the data directory, shared by every gateway process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._epoch = _open_epoch(path.with_name(path.name + ".epoch"))
        self._cache: dict[bytes, tuple[Principal, bytes, float]] = {}
        try:
            conn = self._conn()
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise UnusableFile("the API key store", path, exc) from None
        have = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
        for name, kind in _ADDED_COLUMNS:
            if name not in have:
                try:
                    conn.execute(f"ALTER TABLE api_keys ADD COLUMN {name} {kind}")
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise

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
        owner: str | None = None,
        key_id: str | None = None,
        max_active: int | None = None,
    ) -> tuple[str, KeyInfo]:
        """Create a key; return the full key (to show once) and its stored description.

        ``key_id`` may be chosen beforehand (see new_key_id) so that an audit record written
        before the key exists can name it. With ``max_active``, a key of the tenant's own
        (``TENANT_ROLES``) that would be one more than that many active is refused
        (``TenantKeyLimit``), counted in the same transaction as the key is written.
        """
        check_role(role)
        if not tenant:
            raise ValueError("a key needs a tenant")
        if models is not None and (not models or any(not m or "," in m for m in models)):
            raise ValueError("models must be a non-empty list of model names without commas")
        if expires_at is not None and not (
            math.isfinite(expires_at) and expires_at <= time.time() + MAX_LIFETIME_SECONDS + 86400
        ):
            raise ValueError(
                f"a key lives at most {MAX_LIFETIME_SECONDS // 86400} days (expiry {expires_at!r})"
            )
        key_id = key_id or new_key_id()
        if not _KEY_ID.match(key_id):
            raise ValueError(f"key id {key_id!r} is not 12 lowercase hex digits")
        full, info = self._new(key_id, tenant, role, name, models, expires_at, owner, None)
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            # A maker revoked after it was authenticated makes nothing: the revocation has
            # already walked its keys and would not see this one.
            maker = owner[len("key:") :] if owner and owner.startswith("key:") else None
            row = conn.execute(
                "SELECT revoked_at FROM api_keys WHERE key_id = ?", (maker,)
            ).fetchone()
            if row is not None and row[0] is not None:
                raise AuthenticationFailed(
                    f"API key {maker} has been revoked; it makes no more keys."
                )
            if max_active is not None and role in TENANT_ROLES:
                active = self.active_count(tenant)
                if active >= max_active:
                    raise TenantKeyLimit(tenant, active, max_active)
            self._insert(full, info)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return full, info

    def _new(
        self,
        key_id: str,
        tenant: str,
        role: str,
        name: str,
        models: tuple[str, ...] | None,
        expires_at: float | None,
        owner: str | None,
        rotated_from: str | None,
    ) -> tuple[str, KeyInfo]:
        full = f"{PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        info = KeyInfo(
            key_id, tenant, role, name, models, time.time(), expires_at, None, owner, rotated_from
        )
        return full, info

    def _insert(self, full: str, info: KeyInfo) -> None:
        self._conn().execute(
            "INSERT INTO api_keys (key_id, key_hash, tenant, role, name, models, created_at,"
            " expires_at, owner, rotated_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                info.key_id,
                _hash(full),
                info.tenant,
                info.role,
                info.name,
                ",".join(info.models) if info.models is not None else None,
                info.created_at,
                info.expires_at,
                info.owner,
                info.rotated_from,
            ),
        )

    def get(self, key_id: str) -> KeyInfo:
        row = (
            self._conn()
            .execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"There is no API key with id {key_id!r}.", code="key_not_found")
        return _info(row)

    def rotate(
        self,
        key_id: str,
        overlap_seconds: float,
        *,
        key_id_new: str | None = None,
        by: str | None = None,
        expires_at_max: float | None = None,
        max_active: int | None = None,
    ) -> tuple[str, KeyInfo]:
        """Create a successor with the same scope; the old key keeps working for the overlap.

        The successor lives as long as the old key was meant to (if it had an expiry at all),
        but not past ``expires_at_max`` (the expiry of whoever rotates it, when that is a key
        that may hand out nothing outliving it).
        ``by``: the subject rotating it over the API; the successor carries on the old key's
        stored work (:meth:`lineage`) only when that is the old key itself.
        ``max_active``: as for :meth:`create`; a rotation without overlap replaces the key at
        once, so only one with an overlap can be refused.
        Returns the successor's full key (to show once) and description.
        """
        if overlap_seconds < 0:
            raise ValueError("overlap_seconds must be zero or more")
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            # A rotator revoked after it was authenticated is handed nothing: the revocation
            # has already walked the keys it rotated and would not see this successor.
            rotator = by[len("key:") :] if by and by.startswith("key:") else None
            row = conn.execute(
                "SELECT revoked_at FROM api_keys WHERE key_id = ?", (rotator,)
            ).fetchone()
            if row is not None and row[0] is not None:
                raise AuthenticationFailed(
                    f"API key {rotator} has been revoked; it rotates no more keys."
                )
            old = self.get(key_id)
            now = time.time()
            if old.state(now) != "active":
                raise ValueError(f"API key {key_id} is {old.state(now)}; only active keys rotate.")
            if old.successor is not None:
                raise ValueError(
                    f"API key {key_id} was already rotated to {old.successor}; rotate that one."
                )
            if max_active is not None and overlap_seconds > 0 and old.role in TENANT_ROLES:
                active = self.active_count(old.tenant)
                if active >= max_active:
                    raise TenantKeyLimit(old.tenant, active, max_active, rotating=True)
            lifetime = None if old.expires_at is None else old.expires_at - old.created_at
            if lifetime is not None and not lifetime <= MAX_LIFETIME_SECONDS:
                lifetime = MAX_LIFETIME_SECONDS  # a key stored before lifetimes were bounded
            expires = None if lifetime is None else now + lifetime
            if expires_at_max is not None and (expires is None or expires > expires_at_max):
                expires = expires_at_max
            full, new = self._new(
                key_id_new or new_key_id(),
                old.tenant,
                old.role,
                old.name,
                old.models,
                expires,
                old.owner,
                old.key_id,
            )
            self._insert(full, new)
            if by is not None:
                conn.execute(
                    "UPDATE api_keys SET rotated_by = ? WHERE key_id = ?", (by, new.key_id)
                )
            until = now + overlap_seconds
            if old.expires_at is not None:
                until = min(until, old.expires_at)
            conn.execute(
                "UPDATE api_keys SET expires_at = ?, successor = ? WHERE key_id = ?",
                (until, new.key_id, key_id),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._changed()
        return full, new

    def lineage(self, principal: Principal) -> list[str]:
        """The subjects one caller has acted as: its own, and for an API key those of the keys
        it was rotated from by themselves (or by the operator's command line): a key rotated
        by another principal (an admin, its maker) starts afresh, since carrying on would let
        whoever rotated it read the application's stored prompts and answers through it."""
        subjects = [principal.subject]
        if principal.auth != "api_key":
            return subjects
        seen = {principal.key_id}
        query = "SELECT rotated_from, rotated_by FROM api_keys WHERE key_id = ?"
        row = self._conn().execute(query, (principal.key_id,)).fetchone()
        while row is not None and row[0] and row[0] not in seen and len(seen) < 1000:
            if row[1] is not None and row[1] != f"key:{row[0]}":
                break  # rotated by someone else: the line of work ends here
            seen.add(row[0])
            subjects.append(f"key:{row[0]}")
            row = self._conn().execute(query, (row[0],)).fetchone()
        return subjects

    def revoke(self, key_id: str) -> bool:
        """Revoke now, with the key's whole rotation line (the keys it was rotated from and to:
        one holder's credential) and every key any of them made, and they made in turn; so a
        revoked key leaves no key of its own behind. Every process refuses them from its next
        request. True when the key named had not been revoked before."""
        now = time.time()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # no rotation or creation slips in between the reads
        try:
            row = conn.execute(
                "SELECT revoked_at FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
            revoked = row is not None and row[0] is None
            for fallen in self._revoked_with(conn, key_id):
                conn.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                    (now, fallen),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._changed()
        return revoked

    @staticmethod
    def _revoked_with(conn: sqlite3.Connection, key_id: str) -> set[str]:
        """The key, its predecessors and successors, everything each of them made, and so on;
        and every successor any of them was handed by rotating another's key over the API
        (with what that successor made or rotated to in turn), but not that other's own key:
        its holder never showed it to the rotator.

        Already revoked keys are walked too: what they reach may have been made or rotated
        since (or by a tool that did not revoke it).
        """
        whole: set[str] = {key_id}  # walked both ways along rotation lines
        handed: set[str] = set()  # handed to a rotator, and what came of it: forward only
        todo = [key_id]

        def reach(other: str | None, both_ways: bool) -> None:
            if other is None or other in whole or (other in handed and not both_ways):
                return
            if both_ways:
                handed.discard(other)
                whole.add(other)
            else:
                handed.add(other)
            todo.append(other)

        while todo:
            k = todo.pop()
            line = k in whole
            for (other,) in conn.execute(
                "SELECT key_id FROM api_keys WHERE owner = ? OR rotated_from = ?"
                " UNION SELECT successor FROM api_keys WHERE key_id = ?",
                (f"key:{k}", k, k),
            ).fetchall():
                reach(other, line)
            if line:
                for (other,) in conn.execute(
                    "SELECT key_id FROM api_keys WHERE successor = ?"
                    " UNION SELECT rotated_from FROM api_keys WHERE key_id = ?",
                    (k, k),
                ).fetchall():
                    reach(other, True)
            for (other,) in conn.execute(
                "SELECT key_id FROM api_keys WHERE rotated_by = ?", (f"key:{k}",)
            ).fetchall():
                reach(other, False)
        return whole | handed

    def active_count(self, tenant: str) -> int:
        """How many of the tenant's own keys (``TENANT_ROLES``) are active now: neither
        revoked nor expired (a rotated key counts until its overlap ends)."""
        roles = ",".join("?" * len(TENANT_ROLES))
        row = (
            self._conn()
            .execute(
                "SELECT count(*) FROM api_keys WHERE tenant = ? AND revoked_at IS NULL"
                f" AND (expires_at IS NULL OR expires_at > ?) AND role IN ({roles})",
                (tenant, time.time(), *TENANT_ROLES),
            )
            .fetchone()
        )
        return int(row[0])

    def _changed(self) -> None:
        """Tell every process on this machine that cached answers are stale."""
        self._epoch[:_EPOCH_BYTES] = secrets.token_bytes(_EPOCH_BYTES)
        self._cache.clear()

    def list(self, tenant: str | None = None, *, owner: str | None = None) -> list[KeyInfo]:
        sql = f"SELECT {_COLUMNS} FROM api_keys"
        where: list[str] = []
        args: list[str] = []
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._conn().execute(sql + " ORDER BY created_at, key_id", args).fetchall()
        return [_info(r) for r in rows]

    def authenticate(self, presented: str) -> Principal:
        """Resolve a presented key to a Principal, or raise AuthenticationFailed saying why."""
        if not presented.startswith(PREFIX):
            raise AuthenticationFailed(
                "Invalid API key: sekisho keys start with 'sk-sekisho-'. "
                "Create one with `sekisho keys create --tenant NAME`."
            )
        digest = _hash(presented)
        cached = self._cache.get(digest)
        now = time.time()
        if cached is not None:
            principal, epoch, cached_at = cached
            if (
                epoch == self._epoch[:_EPOCH_BYTES]
                and now - cached_at < CACHE_SECONDS
                and (principal.expires_at is None or principal.expires_at > now)
            ):
                return principal
        principal = self._lookup(presented, digest)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[digest] = (principal, self._epoch[:_EPOCH_BYTES], now)
        return principal

    def _lookup(self, presented: str, digest: bytes) -> Principal:
        key_id, _, _ = presented[len(PREFIX) :].partition("-")
        row = (
            self._conn()
            .execute(
                "SELECT key_hash, tenant, role, models, expires_at, revoked_at, owner"
                " FROM api_keys WHERE key_id = ?",
                (key_id,),
            )
            .fetchone()
        )
        if row is None or not hmac.compare_digest(row[0], digest):
            raise AuthenticationFailed("Invalid API key: no such key (it may have been mistyped).")
        if row[5] is not None:
            raise AuthenticationFailed(
                f"API key {key_id} has been revoked. Ask an administrator for a new key."
            )
        if row[4] is not None and row[4] <= time.time():
            raise AuthenticationFailed(
                f"API key {key_id} expired at {_iso(row[4])}. Use its successor or a new key."
            )
        models = frozenset(row[3].split(",")) if row[3] is not None else None
        return Principal(
            tenant=row[1], key_id=key_id, role=row[2], models=models, expires_at=row[4]
        )


class TenantKeyLimit(PermissionDenied):
    """A tenant holds as many active keys as its operator allows (``max_active_keys``)."""

    code = "tenant_key_limit"

    def __init__(self, tenant: str, active: int, limit: int, *, rotating: bool = False) -> None:
        rotation = (
            " A rotation with an overlap keeps the old key active beside its successor: "
            "rotate with overlap_seconds 0 to replace the key at once."
            if rotating
            else ""
        )
        super().__init__(
            f"Tenant {tenant!r} has {active} active keys; its limit is {limit} "
            f"(tenants.{tenant}.limits.max_active_keys), so no key was made.{rotation} "
            "Revoke keys it no longer uses (GET /admin/v1/keys lists them), or ask the "
            "gateway's operator to raise the limit."
        )
        self.tenant = tenant


def _info(r: Any) -> KeyInfo:
    models = tuple(r[4].split(",")) if r[4] is not None else None
    return KeyInfo(r[0], r[1], r[2], r[3], models, r[5], r[6], r[7], r[8], r[9], r[10])


def shown_time(ts: float) -> float:
    """``ts`` within the times a date can show: a database written before lifetimes were
    bounded may hold an expiry of 1e20, which must still list (as 9999-12-31T23:59:59Z)."""
    if not ts <= _LAST_SHOWN:  # NaN too
        return _LAST_SHOWN
    return max(ts, 0.0)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(shown_time(ts)))


def _open_epoch(path: Path) -> mmap.mmap:
    """The shared change marker: a few bytes every process maps into memory."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < _EPOCH_BYTES:
            os.pwrite(fd, secrets.token_bytes(_EPOCH_BYTES), 0)
        return mmap.mmap(fd, _EPOCH_BYTES)
    finally:
        os.close(fd)


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
