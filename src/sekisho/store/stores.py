"""The stores of all regions, as the pipeline and the command line use them.

``Stores.open`` checks the regions, opens one ``RegionStore`` per region and loads the data
keys of the configured tenants. ``Stores.for_tenant`` gives the ``TenantStore`` of a tenant in
its home region; ``TenantStore.put`` keeps what the tenant's retention says and returns once it
is durable. Every deletion and key destruction is first reported to the ``AuditSink`` (the
ledger) and only then done, so nothing is deleted without a record of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from sekisho._ids import time_ordered_id
from sekisho._threads import in_fair_thread
from sekisho.errors import ConfigError, ConfigProblem
from sekisho.store.crypto import TenantKeys
from sekisho.store.database import Location, locate
from sekisho.store.errors import (
    ErasureIncomplete,
    KeyFileMissing,
    KeyProviderError,
    RotationIncomplete,
    StoreError,
    StoreMisconfigured,
)
from sekisho.store.identifiers import NOT_INDEXED, IdentifierError, normalise
from sekisho.store.keys import KeyProvider, open_key_provider
from sekisho.store.region import RegionStore, expired, region_holdings
from sekisho.store.spec import (
    LocalKeysSpec,
    RetentionSpec,
    VaultKeysSpec,
    key_provider_of,
    retention_of,
)
from sekisho.types import Level

log = logging.getLogger("sekisho.store")

SWEEPER = "sekisho-retention-sweeper"
DEFAULT_SWEEP_INTERVAL = 300.0
_SWEEP_BATCH = 2000


class AuditSink(Protocol):
    """Where administrative acts are recorded (the lead connects it to the ledger's AdminRecord).

    Values in ``details`` are str, int, bool or None; never personal data or key material.
    Raising refuses the act: nothing is deleted that could not be recorded.
    """

    async def admin(
        self, actor: str, action: str, target: str, details: Mapping[str, object]
    ) -> None: ...


class RegionLike(Protocol):
    @property
    def country(self) -> str: ...

    @property
    def store(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Exchange:
    """What the pipeline hands the store after a request (step 8, record)."""

    request_id: str
    tenant: str
    created_at: datetime
    level: Level
    retention: RetentionSpec
    endpoint_id: str
    model: str
    prompt: bytes  # the messages as JSON, already pseudonymised where the policy said
    output: bytes | None = None
    identifiers: Sequence[tuple[str, str]] = ()  # (finding type, value) from the classifier
    pseudonym_map: Mapping[str, str] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 200


@dataclass(frozen=True, slots=True)
class StoredRef:
    """Where a record was kept, what of it, and until when."""

    region: str
    record_id: str
    mode: str  # full | metadata
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class KeptExchange:
    """What the store still holds of one request, decrypted (``TenantStore.kept``): content
    only when it was kept in full and is neither expired nor under 利用停止."""

    mode: str  # full | metadata
    usable: bool  # full, not expired, not restricted
    prompt: bytes | None
    output: bytes | None
    pseudonym_map: dict[str, str] | None
    model: str = ""
    created_at: int = 0  # ms since the epoch
    status: int = 0  # the HTTP status the client got
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class KekVersions:
    """A region's KEK versions (``Stores.kek_versions``)."""

    kek: str  # the key provider's description
    current: int
    held: list[int]  # the versions that still unwrap
    usage: dict[int, list[tuple[str, int]]]  # version -> live data keys (tenant, generation)

    def lost(self) -> list[int]:
        """Versions that wrap live data keys but are no longer held: those keys do not
        unwrap."""
        return sorted(v for v in self.usage if v not in self.held)


class TenantStore:
    """One tenant's records in its home region."""

    def __init__(self, tenant: str, region: RegionStore) -> None:
        self.tenant = tenant
        self.region = region

    @property
    def region_name(self) -> str:
        return self.region.region

    def _keys_now(self) -> TenantKeys:
        return self.region.tenant_keys(self.tenant)

    async def keys(self) -> TenantKeys:
        cached = self.region._current.get(self.tenant)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.region.tenant_keys, self.tenant)

    def current_keys(self) -> TenantKeys:
        """The tenant's current keys; non-blocking once loaded (``Stores.open`` loads them)."""
        cached = self.region._current.get(self.tenant)
        return cached if cached is not None else self._keys_now()

    def keyed_hash(self, data: bytes) -> str:
        """HMAC-SHA256 under the tenant's hashing key, ``hmac-sha256:<hex>`` (the ledger's form).

        Non-blocking once the tenant's key is loaded (``Stores.open`` loads configured tenants).
        """
        return self.current_keys().keyed_hash(data)

    async def kept(self, request_id: str) -> KeptExchange | None:
        """The record of ``request_id`` as this tenant's store still holds it; None when there
        is none (never kept, swept, another tenant's)."""
        return await asyncio.to_thread(self._kept, request_id)

    def _kept(self, request_id: str) -> KeptExchange | None:
        rows = self.region.records_by_request(self.tenant, request_id)
        if not rows:
            return None
        row = rows[-1]
        facts = (row.model, row.created_at, row.status, row.prompt_tokens, row.completion_tokens)
        usable = (
            row.mode == "full"
            and row.restricted_at is None
            and row.expires_at > _ms(datetime.now(UTC))
        )
        if not usable:
            return KeptExchange(row.mode, False, None, None, None, *facts)
        keys = self.region.keys_at(self.tenant, row.key_generation)
        rid = row.record_id
        # Opened as this request's: a record whose request_id was changed in the database
        # (to answer for another request) fails authentication.
        req = request_id
        pmap = (
            orjson.loads(keys.open(rid, "pseudonym_map", row.pseudonym_map, request_id=req))
            if row.pseudonym_map is not None
            else None
        )
        return KeptExchange(
            row.mode,
            True,
            keys.open(rid, "prompt", row.prompt, request_id=req)
            if row.prompt is not None
            else None,
            keys.open(rid, "output", row.output, request_id=req)
            if row.output is not None
            else None,
            pmap,
            *facts,
        )

    async def put(self, exchange: Exchange) -> StoredRef | None:
        """Keep what the retention says; return once durable. None when nothing is kept."""
        if exchange.tenant != self.tenant:
            raise ValueError(f"exchange of tenant {exchange.tenant!r} given to {self.tenant!r}")
        kept = exchange.retention.for_level(exchange.level)
        if kept.mode == "none":
            return None
        keys = await self.keys()
        record_id = time_ordered_id("rec_")
        created = exchange.created_at
        if created.tzinfo is None:
            raise ValueError("Exchange.created_at must be timezone-aware")
        expires = created + timedelta(days=kept.days)
        full = kept.mode == "full"
        output = exchange.output
        req = exchange.request_id
        row: dict[str, Any] = {
            "record_id": record_id,
            "tenant": self.tenant,
            "key_generation": keys.generation,
            "request_id": exchange.request_id,
            "created_at": _ms(created),
            "expires_at": _ms(expires),
            "mode": kept.mode,
            "level": int(exchange.level),
            "endpoint_id": exchange.endpoint_id,
            "model": exchange.model,
            "status": exchange.status,
            "prompt_tokens": exchange.prompt_tokens,
            "completion_tokens": exchange.completion_tokens,
            "prompt_hash": keys.keyed_hash(exchange.prompt),
            "output_hash": keys.keyed_hash(output) if output is not None else None,
            "prompt": keys.seal(record_id, "prompt", exchange.prompt, request_id=req)
            if full
            else None,
            "output": keys.seal(record_id, "output", output, request_id=req)
            if full and output is not None
            else None,
            "pseudonym_map": (
                keys.seal(
                    record_id,
                    "pseudonym_map",
                    orjson.dumps(dict(exchange.pseudonym_map)),
                    request_id=req,
                )
                if full and exchange.pseudonym_map
                else None
            ),
            "restricted_at": None,
            "restricted_by": None,
        }
        if len(exchange.identifiers) < _INDEX_IN_THREAD:
            index = _index_rows(keys, self.tenant, record_id, exchange.identifiers)
        else:  # thousands of hashes: other requests' event loop keeps turning meanwhile
            index = await in_fair_thread(
                _index_rows, keys, self.tenant, record_id, exchange.identifiers
            )
        await self.region.write(row, index)
        return StoredRef(self.region.region, record_id, kept.mode, expires)


# Identifiers in one exchange from which their index rows are hashed off the event loop.
_INDEX_IN_THREAD = 1000


def _index_rows(
    keys: TenantKeys, tenant: str, record_id: str, identifiers: Sequence[tuple[str, str]]
) -> list[dict[str, str]]:
    seen: set[str] = set()
    rows = []
    # A prompt often repeats a name or number: normalise and hash each distinct value once.
    for id_type, value in dict.fromkeys(identifiers):
        if id_type in NOT_INDEXED:
            continue
        try:
            h = keys.index_hash(id_type, normalise(id_type, value))
        except IdentifierError:
            continue  # nothing identifying left after normalisation
        if h not in seen:
            seen.add(h)
            rows.append(
                {"tenant": tenant, "id_hash": h, "record_id": record_id, "id_type": id_type}
            )
    if len(rows) > 1:
        # In key order the index's B-tree is written page by page: 150,000 rows took 0.6 s
        # instead of 1.6 s, and the store's writer (every request's record waits for it) is
        # held that much less.
        rows.sort(key=_by_hash)
    return rows


def _by_hash(row: dict[str, str]) -> str:
    return row["id_hash"]


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass
class Stores:
    """The regional stores of one deployment. Open with ``await Stores.open(...)``."""

    regions: dict[str, RegionStore]
    audit: AuditSink
    retention: dict[str, RetentionSpec] = field(default_factory=dict)
    _sweeper: asyncio.Task[None] | None = None
    # Told (region, store) when an erasure could not be completed (the gateway counts them in
    # sekisho_store_erasure_incomplete_total).
    on_erasure_incomplete: Callable[[str, str], None] | None = None

    @classmethod
    async def open(
        cls,
        regions: Mapping[str, RegionLike],
        data_dir: Path,
        *,
        audit: AuditSink,
        tenants: Mapping[str, object] | None = None,
        migrate: bool | None = None,
        create_keys: bool = True,
        **options: Any,
    ) -> Stores:
        """Check and open every region's store; load the data keys of ``tenants``.

        ``tenants`` maps names to objects with ``home_region`` and (optionally) ``retention``.
        ``migrate``: None applies migrations to SQLite stores only; PostgreSQL stores must be
        migrated with ``sekisho db upgrade`` (several gateways may share one) and are refused
        with that advice when behind. Raises ``ConfigError`` or ``StoreError``.
        """
        problems = validate_regions(regions, data_dir)
        if problems:
            raise ConfigError(problems)
        opened: dict[str, RegionStore] = {}
        try:
            for name, region in regions.items():
                records_at, keyring_at = locate(name, region.store, data_dir)
                do_migrate = records_at.is_sqlite if migrate is None else migrate
                provider = await asyncio.to_thread(
                    _key_provider, region, name, data_dir, records_at, keyring_at, create_keys
                )
                opened[name] = await asyncio.to_thread(
                    RegionStore.open,
                    name,
                    region.country,
                    records_at,
                    keyring_at,
                    provider,
                    migrate=do_migrate,
                    **options,
                )
        except BaseException:
            for store in opened.values():
                await store.close()
            raise
        stores = cls(opened, audit)
        for name, tenant in (tenants or {}).items():
            stores.retention[name] = retention_of(tenant)
            home = getattr(tenant, "home_region", None)
            if isinstance(home, str) and home in opened:
                await stores.for_tenant(name, home).keys()
        return stores

    def region(self, name: str) -> RegionStore:
        try:
            return self.regions[name]
        except KeyError:
            known = ", ".join(sorted(self.regions))
            raise StoreMisconfigured(f"No store for region {name!r}; regions: {known}") from None

    def for_tenant(self, tenant_name: str, home_region: str) -> TenantStore:
        return TenantStore(tenant_name, self.region(home_region))

    def set_retention(self, tenant: str, spec: RetentionSpec) -> None:
        """Tell the sweeper a tenant's retention (its legal hold), e.g. after a config reload."""
        self.retention[tenant] = spec

    def on_legal_hold(self, tenant: str) -> bool:
        spec = self.retention.get(tenant)
        return spec is not None and spec.legal_hold

    # -- retention -------------------------------------------------------------------------------

    async def sweep_once(self, now: datetime | None = None) -> dict[str, dict[str, int]]:
        """Delete expired records of tenants not under legal hold; {region: {tenant: count}}."""
        at = _ms(now or datetime.now(UTC))
        held = sorted(t for t, spec in self.retention.items() if spec.legal_hold)
        report: dict[str, dict[str, int]] = {}
        for name, store in self.regions.items():
            blocked = False
            while not blocked:
                batch = await asyncio.to_thread(expired, store, at, held, _SWEEP_BATCH)
                if not batch:
                    break
                for tenant, ids in batch.items():
                    target = f"tenant:{tenant}@{name}"
                    await self.audit.admin(
                        SWEEPER,
                        "store.retention_delete",
                        target,
                        {"records": len(ids), "expired_before": from_ms(at).isoformat()},
                    )
                    try:
                        n = await asyncio.to_thread(store.delete_records, tenant, ids)
                    except ErasureIncomplete as exc:
                        # Deleted, but still in the file: said in the ledger, the log and the
                        # metrics; the region's next batches wait for the next sweep.
                        n = exc.done
                        await self.erasure_incomplete(
                            SWEEPER, "store.retention_delete", target, exc
                        )
                        blocked = True
                    report.setdefault(name, {})
                    report[name][tenant] = report[name].get(tenant, 0) + n
                    if blocked:
                        break
        if report:
            log.info("retention sweep deleted %s", report)
        return report

    def start_sweeper(self, interval_seconds: float = DEFAULT_SWEEP_INTERVAL) -> asyncio.Task[None]:
        """Run ``sweep_once`` every ``interval_seconds`` until ``close``."""
        if interval_seconds <= 0:
            raise ValueError("the sweep interval must be positive")

        async def loop() -> None:
            while True:
                try:
                    await self.sweep_once()
                except Exception:
                    log.exception("retention sweep failed; retrying in %s s", interval_seconds)
                await asyncio.sleep(interval_seconds)

        self._sweeper = asyncio.get_running_loop().create_task(loop(), name="sekisho-sweeper")
        return self._sweeper

    # -- administration --------------------------------------------------------------------------

    async def holds(self, tenant: str) -> bool:
        """Whether any region holds a live data key or a record of ``tenant``."""
        for store in self.regions.values():
            if await asyncio.to_thread(_live, store, tenant):
                return True
            if await asyncio.to_thread(store.lost_generations, tenant):
                return True
            if await asyncio.to_thread(store.count, tenant):
                return True
        return False

    async def erasure_incomplete(
        self, actor: str, act: str, target: str, exc: ErasureIncomplete
    ) -> None:
        """An erasure committed but left its bytes in a SQLite file (a reader blocked the
        checkpoint): recorded in the ledger as incomplete, logged as an error and counted."""
        log.error(
            "erasure incomplete: %s",
            exc,
            extra={"region": exc.region, "store": exc.store, "act": act},
        )
        if self.on_erasure_incomplete is not None:
            with contextlib.suppress(Exception):
                self.on_erasure_incomplete(exc.region, exc.store)
        try:
            await self.audit.admin(
                actor,
                "store.erasure_incomplete",
                target,
                {
                    "act": act,
                    "store": exc.store,
                    "done": exc.done,
                    "complete": False,
                    "reason": "a reader (a running backup?) held a snapshot of the database: "
                    "the erased bytes remain in its file until a checkpoint succeeds",
                },
            )
        except Exception:
            log.exception("could not record the incomplete erasure in the ledger")

    async def delete_tenant(self, tenant: str, *, actor: str) -> dict[str, int]:
        """Crypto-shred a tenant in every region: destroy its data keys, then delete its
        records. Returns {region: records deleted}. Refused under legal hold. Raises
        ``ErasureIncomplete`` (after doing everything else) when a SQLite file still holds
        what was erased; the ledger then has a ``store.erasure_incomplete`` entry for it."""
        self._refuse_if_held(tenant, "delete its data")
        deleted: dict[str, int] = {}
        incomplete: list[ErasureIncomplete] = []
        for name, store in self.regions.items():
            target = f"tenant:{tenant}@{name}"
            generations = await asyncio.to_thread(_live, store, tenant)
            lost = await asyncio.to_thread(store.lost_generations, tenant)
            if generations or lost:
                await self.audit.admin(
                    actor,
                    "store.data_key_destroyed",
                    target,
                    {"generations": ",".join(map(str, generations)), "kek": store.keys.description}
                    | ({"lost_generations": ",".join(map(str, lost))} if lost else {}),
                )
                try:
                    await asyncio.to_thread(store.destroy_tenant_keys, tenant, actor)
                except ErasureIncomplete as exc:
                    await self.erasure_incomplete(actor, "store.data_key_destroyed", target, exc)
                    incomplete.append(exc)
            count = await asyncio.to_thread(store.count, tenant)
            if count:
                await self.audit.admin(
                    actor, "store.tenant_records_deleted", target, {"records": count}
                )
                try:
                    deleted[name] = await asyncio.to_thread(store.delete_tenant_records, tenant)
                except ErasureIncomplete as exc:
                    deleted[name] = exc.done
                    await self.erasure_incomplete(
                        actor, "store.tenant_records_deleted", target, exc
                    )
                    incomplete.append(exc)
        if incomplete:
            raise incomplete_after(
                f"The data keys of tenant {tenant!r} were destroyed and "
                f"{sum(deleted.values())} record(s) deleted",
                incomplete,
            )
        return deleted

    async def rotate_keys(self, region: str, *, actor: str) -> tuple[int, int]:
        """New KEK version for a region; re-wrap every data key. Returns (version, re-wrapped)."""
        store = self.region(region)
        try:
            version, count = await asyncio.to_thread(store.rotate_kek)
        except RotationIncomplete as exc:
            # Part of it may be done (a new KEK version current in Vault, some keys re-wrapped):
            # the ledger says so, as it would a rotation that completed.
            await self.audit.admin(
                actor,
                "store.kek_rotated",
                f"region:{region}",
                {
                    "kek_version": exc.version,
                    "data_keys_rewrapped": exc.rewrapped,
                    "data_keys_left": exc.left,
                    "complete": False,
                    "kek": store.keys.description,
                },
            )
            raise
        await self.audit.admin(
            actor,
            "store.kek_rotated",
            f"region:{region}",
            {
                "kek_version": version,
                "data_keys_rewrapped": count,
                "complete": True,
                "kek": store.keys.description,
            },
        )
        return version, count

    async def kek_versions(self, region: str) -> KekVersions:
        """The region's KEK versions: the current one, those that still unwrap, and the live
        data keys each wraps (a version in use but no longer held means unreadable keys)."""
        store = self.region(region)
        current, held = await asyncio.to_thread(store.keys.versions)
        usage = await asyncio.to_thread(store.kek_usage)
        return KekVersions(store.keys.description, current, held, usage)

    async def retire_kek(self, region: str, version: int, *, actor: str) -> None:
        """Delete a KEK version once no live data key is wrapped under it; refused, with
        nothing changed, while one is, or when it is the current version
        (``RegionStore.check_retirable``). The ledger says so (``store.kek_retired``), as it
        does a rotation."""
        store = self.region(region)
        await asyncio.to_thread(store.check_retirable, version)
        details = {"kek_version": version, "kek": store.keys.description}
        try:
            await asyncio.to_thread(store.keys.retire, version)
        except KeyProviderError as exc:
            # The key provider refused or failed part way (Vault's config done, trim not).
            await self.audit.admin(
                actor,
                "store.kek_retired",
                f"region:{region}",
                details | {"complete": False, "reason": str(exc)},
            )
            raise
        await self.audit.admin(
            actor, "store.kek_retired", f"region:{region}", details | {"complete": True}
        )

    async def reseal_records(self, region: str, *, actor: str) -> tuple[int, list[str]]:
        """Seal every record of a region sealed before request ids were bound (record/v1)
        again, bound to its request id; ``keys rotate`` does it after the KEK. Recorded
        (``store.records_resealed``) when there was any. Returns (re-sealed, unreadable ids)."""
        store = self.region(region)
        resealed, unreadable = await asyncio.to_thread(store.reseal_v1_records)
        if resealed or unreadable:
            await self.audit.admin(
                actor,
                "store.records_resealed",
                f"region:{region}",
                {"records_resealed": resealed, "records_unreadable": len(unreadable)},
            )
        return resealed, unreadable

    def _refuse_if_held(self, tenant: str, what: str) -> None:
        if self.on_legal_hold(tenant):
            raise StoreError(
                f"Tenant {tenant!r} is under legal hold (tenants.{tenant}.retention.legal_hold): "
                f"cannot {what} until the hold is lifted in the config."
            )

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for store in self.regions.values():
            await store.close()


def incomplete_after(done: str, incomplete: Sequence[ErasureIncomplete]) -> ErasureIncomplete:
    """One error for the erasures of an act that could not be completed, saying what was done."""
    first = incomplete[0]
    err = ErasureIncomplete(
        f"{done}, but the erasure is incomplete: "
        + " ".join(str(e) for e in incomplete)
        + " The ledger records it as incomplete (store.erasure_incomplete).",
        region=first.region,
        store=first.store,
        path=first.path,
    )
    err.done = sum(e.done for e in incomplete)
    return err


def _key_provider(
    region: RegionLike,
    name: str,
    data_dir: Path,
    records_at: Location,
    keyring_at: Location,
    create: bool,
) -> KeyProvider:
    """The region's key provider. A missing local key file is made only for a region whose
    databases hold nothing it protects: a new key would open none of it, and once made it
    would hide which file is missing behind "cannot be unwrapped"."""
    spec = key_provider_of(region)
    try:
        return open_key_provider(spec, name, data_dir, create=False)
    except KeyFileMissing as exc:
        if not create:
            raise
        held = region_holdings(records_at, keyring_at)
        if held:
            raise KeyFileMissing(
                f"Region {name!r} has no key file at {exc.path}, but its stores are not new "
                f"({held}): only the key-encryption key that wrapped their data keys opens them, "
                f"so no new one is made. Restore {exc.path} from your key backup (or point "
                f"regions.{name}.keys.path at it) and start again.",
                exc.path,
            ) from None
    return open_key_provider(spec, name, data_dir, create=True)


def _live(store: RegionStore, tenant: str) -> list[int]:
    from sekisho.store.region import live_generations

    return live_generations(store, tenant)


def validate_regions(
    regions: Mapping[str, RegionLike], data_dir: Path, file: str = "<config>"
) -> list[ConfigProblem]:
    """Problems that would let a store hold another region's data, or keys leave their region.

    Checks names, store URLs and key providers, and that no two regions share a database (and
    schema), a key file or a Vault key. Touches no database: ``Stores.open`` then checks each
    store's region marker.
    """
    problems: list[ConfigProblem] = []
    owners: dict[str, tuple[str, str]] = {}
    for name, region in regions.items():
        where = f"regions.{name}"
        try:
            locations: tuple[Location, ...] = locate(name, region.store, data_dir)
        except ValueError as exc:
            problems.append(ConfigProblem(file, f"{where}.store", str(exc)))
            continue
        for at in locations:
            other = owners.get(at.identity)
            if other is not None:
                problems.append(
                    ConfigProblem(
                        file,
                        f"{where}.store",
                        f"{at.display} is already the store of region {other[0]!r}; a store "
                        "never holds another region's data: give each region its own database "
                        "or ?schema=",
                    )
                )
                break
            owners[at.identity] = (name, at.role)
        try:
            spec = key_provider_of(region)
        except ValidationError as exc:
            for err in exc.errors():
                path = ".".join(
                    str(p) for p in err["loc"] if not str(p).startswith(("local", "vault"))
                )
                problems.append(
                    ConfigProblem(file, f"{where}.keys{'.' + path if path else ''}", err["msg"])
                )
            continue
        key_id = _key_identity(spec, name, data_dir)
        other = owners.get(key_id)
        if other is not None:
            problems.append(
                ConfigProblem(
                    file,
                    f"{where}.keys",
                    f"the key-encryption key is already region {other[0]!r}'s; keys of a region "
                    "live with that region: give each region its own key",
                )
            )
        owners[key_id] = (name, "kek")
    return problems


def _key_identity(spec: LocalKeysSpec | VaultKeysSpec, region: str, data_dir: Path) -> str:
    if isinstance(spec, VaultKeysSpec):
        address = spec.address.rstrip("/").lower()
        return f"vault:{address}/{spec.namespace or ''}/{spec.mount}/{spec.key_name}"
    from sekisho.store.keys import default_key_path

    path = Path(spec.path) if spec.path else default_key_path(data_dir, region)
    return "file:" + str(path.expanduser().resolve()).casefold()
