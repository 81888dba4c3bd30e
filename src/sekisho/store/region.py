"""One region's store: its records database, its keyring and its key-encryption key.

What it promises, in the order the code keeps it:

1. ``write`` returns only once the record and its subject index are committed (SQLite WAL with
   fsync on commit, or a PostgreSQL commit), in one transaction: a record is there whole or not
   at all. Records are committed in groups by one writer thread, lingering for company only
   while records arrive concurrently (as the ledger does), so a lone request never waits.
2. A write that cannot be durable within ``deadline`` seconds, or that fails (disk full, server
   gone), raises ``StoreError`` naming the region, the store and the reason.
3. A tenant's data key is unwrapped once and kept in memory; the keyring holds it only wrapped
   under the region's KEK. Destroying it zeroes it in the keyring (crypto-shredding).
4. A data key is made only for a tenant the region never used one for: the records database
   notes each generation made (its own ``tenant_keys`` rows, which never hold a key), so a
   keyring lost or restored from an older backup stops the tenant with ``TenantKeyMissing``
   instead of a new key that would leave its records unreadable and unfindable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from sqlalchemy import Engine, Row, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from sekisho._deadlines import WriterHealth, refuse_late
from sekisho._handoff import Handoff
from sekisho.store import database
from sekisho.store.crypto import TenantKeys, new_data_key, wrap_context
from sekisho.store.database import Location
from sekisho.store.errors import (
    ErasureIncomplete,
    KeyProviderError,
    RecordUnreadable,
    RotationIncomplete,
    StoreError,
    TenantKeyDestroyed,
    TenantKeyMissing,
)
from sekisho.store.keys import KeyProvider, version_of
from sekisho.store.schema import records, subject_index, tenant_keys

log = logging.getLogger("sekisho.store")

DEFAULT_GROUP_INTERVAL = 0.0  # as the ledger: batches form while the previous commit runs
DEFAULT_GROUP_SIZE = 512
DEFAULT_DEADLINE = 5.0
# How long a deletion waits for SQLite's write-ahead log to be copied back and emptied while
# another connection (a running backup) holds a read snapshot, before it says it is incomplete.
DEFAULT_ERASE_WAIT = 30.0


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Pending:
    row: dict[str, Any]
    ids: list[dict[str, str]]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop
    give_up_at: float


class RegionStore:
    """Open with ``RegionStore.open`` (blocking; call it in a thread from async code)."""

    # Told (region, reason, records) when records could not be made durable, each record once:
    # reason ``deadline`` or ``storage_error`` (the gateway counts them in
    # sekisho_store_refusals_total).
    on_refused: Callable[[str, str, int], None] | None = None
    # Told (seconds, records) by the writer thread after each batch commit, failed ones too
    # (sekisho_writer_commit_seconds, sekisho_writer_batch_entries).
    on_commit: Callable[[float, int], None] | None = None

    def __init__(
        self,
        region: str,
        country: str,
        records_at: Location,
        keyring_at: Location,
        records_db: Engine,
        keyring_db: Engine,
        keys: KeyProvider,
        *,
        group_interval: float = DEFAULT_GROUP_INTERVAL,
        group_size: int = DEFAULT_GROUP_SIZE,
        deadline: float = DEFAULT_DEADLINE,
        erase_wait: float = DEFAULT_ERASE_WAIT,
    ) -> None:
        self.region = region
        self.erase_wait = erase_wait
        self.country = country
        self.records_at = records_at
        self.keyring_at = keyring_at
        self.records_db = records_db
        self.keyring_db = keyring_db
        self.keys = keys
        self.group_interval = group_interval
        self.group_size = group_size
        self.deadline = deadline
        self._key_lock = threading.Lock()
        self._current: dict[str, TenantKeys] = {}
        self._by_generation: dict[tuple[str, int], TenantKeys] = {}
        self._handoff: Handoff[_Pending] = Handoff(
            group_interval=group_interval, group_size=group_size
        )
        self._writer = threading.Thread(
            target=self._write_loop, name=f"sekisho-store-{region}", daemon=True
        )
        self._closed = False
        self._sql_cache: dict[tuple[str, int], str] = {}
        self._waiting: collections.deque[_Pending] = collections.deque()
        self.health = WriterHealth(deadline)  # for /readyz
        self._writer_conn: Any = None  # the writer thread's own driver connection
        self._watch_loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None

    @classmethod
    def open(
        cls,
        region: str,
        country: str,
        records_at: Location,
        keyring_at: Location,
        keys: KeyProvider,
        *,
        migrate: bool,
        **options: Any,
    ) -> RegionStore:
        """Open (migrating if asked), check the schema, claim both databases for the region."""
        engines: list[Engine] = []
        try:
            for at in (records_at, keyring_at):
                engine = database.create(at)
                engines.append(engine)
                if migrate:
                    before, after = database.upgrade(engine, at)
                    if before != after:
                        log.info(
                            "store schema upgraded",
                            extra={"region": region, "store": at.role, "from": before,
                                   "to": after},
                        )  # fmt: skip
                database.check_schema(engine, at)
                database.claim(engine, at, country)
        except BaseException:
            for engine in engines:
                engine.dispose()
            raise
        store = cls(
            region, country, records_at, keyring_at, engines[0], engines[1], keys, **options
        )
        try:
            store._note_keyring()
        except BaseException:
            for engine in engines:
                engine.dispose()
            raise
        store._writer.start()
        return store

    # -- keys ------------------------------------------------------------------------------------

    def tenant_keys(self, tenant: str) -> TenantKeys:
        """The tenant's current keys, creating its data key on first use. Blocking."""
        with self._key_lock:
            cached = self._current.get(tenant)
            if cached is not None:
                return cached
            keys = self._load_or_create(tenant)
            self._current[tenant] = keys
            self._by_generation[(tenant, keys.generation)] = keys
            return keys

    def keys_at(self, tenant: str, generation: int) -> TenantKeys:
        """The tenant's keys of one generation, for reading its records. Blocking."""
        with self._key_lock:
            cached = self._by_generation.get((tenant, generation))
            if cached is not None:
                return cached
            with self.keyring_db.connect() as conn:
                row = conn.execute(
                    select(tenant_keys).where(
                        and_(tenant_keys.c.tenant == tenant, tenant_keys.c.generation == generation)
                    )
                ).first()
            if row is None or row.wrapped is None:
                when = _iso(row.destroyed_at) if row is not None else None
                raise TenantKeyDestroyed(
                    f"The data key of tenant {tenant!r} (generation {generation}) in region "
                    f"{self.region!r} "
                    + (
                        f"was destroyed on {when} by {row.destroyed_by}"
                        if row
                        else "is not in the keyring"
                    )
                    + ": its records can never be read again."
                )
            keys = self._unwrap(tenant, generation, row.wrapped)
            self._by_generation[(tenant, generation)] = keys
            return keys

    def _unwrap(self, tenant: str, generation: int, wrapped: str) -> TenantKeys:
        ctx = wrap_context(self.region, tenant, generation)
        try:
            data_key = self.keys.unwrap(wrapped, ctx)
        except InvalidTag:
            raise KeyProviderError(
                f"The data key of tenant {tenant!r} (generation {generation}) in region "
                f"{self.region!r} cannot be unwrapped with {self.keys.description}: this is not "
                "the key-encryption key that wrapped it, or the keyring was altered. Restore the "
                "region's own key."
            ) from None
        return TenantKeys.derive(self.region, tenant, generation, data_key)

    def _load_or_create(self, tenant: str) -> TenantKeys:
        for _ in range(3):
            with self.keyring_db.connect() as conn:
                row = conn.execute(
                    select(tenant_keys)
                    .where(tenant_keys.c.tenant == tenant)
                    .order_by(tenant_keys.c.generation.desc())
                    .limit(1)
                ).first()
            self.refuse_lost_keys(tenant)
            if row is not None and row.wrapped is not None:
                return self._unwrap(tenant, row.generation, row.wrapped)
            generation = 1 if row is None else row.generation + 1
            data_key = new_data_key()
            wrapped = self.keys.wrap(data_key, wrap_context(self.region, tenant, generation))
            try:
                with self.keyring_db.begin() as conn:
                    conn.execute(
                        insert(tenant_keys).values(
                            tenant=tenant,
                            generation=generation,
                            wrapped=wrapped,
                            kek_version=version_of(wrapped),
                            created_at=now_ms(),
                        )
                    )
            except IntegrityError:
                continue  # another gateway process created it first: read theirs
            self._note(tenant, generation)
            log.info("created data key for tenant %s in region %s", tenant, self.region)
            return TenantKeys.derive(self.region, tenant, generation, data_key)
        raise StoreError(
            f"Cannot create a data key for tenant {tenant!r} in region {self.region!r}"
        )

    def lost_generations(self, tenant: str) -> list[int]:
        """Generations of the tenant's data key this region used (the records database notes
        them, or records were sealed under them) that the keyring has no row for, live or
        destroyed: the keyring was lost, or restored from a backup older than the key."""
        with self.keyring_db.connect() as conn:
            held = {
                int(g)
                for (g,) in conn.execute(
                    select(tenant_keys.c.generation).where(tenant_keys.c.tenant == tenant)
                )
            }
        with self.records_db.connect() as conn:
            used = {
                int(g)
                for (g,) in conn.execute(
                    select(tenant_keys.c.generation).where(tenant_keys.c.tenant == tenant)
                )
            }
            if not held:
                # Also records older than the notes: with no key in the keyring, any record of
                # the tenant was sealed under one that is gone (an index lookup when none is).
                used |= {
                    int(g)
                    for (g,) in conn.execute(
                        select(records.c.key_generation)
                        .where(records.c.tenant == tenant)
                        .distinct()
                    )
                }
        return sorted(used - held)

    def refuse_lost_keys(self, tenant: str) -> None:
        """Raise ``TenantKeyMissing`` if the keyring lost a generation of the tenant's key."""
        lost = self.lost_generations(tenant)
        if not lost:
            return
        gens = ", ".join(map(str, lost))
        raise TenantKeyMissing(
            f"The data key of tenant {tenant!r} in region {self.region!r} (generation {gens}) "
            f"is missing from the keyring {self.keyring_at.display}, but the region used it (the "
            f"records database {self.records_at.display} notes it): the tenant's records, their "
            "subject index and the prompt hashes of its ledger entries were made with it. A new "
            "key would leave them unreadable and unfindable, so none is made. Restore the keyring "
            "from your backup (with the key-encryption key that wrapped it) and start again; "
            "only if no backup exists and the tenant's data is to be given up, run "
            f"`sekisho tenant delete --tenant {tenant}` and a new key is made on the next start."
        )

    def _note(self, tenant: str, generation: int) -> None:
        """Note in the records database that a generation of the tenant's key was made."""
        # IntegrityError: another process noted it first.
        with contextlib.suppress(IntegrityError), self.records_db.begin() as conn:
            conn.execute(
                insert(tenant_keys).values(
                    tenant=tenant, generation=generation, created_at=now_ms()
                )
            )

    def _note_keyring(self) -> None:
        """Note every generation the keyring has (stores from before the notes, a records
        database restored on its own), so that losing the keyring later is noticed."""
        generations = select(tenant_keys.c.tenant, tenant_keys.c.generation)
        with self.keyring_db.connect() as conn:
            held = {(str(t), int(g)) for t, g in conn.execute(generations)}
        with self.records_db.connect() as conn:
            noted = {(str(t), int(g)) for t, g in conn.execute(generations)}
        for tenant, generation in sorted(held - noted):
            self._note(tenant, generation)

    def destroy_tenant_keys(self, tenant: str, actor: str) -> list[int]:
        """Crypto-shred: erase every generation of the tenant's wrapped data key. Blocking."""
        with self._key_lock:
            with self.keyring_db.begin() as conn:
                live = [
                    r.generation
                    for r in conn.execute(
                        select(tenant_keys.c.generation).where(
                            and_(tenant_keys.c.tenant == tenant, tenant_keys.c.wrapped.is_not(None))
                        )
                    )
                ]
                conn.execute(
                    update(tenant_keys)
                    .where(and_(tenant_keys.c.tenant == tenant, tenant_keys.c.wrapped.is_not(None)))
                    .values(
                        wrapped=None, kek_version=None, destroyed_at=now_ms(), destroyed_by=actor
                    )
                )
            # A generation the keyring lost is given up as destroyed: its records go with the
            # tenant's, and the tenant may start again under a new key.
            for generation in self.lost_generations(tenant):
                with contextlib.suppress(IntegrityError), self.keyring_db.begin() as conn:
                    conn.execute(
                        insert(tenant_keys).values(
                            tenant=tenant,
                            generation=generation,
                            created_at=now_ms(),
                            destroyed_at=now_ms(),
                            destroyed_by=actor,
                        )
                    )
            self._current.pop(tenant, None)
            for key in [k for k in self._by_generation if k[0] == tenant]:
                del self._by_generation[key]
        # The old page with the wrapped key stays in the database file until the log is copied
        # back (secure_delete zeroes it there): raises ErasureIncomplete if that cannot happen.
        try:
            empty_log(self.keyring_db, self.keyring_at, self.erase_wait, "the destroyed data key")
        except ErasureIncomplete as exc:
            exc.done = len(live)
            raise
        return live

    def rotate_kek(self) -> tuple[int, int]:
        """Make a new KEK version current and re-wrap every live data key under it. Records are
        not touched: they are sealed with the data keys, which do not change. Blocking."""
        try:
            version = self.keys.rotate()
        except Exception as exc:
            raise RotationIncomplete(
                f"The key-encryption key of region {self.region!r} was not rotated: {exc}",
                version=None,
                rewrapped=0,
                left=sum(self.kek_versions().values()),
            ) from exc
        count = 0
        with self.keyring_db.connect() as conn:
            rows = conn.execute(
                select(tenant_keys.c.tenant, tenant_keys.c.generation, tenant_keys.c.wrapped).where(
                    tenant_keys.c.wrapped.is_not(None)
                )
            ).all()
        for row in rows:
            ctx = wrap_context(self.region, row.tenant, row.generation)
            try:
                rewrapped = self.keys.rewrap(row.wrapped, ctx)
            except Exception as exc:
                why = (
                    "it does not unwrap with that key (wrong key, or the keyring was altered)"
                    if isinstance(exc, InvalidTag)
                    else str(exc)
                )
                raise RotationIncomplete(
                    f"Rotation of region {self.region!r} is incomplete: KEK version {version} "
                    f"({self.keys.description}) is current, and {count} of {len(rows)} data "
                    f"key(s) were re-wrapped under it; re-wrapping the data key of tenant "
                    f"{row.tenant!r} (generation {row.generation}) failed: {why}. The others "
                    "are still wrapped under older versions, which still unwrap them: nothing "
                    "is unreadable. Fix the cause and run `sekisho keys rotate` again.",
                    version=version,
                    rewrapped=count,
                    left=len(rows) - count,
                ) from exc
            with self.keyring_db.begin() as conn:
                conn.execute(
                    update(tenant_keys)
                    .where(
                        and_(
                            tenant_keys.c.tenant == row.tenant,
                            tenant_keys.c.generation == row.generation,
                            tenant_keys.c.wrapped == row.wrapped,
                        )
                    )
                    .values(
                        wrapped=rewrapped, kek_version=version_of(rewrapped), rewrapped_at=now_ms()
                    )
                )
            count += 1
        return version, count

    def reseal_v1_records(self, batch: int = 500) -> tuple[int, list[str]]:
        """Seal again, bound to its request id (record/v2), every field of a record sealed
        before request ids were bound (record/v1): such a record could be given another
        request's id unnoticed. Returns (records re-sealed, ids of records that open under
        neither binding, left as they are). A record whose data key was destroyed is never
        read again and is left alone. Reads every full record once. Blocking."""
        resealed = 0
        unreadable: list[str] = []
        after = ""
        c = records.c
        while True:
            with self.records_db.connect() as conn:
                rows = conn.execute(
                    select(c.record_id, c.tenant, c.key_generation, c.request_id,
                           c.prompt, c.output, c.pseudonym_map)
                    .where(and_(c.record_id > after, c.mode == "full"))
                    .order_by(c.record_id)
                    .limit(batch)
                ).all()  # fmt: skip
            if not rows:
                return resealed, unreadable
            after = rows[-1].record_id
            changes: list[tuple[str, str, dict[str, tuple[bytes, bytes]]]] = []
            for row in rows:
                try:
                    keys = self.keys_at(row.tenant, row.key_generation)
                except TenantKeyDestroyed:
                    continue
                changed: dict[str, tuple[bytes, bytes]] = {}
                try:
                    for name in ("prompt", "output", "pseudonym_map"):
                        sealed = getattr(row, name)
                        if sealed is None:
                            continue
                        again = keys.reseal_v1(
                            row.record_id, name, sealed, request_id=row.request_id
                        )
                        if again is not None:
                            changed[name] = (sealed, again)
                except RecordUnreadable:
                    unreadable.append(row.record_id)
                    continue
                if changed:
                    changes.append((row.record_id, row.request_id, changed))
            if not changes:
                continue
            with self.records_db.begin() as conn:
                for record_id, request_id, changed in changes:
                    # Only as it was read: a record deleted or changed meanwhile is left alone.
                    unchanged = [c[name] == old for name, (old, _) in changed.items()]
                    result = conn.execute(
                        update(records)
                        .where(
                            and_(c.record_id == record_id, c.request_id == request_id, *unchanged)
                        )
                        .values({name: new for name, (_, new) in changed.items()})
                    )
                    resealed += result.rowcount

    def kek_usage(self) -> dict[int, list[tuple[str, int]]]:
        """The live data keys (tenant, generation) each KEK version wraps, read from the
        wrapped keys themselves."""
        with self.keyring_db.connect() as conn:
            rows = conn.execute(
                select(tenant_keys.c.tenant, tenant_keys.c.generation, tenant_keys.c.wrapped)
                .where(tenant_keys.c.wrapped.is_not(None))
                .order_by(tenant_keys.c.tenant, tenant_keys.c.generation)
            ).all()
        usage: dict[int, list[tuple[str, int]]] = {}
        for row in rows:
            usage.setdefault(version_of(row.wrapped), []).append((row.tenant, row.generation))
        return usage

    def check_retirable(self, version: int) -> None:
        """Raise ``StoreError`` saying why the KEK version cannot be retired: it is the current
        one, it is not held, or a live data key is still wrapped under it. Blocking."""
        current, held = self.keys.versions()
        if version == current:
            raise StoreError(
                f"KEK version {version} of region {self.region!r} ({self.keys.description}) is "
                "the current one: new data keys are wrapped under it. Run `sekisho keys rotate "
                f"--region {self.region}` first; then version {version} can be retired."
            )
        if version not in held:
            raise StoreError(
                f"Region {self.region!r} has no KEK version {version} to retire "
                f"({self.keys.description} holds {', '.join(map(str, held))}): retired "
                "already, or never made. `sekisho keys kek-versions` lists them."
            )
        if self.keys.retires_oldest_first and version != held[0]:
            raise StoreError(
                f"KEK version {version} of region {self.region!r} cannot be retired before "
                f"version {held[0]}: {self.keys.description} retires versions oldest first."
            )
        using = self.kek_usage().get(version)
        if using:
            shown = ", ".join(f"{t} (generation {g})" for t, g in using[:10])
            raise StoreError(
                f"KEK version {version} of region {self.region!r} still wraps {len(using)} data "
                f"key(s): {shown}{', ...' if len(using) > 10 else ''}. Retiring it would make "
                "their records unreadable, so nothing was changed. Run `sekisho keys rotate "
                f"--region {self.region}` (it re-wraps every data key under a new version), then "
                "retire it."
            )

    def kek_versions(self) -> dict[int, int]:
        """How many live data keys each KEK version wraps."""
        with self.keyring_db.connect() as conn:
            rows = conn.execute(
                select(tenant_keys.c.kek_version, func.count())
                .where(tenant_keys.c.wrapped.is_not(None))
                .group_by(tenant_keys.c.kek_version)
            ).all()
        return {int(v): int(n) for v, n in rows}

    # -- the write path --------------------------------------------------------------------------

    async def write(self, row: dict[str, Any], ids: list[dict[str, str]]) -> None:
        """Commit one record with its subject index; return when it is durable."""
        if self._closed:
            raise StoreError(f"The store of region {self.region!r} is shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        pending = _Pending(row, ids, future, loop, time.monotonic() + self.deadline)
        if self._watch_loop is None:
            self._watch_loop = loop
            self._watchdog = loop.create_task(
                refuse_late(
                    self._waiting, self.deadline, lambda p: self._too_slow(p.row["record_id"])
                )
            )
        if loop is not self._watch_loop:  # a second event loop (tools, tests): its own timer
            self._handoff.put(loop, pending)
            try:
                await asyncio.wait_for(future, self.deadline)
            except TimeoutError:
                raise self._too_slow(row["record_id"]) from None
            return
        self._waiting.append(pending)
        self._handoff.put(loop, pending)
        await future

    def waiting(self) -> int:
        """Records handed to the writer and not yet durable nor refused (for /metrics: read
        when scraped). Those of a second event loop (tools, tests) are not counted."""
        return sum(1 for p in list(self._waiting) if not p.future.done())

    def _too_slow(self, record_id: str) -> StoreError:
        self._count_refused("deadline", 1)
        where = f"the store of region {self.region!r} ({self.records_at.display})"
        self.health.failed(
            f"{where} could not make a record durable within {self.deadline:g} s (slow or hanging)",
            commit_ended=False,
        )
        return StoreError(
            f"The store of region {self.region!r} ({self.records_at.display}) could not make "
            f"record {record_id} durable within {self.deadline:g} s (slow or hanging)."
        )

    def _write_loop(self) -> None:
        try:
            self._write_batches()
        finally:
            if self._writer_conn is not None:
                with contextlib.suppress(Exception):
                    # Not back to the pool: on SQLite it was switched to autocommit (below).
                    self._writer_conn.invalidate()
                self._writer_conn = None

    def _write_batches(self) -> None:
        lingering = False
        while True:
            batch, stop = self._handoff.next_batch(lingering)
            lingering = len(batch) > 1  # a lone request never waits for company
            if batch:
                self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        error: BaseException | None = None
        self.health.begin()
        began = time.monotonic()
        try:
            self._write([p.row for p in batch], [i for p in batch for i in p.ids])
        except Exception as exc:  # driver errors, OSError (disk full), a server gone
            error = self._write_failed(exc, batch)
        else:
            self.health.ok()
        if self.on_commit is not None:
            with contextlib.suppress(Exception):  # counting must not change the outcome
                self.on_commit(time.monotonic() - began, len(batch))
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for p in batch:
            by_loop.setdefault(p.loop, []).append(p.future)
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting
                loop.call_soon_threadsafe(self._answer, futures, error)

    def _write(self, rows: Sequence[dict[str, Any]], ids: Sequence[dict[str, str]]) -> None:
        """Commit a batch. On PostgreSQL, a batch whose connection turned out to be dead before
        its COMMIT was sent (the server restarted, an administrator or a proxy ended idle
        connections while this one sat idle) is written once more on a new connection: it
        did not commit, so nothing is written twice. One that died during COMMIT may have
        committed: it fails as it is, rather than risk the batch twice."""
        try:
            self._write_once(rows, ids)
        except _Uncommitted as dead:
            log.warning(
                "store connection lost before the commit; writing the batch again on a new "
                "connection",
                extra={"region": self.region, "reason": str(dead.cause).strip()[:200]},
            )
            try:
                self._write_once(rows, ids)
            except _Uncommitted as again:
                raise again.cause from None

    def _write_once(self, rows: Sequence[dict[str, Any]], ids: Sequence[dict[str, str]]) -> None:
        # The writer thread keeps one driver connection for itself: the rows are plain values
        # already, and SQLAlchemy's pool checkout, transaction and checkin per batch were a
        # measurable share of the writer's time under the GIL.
        sqlite = self.records_at.is_sqlite
        if self._writer_conn is None:
            self._writer_conn = self.records_db.raw_connection()
            if sqlite:
                # Transactions are explicit here, so that a batch that is one statement can
                # commit (and fsync) within that statement: every statement is a GIL round
                # trip for this thread, waiting for the event loop to let go.
                self._writer_conn.driver_connection.isolation_level = None
        fairy = self._writer_conn
        conn = fairy.driver_connection
        committing = False
        try:
            cur = conn.cursor()
            try:
                one_statement = not ids and len(rows) <= _MAX_PARAMS // len(_RECORD_COLUMNS)
                if sqlite and not one_statement:
                    cur.execute("BEGIN")  # records and their index rows commit together
                self._insert_many(cur, "records", _RECORD_COLUMNS, rows)
                if ids:
                    self._insert_identifiers(cur, ids)
            finally:
                cur.close()
            committing = True
            conn.commit()  # SQLite: a no-op after a one-statement batch, which is committed
        except BaseException as exc:
            # A failed batch leaves nothing behind; the connection may be broken (server gone,
            # disk full): the next batch starts on a fresh one.
            dead = not sqlite and bool(getattr(conn, "broken", False) or conn.closed)
            with contextlib.suppress(Exception):
                conn.rollback()
            with contextlib.suppress(Exception):
                fairy.invalidate()
            self._writer_conn = None
            if dead and not committing and isinstance(exc, Exception):
                raise _Uncommitted(exc) from exc
            raise

    def _insert_identifiers(self, cur: Any, ids: Sequence[dict[str, str]]) -> None:
        self._insert_many(cur, "subject_index", _INDEX_COLUMNS, ids)

    def _insert_many(
        self, cur: Any, table: str, columns: tuple[str, ...], rows: Sequence[Mapping[str, Any]]
    ) -> None:
        # One multi-row INSERT per chunk: one statement releases and retakes the GIL once
        # instead of once per row (under load the writer thread otherwise waits for the event
        # loop at every row).
        per = max(1, _MAX_PARAMS // len(columns))
        for start in range(0, len(rows), per):
            chunk = rows[start : start + per]
            sql = self._multi_insert_sql(table, columns, len(chunk))
            cur.execute(sql, tuple(row[c] for row in chunk for c in columns))

    def _multi_insert_sql(self, table: str, columns: tuple[str, ...], n: int) -> str:
        key = (table, n)
        sql = self._sql_cache.get(key)
        if sql is None:
            mark = "?" if self.records_at.is_sqlite else "%s"
            one = "(" + ", ".join([mark] * len(columns)) + ")"
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([one] * n)
            if len(self._sql_cache) < 4096:
                self._sql_cache[key] = sql
        return sql

    def _write_failed(self, exc: BaseException, batch: list[_Pending]) -> StoreError:
        orig = getattr(exc, "orig", None) or exc
        full = getattr(orig, "errno", None) == errno.ENOSPC or "disk is full" in str(orig)
        where = f"the store of region {self.region!r} ({self.records_at.display})"
        ids = ", ".join(p.row["record_id"] for p in batch[:3]) + (" ..." if len(batch) > 3 else "")
        if full:
            why = "is full (no space left on device); free space or move the store"
        else:
            text = str(orig).strip()
            why = f"failed: {text.splitlines()[0] if text else type(orig).__name__}"
        log.error("store write failed: %s %s (records %s)", where, why, ids)
        self.health.failed(f"{where} {why}")
        # The client hears what failed, not where: the path or database URL names internal
        # hosts and volumes (the log and /readyz's details, behind metrics_token, have it).
        said = "is full" if full else "failed"
        return StoreError(
            f"The record could not be stored: the store of region {self.region!r} {said}. "
            f"Nothing of records {ids} was kept; the operator's logs say why."
        )

    def _answer(self, futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
        """Answer the waiters of a commit (on their event loop); each refused is counted once
        (one refused at its deadline already was counted then)."""
        refused = 0
        for future in futures:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
                refused += 1
            else:
                future.set_result(None)
        if refused:
            self._count_refused("storage_error", refused)

    def _count_refused(self, reason: str, records: int) -> None:
        if self.on_refused is not None:
            with contextlib.suppress(Exception):  # counting must not change the error
                self.on_refused(self.region, reason, records)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._handoff.stop()
        await asyncio.to_thread(self._writer.join, self.deadline + 5)
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._watchdog
        for pending in self._waiting:
            if not pending.future.done():
                pending.future.set_exception(
                    StoreError(f"The store of region {self.region!r} is shut down")
                )
        self._waiting.clear()
        self.records_db.dispose()
        self.keyring_db.dispose()
        self.keys.close()

    # -- reads and deletions (blocking) ----------------------------------------------------------

    def records_by_id(self, tenant: str, record_ids: Collection[str]) -> list[Row[Any]]:
        if not record_ids:
            return []
        with self.records_db.connect() as conn:
            return list(
                conn.execute(
                    select(records)
                    .where(and_(records.c.tenant == tenant, records.c.record_id.in_(record_ids)))
                    .order_by(records.c.created_at)
                )
            )

    def records_by_request(self, tenant: str, request_id: str) -> list[Row[Any]]:
        """The tenant's records of one request (normally one), oldest first. Blocking."""
        with self.records_db.connect() as conn:
            return list(
                conn.execute(
                    select(records)
                    .where(and_(records.c.tenant == tenant, records.c.request_id == request_id))
                    .order_by(records.c.created_at)
                )
            )

    def find_subject(self, tenant: str, id_hashes: Collection[str]) -> list[str]:
        """Ids of the tenant's records whose index holds any of these keyed hashes."""
        with self.records_db.connect() as conn:
            rows = conn.execute(
                select(subject_index.c.record_id)
                .where(
                    and_(subject_index.c.tenant == tenant, subject_index.c.id_hash.in_(id_hashes))
                )
                .distinct()
            )
            return [r.record_id for r in rows]

    def delete_records(self, tenant: str, record_ids: Collection[str]) -> int:
        if not record_ids:
            return 0
        with self.records_db.begin() as conn:
            conn.execute(
                delete(subject_index).where(
                    and_(
                        subject_index.c.tenant == tenant, subject_index.c.record_id.in_(record_ids)
                    )
                )
            )
            result = conn.execute(
                delete(records).where(
                    and_(records.c.tenant == tenant, records.c.record_id.in_(record_ids))
                )
            )
        n = int(result.rowcount)
        self._forget_deleted(n)
        return n

    def _forget_deleted(self, deleted: int) -> None:
        """Deleted rows' old pages stay in the database file until SQLite's write-ahead log
        is copied back into it (secure_delete zeroes them there), and past that in the log
        file's bytes: copy the log back and empty it, so a deletion (消去, retention) leaves
        nothing to recover from the files while the gateway runs; raise ErasureIncomplete
        when that cannot be done. PostgreSQL keeps dead tuples until VACUUM and its WAL as
        archived (storage.md)."""
        try:
            empty_log(self.records_db, self.records_at, self.erase_wait, "the deleted records")
        except ErasureIncomplete as exc:
            exc.done = deleted
            raise

    def restrict(self, tenant: str, record_ids: Collection[str], actor: str) -> int:
        if not record_ids:
            return 0
        with self.records_db.begin() as conn:
            result = conn.execute(
                update(records)
                .where(
                    and_(
                        records.c.tenant == tenant,
                        records.c.record_id.in_(record_ids),
                        records.c.restricted_at.is_(None),
                    )
                )
                .values(restricted_at=now_ms(), restricted_by=actor)
            )
            return int(result.rowcount)

    def delete_tenant_records(self, tenant: str) -> int:
        with self.records_db.begin() as conn:
            conn.execute(delete(subject_index).where(subject_index.c.tenant == tenant))
            result = conn.execute(delete(records).where(records.c.tenant == tenant))
        n = int(result.rowcount)
        self._forget_deleted(n)
        return n

    def count(self, tenant: str | None = None) -> int:
        query = select(func.count()).select_from(records)
        if tenant is not None:
            query = query.where(records.c.tenant == tenant)
        with self.records_db.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def tenants(self) -> Mapping[str, int]:
        with self.records_db.connect() as conn:
            rows = conn.execute(select(records.c.tenant, func.count()).group_by(records.c.tenant))
            return {r[0]: int(r[1]) for r in rows}


_RECORD_COLUMNS = tuple(c.name for c in records.columns)
_INDEX_COLUMNS = tuple(c.name for c in subject_index.columns)


_MAX_PARAMS = 30_000  # below SQLite's 32766 and PostgreSQL's 65535 bound parameters


class _Uncommitted(Exception):
    """A PostgreSQL batch whose connection was dead before its COMMIT was sent: the server
    rolled it back, so it may be written again (``RegionStore._write``)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _iso(ms: int | None) -> str:
    if ms is None:
        return "an unknown date"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def empty_log(engine: Engine, at: Location, wait: float, what: str) -> None:
    """Copy a SQLite database's write-ahead log back into it and empty it (a TRUNCATE
    checkpoint), so that what a deletion freed is zeroed in the file and no old page is left
    in the log. Another connection's read snapshot (a running ``sqlite3 .backup``, a long
    query) keeps the checkpoint from finishing: it is retried for up to ``wait`` seconds,
    then ``ErasureIncomplete`` says so. Nothing to do for PostgreSQL."""
    if not at.is_sqlite:
        return
    give_up = time.monotonic() + wait
    reason = "another connection holds a read snapshot of it"
    try:
        with engine.connect() as conn:
            try:
                while True:
                    left = max(0.0, give_up - time.monotonic())
                    # The busy handler waits for readers, one second at a time.
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={max(1, int(min(left, 1) * 1000))}")
                    row = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()
                    if row is not None and row[0] == 0:
                        return
                    if time.monotonic() >= give_up:
                        break
                    time.sleep(0.05)
            finally:
                with contextlib.suppress(Exception):
                    conn.exec_driver_sql("PRAGMA busy_timeout=30000")
    except SQLAlchemyError as exc:
        text_ = str(getattr(exc, "orig", None) or exc).strip()
        reason = f"the checkpoint failed: {text_.splitlines()[0] if text_ else type(exc).__name__}"
    path = at.sqlite_path
    raise ErasureIncomplete(
        f"Erasure incomplete in region {at.region!r}: {what} are gone from the {at.role} "
        f"database, but their old pages are still in {path} and its write-ahead log, where "
        f"they can be recovered: {reason} (a running backup such as `sqlite3 .backup`, or "
        f"another reader) and the log could not be copied back and emptied within {wait:g} s. "
        "Let the backup finish, then run `sekisho db checkpoint --config FILE` (or any later "
        "deletion, or a restart, completes it). Copies the backup made hold the erased data "
        "until they are rotated out.",
        region=at.region,
        store=at.role,
        path=str(path),
    )


def live_generations(store: RegionStore, tenant: str) -> list[int]:
    """Generations of the tenant's data key that still exist in this region's keyring."""
    with store.keyring_db.connect() as conn:
        rows = conn.execute(
            select(tenant_keys.c.generation).where(
                and_(tenant_keys.c.tenant == tenant, tenant_keys.c.wrapped.is_not(None))
            )
        )
        return [int(r.generation) for r in rows]


def expired(
    store: RegionStore, at_ms: int, held: Collection[str], limit: int
) -> dict[str, list[str]]:
    """Ids of records expired at ``at_ms``, by tenant, except tenants under legal hold."""
    cond = records.c.expires_at <= at_ms
    if held:
        cond = and_(cond, records.c.tenant.not_in(list(held)))
    with store.records_db.connect() as conn:
        rows = conn.execute(select(records.c.record_id, records.c.tenant).where(cond).limit(limit))
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r.tenant, []).append(r.record_id)
        return out


def region_holdings(records_at: Location, keyring_at: Location) -> str | None:
    """What a region's databases hold that its key-encryption key protects (wrapped data keys,
    records sealed under them, notes of keys made), or None for a region never used. Creates
    nothing: a SQLite file that is not there holds nothing."""
    found: list[str] = []
    for at, table, cond, what in (
        (keyring_at, tenant_keys, tenant_keys.c.wrapped.is_not(None), "wrapped data key(s)"),
        (records_at, records, None, "record(s)"),
        (records_at, tenant_keys, None, "data key(s) noted as made"),
    ):
        if at.is_sqlite and not at.sqlite_path.exists():
            continue
        engine = database.create(at)
        try:
            if database.current(engine, at) is None:
                continue
            query = select(func.count()).select_from(table)
            with engine.connect() as conn:
                n = conn.execute(query if cond is None else query.where(cond)).scalar_one()
        except SQLAlchemyError as exc:
            raise StoreError(
                f"Cannot open the {at.role} store of region {at.region!r} at {at.display}: "
                f"{str(getattr(exc, 'orig', None) or exc).strip().splitlines()[0]}"
            ) from None
        finally:
            engine.dispose()
        if n:
            found.append(f"{n} {what} in {at.display}")
    return "; ".join(found) or None
