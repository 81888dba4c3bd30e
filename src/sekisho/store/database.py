"""Where a region's databases are, how they are opened, migrated and claimed for the region.

A region has two databases: ``records`` (the records and their subject index) and ``keyring``
(the tenants' wrapped data keys). SQLite (the default): ``DATA_DIR/store-<region>.db`` and
``DATA_DIR/keys/keyring-<region>.db``. PostgreSQL: the URL's database, schema ``?schema=NAME``
(default ``sekisho``) for records and ``NAME_keyring`` for the keyring.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from sekisho.store.errors import StoreError, StoreMisconfigured
from sekisho.store.schema import store_marker

Role = Literal["records", "keyring"]

MIGRATIONS = Path(__file__).parent / "migrations"
# Every migration in MIGRATIONS/versions, oldest first, and the newest of them (a test keeps
# them equal to Alembic's). Known without Alembic, so that a gateway whose stores are up to date
# never imports it (about 20 MB), and so that a store a newer sekisho migrated is told apart.
REVISIONS = ("0001",)
HEAD = REVISIONS[-1]
VERSION_TABLE = "sekisho_store_version"
DEFAULT_SCHEMA = "sekisho"
REGION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")


@dataclass(frozen=True, slots=True)
class Location:
    """One database of one region."""

    region: str
    role: Role
    url: str  # SQLAlchemy URL, with password
    schema: str | None  # PostgreSQL only
    display: str  # for messages and logs: never the password
    identity: str  # equal for two locations that are the same database (and schema)

    @property
    def is_sqlite(self) -> bool:
        return self.schema is None

    @property
    def sqlite_path(self) -> Path:
        return Path(self.url.removeprefix("sqlite:///"))


# Files of the gateway itself under data_dir, which no region's store may be.
_GATEWAY_FILES = ("ledger.sqlite3", "identity.db", "usage.db")


def locate(region: str, store: str, data_dir: Path) -> tuple[Location, Location]:
    """The records and keyring locations of a region; raise ``ValueError`` saying what is wrong."""
    if not REGION_NAME.match(region):
        raise ValueError(
            f"region name {region!r} must be letters, digits, '-' or '_' (it names files)"
        )
    keyring = _sqlite(region, "keyring", data_dir / "keys" / f"keyring-{region}.db")
    if store == "sqlite":
        return _sqlite(region, "records", data_dir / f"store-{region}.db"), keyring
    if store.startswith("sqlite:///"):
        # A file of its own, e.g. on a volume in the region: SQLAlchemy's form, three slashes
        # then the path (four for an absolute one). The data keys stay under data_dir/keys.
        path = store.removeprefix("sqlite:///")
        if not path or path.endswith("/") or "?" in path:
            raise ValueError("sqlite:///PATH must name a database file (sqlite:////abs/path.db)")
        records = _sqlite(region, "records", Path(path))
        own = data_dir.expanduser().resolve()
        if Path(records.identity) in {
            Path(str(own / name).casefold()) for name in _GATEWAY_FILES
        } or Path(records.identity).is_relative_to(Path(str(own / "keys").casefold())):
            raise ValueError(f"{path} is one of the gateway's own files under data_dir")
        return records, keyring
    if store.startswith(("postgresql://", "postgres://")):
        return _postgres(region, "records", store), _postgres(region, "keyring", store)
    raise ValueError("must be 'sqlite', sqlite:///PATH or a postgresql:// URL")


def _sqlite(region: str, role: Role, path: Path) -> Location:
    absolute = path.expanduser().resolve()
    # Case-folded: on macOS and Windows store-JP.db and store-jp.db are one file.
    return Location(
        region, role, f"sqlite:///{absolute}", None, str(path), str(absolute).casefold()
    )


def _postgres(region: str, role: Role, store: str) -> Location:
    try:
        url = make_url(store)
    except ArgumentError:
        raise ValueError("is not a valid postgresql:// URL") from None
    query = dict(url.query)
    schema = query.pop("schema", DEFAULT_SCHEMA)
    if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
        raise ValueError(
            f"schema {schema!r} must be lower-case letters, digits and '_' (at most 50)"
        )
    if role == "keyring":
        schema = f"{schema}_keyring"
    if not url.database:
        raise ValueError("the postgresql:// URL names no database")
    url = url.set(drivername="postgresql+psycopg", query=query)
    host = url.host or "localhost"
    port = url.port or 5432
    display = f"postgresql://{host}:{port}/{url.database} schema {schema}"
    identity = f"pg:{host.lower()}:{port}/{url.database}#{schema}"
    return Location(
        region, role, url.render_as_string(hide_password=False), schema, display, identity
    )


def create(location: Location, *, pool_size: int = 4) -> Engine:
    """An engine for a location. SQLite: WAL, fsync on every commit, deleted content zeroed."""
    if location.is_sqlite:
        location.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        # At most 32 prepared statements per connection (Python's default is 128): each keeps
        # its program and its last bound values, and the writer's multi-row INSERTs differ with
        # the batch size (tens of MB of the gateway's memory under load).
        engine = create_engine(
            location.url, connect_args={"timeout": 30.0, "cached_statements": 32}
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # a committed record survives power loss
            cur.execute("PRAGMA secure_delete=ON")  # deleted records do not linger in free pages
            cur.execute("PRAGMA busy_timeout=30000")
            # Checkpoint every 32 MiB of log rather than 4 MiB: fewer pauses of the writer.
            cur.execute("PRAGMA wal_autocheckpoint=8192")
            cur.close()

        return engine
    app_name = f"sekisho-{location.role}-{location.region}"[:63]  # PostgreSQL keeps 63 bytes
    return create_engine(
        location.url,
        pool_size=pool_size,
        pool_pre_ping=True,
        connect_args={
            "options": f"-csearch_path={location.schema}",
            "connect_timeout": 10,
            # How an operator tells the store's sessions apart in pg_stat_activity, unless the
            # URL names them itself.
            **({} if "application_name=" in location.url else {"application_name": app_name}),
        },
    )


def _alembic_config(connection: Any, schema: str | None) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    cfg.attributes["schema"] = schema
    return cfg


def head() -> str:
    """The schema revision this sekisho needs."""
    return HEAD


def alembic_head() -> str:
    """The newest revision as Alembic reads it from the migration scripts."""
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory(str(MIGRATIONS)).get_heads()
    return str(heads[0])


def alembic_revisions() -> tuple[str, ...]:
    """Every revision as Alembic reads it from the migration scripts, oldest first."""
    from alembic.script import ScriptDirectory

    walked = ScriptDirectory(str(MIGRATIONS)).walk_revisions()  # newest first
    return tuple(str(script.revision) for script in reversed(list(walked)))


def current(engine: Engine, location: Location) -> str | None:
    """The store's schema revision, or None for an empty store."""
    with engine.connect() as conn:
        return _current_in(conn, location)


def _current_in(conn: Any, location: Location) -> str | None:
    table = f'"{location.schema}".{VERSION_TABLE}' if location.schema else VERSION_TABLE
    if location.is_sqlite:
        exists = conn.execute(
            text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :t"),
            {"t": VERSION_TABLE},
        ).first()
    else:
        exists = conn.execute(
            text(
                "SELECT 1 FROM information_schema.tables "
                "WHERE table_schema = :s AND table_name = :t"
            ),
            {"s": location.schema, "t": VERSION_TABLE},
        ).first()
    if exists is None:
        return None
    rows = conn.execute(text(f"SELECT version_num FROM {table}")).all()
    if len(rows) > 1:
        raise StoreError(
            f"The {location.role} store of region {location.region!r} at {location.display} "
            f"has several schema revisions ({', '.join(str(r[0]) for r in rows)})"
        )
    return str(rows[0][0]) if rows else None


def upgrade(engine: Engine, location: Location) -> tuple[str | None, str]:
    """Apply every migration not yet applied; return (revision before, revision after).

    Several processes may start on one fresh store at once (two gateways, a gateway and
    ``sekisho db upgrade``): one migrates while the others wait, then find it up to date.
    """
    try:
        # SQLite: the whole check runs under the lock, because a process's first connection
        # switches a fresh file to WAL, which another process's reads would make fail at once
        # ("database is locked", no busy handler for that switch).
        with _migration_lock(location):
            return _upgrade(engine, location)
    except SQLAlchemyError as exc:
        raise StoreError(
            f"Cannot migrate the {location.role} store of region {location.region!r} at "
            f"{location.display}: {_reason(exc)}"
        ) from None


def _refuse_newer(rev: str | None, location: Location) -> None:
    """A store a newer sekisho migrated is never migrated back, nor served by this one (its
    records may be sealed or laid out in ways this version would take for damage)."""
    if rev is not None and rev not in REVISIONS:
        raise StoreMisconfigured(
            f"The {location.role} store of region {location.region!r} at {location.display} is at "
            f"schema revision {rev}, which this sekisho does not know (it knows "
            f"{', '.join(REVISIONS)}): a newer version of sekisho migrated it. A store is never "
            "migrated back: run that newer version again (going back to a backup from before "
            "the upgrade: operations.md, Upgrading)"
        )


def _upgrade(engine: Engine, location: Location) -> tuple[str | None, str]:
    before = current(engine, location)
    if before == HEAD:
        return before, HEAD  # up to date: Alembic is not even imported
    _refuse_newer(before, location)
    from alembic import command

    with engine.begin() as conn:
        if location.schema is not None:
            # One migration at a time per schema, across processes and hosts; released with
            # the transaction.
            conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                {"key": f"sekisho-store-migrate:{location.schema}"},
            )
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{location.schema}"'))
        before = _current_in(conn, location)  # another process may have just finished
        _refuse_newer(before, location)
        if before != HEAD:
            command.upgrade(_alembic_config(conn, location.schema), "head")
    return before, head()


@contextlib.contextmanager
def _migration_lock(location: Location) -> Iterator[None]:
    """For SQLite, an exclusive lock on a file beside the database, held while migrating."""
    if not location.is_sqlite:
        yield
        return
    path = location.sqlite_path.with_name(location.sqlite_path.name + ".migrate-lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: a byte-range lock (retried by the C runtime ~10 s)
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined,unused-ignore]
        else:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def check_schema(engine: Engine, location: Location) -> None:
    """Refuse to run against a schema that is behind (or ahead of) this version of sekisho."""
    try:
        rev = current(engine, location)
    except SQLAlchemyError as exc:
        raise StoreError(
            f"Cannot open the {location.role} store of region {location.region!r} at "
            f"{location.display}: {_reason(exc)}"
        ) from None
    want = head()
    _refuse_newer(rev, location)
    if rev != want:
        raise StoreMisconfigured(
            f"The {location.role} store of region {location.region!r} at {location.display} is at "
            f"schema revision {rev or 'none (empty)'}, this sekisho needs {want}. "
            "Run: sekisho db upgrade --config FILE"
        )


def claim(engine: Engine, location: Location, country: str) -> None:
    """Mark a fresh store as the region's, or check that it is; a store holds one region only."""
    try:
        with engine.begin() as conn:
            row = conn.execute(
                select(store_marker.c.region, store_marker.c.country).where(
                    store_marker.c.role == location.role
                )
            ).first()
            if row is None:
                try:
                    conn.execute(
                        insert(store_marker).values(
                            role=location.role,
                            region=location.region,
                            country=country,
                            created_at=int(time.time() * 1000),
                        )
                    )
                    return
                except IntegrityError:  # another process claimed it at the same moment
                    row = conn.execute(
                        select(store_marker.c.region, store_marker.c.country).where(
                            store_marker.c.role == location.role
                        )
                    ).one()
    except SQLAlchemyError as exc:
        raise StoreError(
            f"Cannot open the {location.role} store of region {location.region!r} at "
            f"{location.display}: {_reason(exc)}"
        ) from None
    region, owner_country = row
    if region != location.region:
        raise StoreMisconfigured(
            f"The store at {location.display} belongs to region {region!r}, but the config "
            f"points region {location.region!r} at it. A store never holds another region's "
            f"data: give regions.{location.region}.store its own database (or ?schema=...)."
        )
    if owner_country != country:
        raise StoreMisconfigured(
            f"The store of region {location.region!r} at {location.display} was created for "
            f"country {owner_country}, but the config now says {country}. Data does not move "
            "across borders by editing the config; migrate it deliberately or restore the country."
        )


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0]
