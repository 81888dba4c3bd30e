"""Where the ledger lives: entries, the tree's complete subtrees, and every published checkpoint.

Two backends behind one interface: SQLite (default, one file under the data directory) and
PostgreSQL (psycopg 3). All methods are blocking; the ledger calls them from its own threads.

Layout (same in both):

- ``entries(idx, leaf, leaf_hash, request_id, kind)`` — the log, one row per leaf.
- ``nodes(level, idx, hash)`` — every complete subtree of level >= 1, written in the same
  transaction as the leaves that complete it, so an inclusion or consistency proof is one
  indexed read of O(log n) rows (level 0 is ``entries.leaf_hash``).
- ``tree(id=0, size, origin)`` — the committed tree size; the log's origin, fixed at creation.
- ``checkpoints(size, root, note)`` — every checkpoint ever signed.

Sequencing: ``sequence()`` appends a batch in one transaction that first takes the log's single
writer lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``pg_advisory_xact_lock``), re-reads the
committed size (another process may have appended) and commits leaves, nodes and size together.
A crash at any instant leaves the tree as of the last commit, never half a batch.
"""

from __future__ import annotations

import abc
import contextlib
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from sekisho.ledger import merkle
from sekisho.ledger.merkle import CompactRange, NodeKey

SQLITE_FILE = "ledger.sqlite3"
T = TypeVar("T")
_ROWS_PER_INSERT = 500  # 2,500 parameters at most: far below SQLite's and PostgreSQL's limits


class StorageError(RuntimeError):
    """The ledger store is unreachable, corrupt, or belongs to another log."""


@dataclass(frozen=True, slots=True)
class NewEntry:
    leaf: bytes
    leaf_hash: bytes
    request_id: str | None
    kind: str | None


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: str


class Storage(abc.ABC):
    """One log's store. Thread-safe: each thread gets its own connection."""

    placeholder = "?"

    def __init__(self) -> None:
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()
        self._edge: CompactRange | None = None  # the sequencer's view; only the writer thread
        self._insert_sql: dict[tuple[str, int], str] = {}

    # -- backend specifics -----------------------------------------------------------------------

    @abc.abstractmethod
    def _connect(self) -> Any: ...

    @abc.abstractmethod
    def _begin_sequencing(self, conn: Any) -> None:
        """Start a write transaction holding the log's single-writer lock."""

    @abc.abstractmethod
    def _create_schema(self, conn: Any) -> None: ...

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the log lives, for messages (a path or a URL without password)."""

    def _is_broken(self, conn: Any) -> bool:
        """Whether ``conn`` can serve no further statement (its server went away)."""
        return False

    # -- connections -----------------------------------------------------------------------------

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _drop_if_broken(self, conn: Any) -> bool:
        """After a failed statement: a connection that died (the server restarted, a network
        or proxy cut) is closed and forgotten, so that this thread's next call opens a new one
        rather than failing with "the connection is closed" until a restart."""
        if not self._is_broken(conn):
            return False
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._connections_lock, contextlib.suppress(ValueError):
            self._connections.remove(conn)
        with contextlib.suppress(Exception):
            conn.close()
        return True

    def _retried(self, work: Callable[[Any], T]) -> T:
        """``work(conn)`` for a read or an idempotent write: once more on a new connection
        when this thread's turned out to be dead (it may have sat idle across an outage)."""
        conn = self._conn()
        try:
            return work(conn)
        except Exception:
            with contextlib.suppress(Exception):
                conn.rollback()  # PostgreSQL: else every later statement is refused
            if not self._drop_if_broken(conn):
                raise
        return work(self._conn())

    def close(self) -> None:
        with self._connections_lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    def _q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._retried(lambda conn: self._read_on(conn, sql, params))

    def _read_on(self, conn: Any, sql: str, params: Sequence[Any]) -> list[Any]:
        cur = conn.cursor()
        try:
            cur.execute(self._q(sql), params)
            rows = cur.fetchall()
        finally:
            cur.close()
        self._end_read(conn)
        return list(rows)

    def _end_read(self, conn: Any) -> None:
        """Close the implicit read transaction so the next read sees new commits."""
        conn.commit()

    # -- setup -----------------------------------------------------------------------------------

    def initialise(self, origin: str) -> None:
        """Create the schema if needed and pin the log's origin (refuse another log's store)."""
        conn = self._conn()
        self._create_schema(conn)
        cur = conn.cursor()
        cur.execute(self._q("SELECT origin FROM tree WHERE id = 0"))
        row = cur.fetchone()
        if row is None:
            cur.execute(self._q("INSERT INTO tree (id, size, origin) VALUES (0, 0, ?)"), (origin,))
        elif row[0] != origin:
            conn.rollback()
            raise StorageError(
                f"{self.location} holds the log {row[0]!r}, not {origin!r}; "
                "use the origin it was created with or another data directory"
            )
        cur.close()
        conn.commit()

    def origin(self) -> str | None:
        rows = self._read("SELECT origin FROM tree WHERE id = 0")
        return str(rows[0][0]) if rows else None

    def holds_log(self) -> bool:
        """Whether a log was ever created here (its tree row exists); creates none."""
        return self._has_tree_table() and self.origin() is not None

    @abc.abstractmethod
    def _has_tree_table(self) -> bool: ...

    def displaced(self) -> str | None:
        """Why what is at the ledger's location is no longer what this process writes to (a
        file deleted or replaced under it), or None."""
        return None

    def damage(self) -> list[str]:
        """What the database itself reports broken (pages, indexes), for the audit."""
        return []

    # -- the write path --------------------------------------------------------------------------

    def sequence(self, batch: Sequence[NewEntry]) -> int:
        """Append ``batch`` durably and atomically; return the index of its first entry."""
        conn = self._conn()
        try:
            try:
                self._begin_sequencing(conn)
            except Exception:
                # Found dead at the batch's first statement (idle across an outage): nothing
                # of the batch was sent, so it goes on a new connection.
                if not self._drop_if_broken(conn):
                    raise
                conn = self._conn()
                self._begin_sequencing(conn)
            cur = conn.cursor()
            # Claim the batch's indexes first: one statement instead of a read and a write (the
            # writer thread waits for the GIL after every statement it runs).
            cur.execute(
                self._q("UPDATE tree SET size = size + ? WHERE id = 0 RETURNING size"),
                (len(batch),),
            )
            rows = cur.fetchall()
            if not rows:
                raise StorageError(f"{self.location} has no tree row; was it initialised?")
            size = int(rows[0][0]) - len(batch)
            edge = self._edge
            if edge is None or edge.size != size:
                # Another process appended since we last did (or this is our first batch).
                edge = CompactRange.load(size, lambda keys: self._fetch(cur, keys))
            start = size
            entries = []
            nodes = []
            for i, entry in enumerate(batch):
                entries.append(
                    (start + i, entry.leaf, entry.leaf_hash, entry.request_id, entry.kind)
                )
                nodes.extend(edge.append(entry.leaf_hash))
            self._insert(cur, "entries (idx, leaf, leaf_hash, request_id, kind)", 5, entries)
            if nodes:
                self._insert(cur, "nodes (level, idx, hash)", 3, nodes)
            cur.close()
            conn.commit()
        except BaseException:
            # The batch is refused, never reported durable. A connection that died during
            # COMMIT leaves its outcome unknown: the next batch reloads the edge from the size
            # committed, under the lock, so no index is reused or skipped either way.
            self._edge = None
            with contextlib.suppress(Exception):
                conn.rollback()
            self._drop_if_broken(conn)
            raise
        self._edge = edge
        return start

    def _insert(self, cur: Any, into: str, width: int, rows: Sequence[tuple[Any, ...]]) -> None:
        """Multi-row INSERTs: one statement per chunk instead of one per row (``executemany``
        releases and retakes the GIL per row, and the event loop waits for it each time)."""
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            key = (into, len(chunk))
            sql = self._insert_sql.get(key)
            if sql is None:
                one = "(" + ", ".join(["?"] * width) + ")"
                sql = self._q(f"INSERT INTO {into} VALUES " + ", ".join([one] * len(chunk)))
                if len(self._insert_sql) < 1024:
                    self._insert_sql[key] = sql
            cur.execute(sql, [v for row in chunk for v in row])

    def bulk_load(self, leaves: Sequence[bytes], *, chunk: int = 100_000) -> None:
        """Append many leaves quickly (benchmarks, imports): one transaction per chunk."""
        for offset in range(0, len(leaves), chunk):
            part = leaves[offset : offset + chunk]
            self.sequence([NewEntry(leaf, merkle.leaf_hash(leaf), None, None) for leaf in part])

    # -- reads -----------------------------------------------------------------------------------

    def _fetch(self, cur: Any, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        found: dict[NodeKey, bytes] = {}
        leaves = [idx for level, idx in keys if level == 0]
        inner = [(level, idx) for level, idx in keys if level > 0]
        if leaves:
            marks = ",".join("?" * len(leaves))
            cur.execute(
                self._q(f"SELECT idx, leaf_hash FROM entries WHERE idx IN ({marks})"), leaves
            )
            for idx, h in cur.fetchall():
                found[(0, int(idx))] = _blob(h, f"entry {idx}'s hash")
        if inner:
            where = " OR ".join(["(level = ? AND idx = ?)"] * len(inner))
            params = [x for key in inner for x in key]
            cur.execute(self._q(f"SELECT level, idx, hash FROM nodes WHERE {where}"), params)
            for level, idx, h in cur.fetchall():
                found[(int(level), int(idx))] = _blob(h, f"the hash of node ({level}, {idx})")
        return found

    def hashes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        return self._retried(lambda conn: self._hashes_on(conn, keys))

    def _hashes_on(self, conn: Any, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        cur = conn.cursor()
        try:
            return self._fetch(cur, keys)
        finally:
            cur.close()
            self._end_read(conn)

    def tree_size(self) -> int:
        rows = self._read("SELECT size FROM tree WHERE id = 0")
        if not rows:
            raise StorageError(f"{self.location} is not a sekisho ledger (no tree row)")
        size = rows[0][0]
        if not isinstance(size, int) or size < 0:
            raise StorageError(
                f"{self.location}: the tree size is {size!r}, not a count of entries "
                "(the tree row was edited); restore the ledger from a copy"
            )
        return size

    def entry(self, index: int) -> tuple[bytes, bytes] | None:
        """``(leaf, leaf_hash)`` of a committed entry, or None."""
        rows = self._read(
            "SELECT e.leaf, e.leaf_hash FROM entries e, tree t "
            "WHERE e.idx = ? AND t.id = 0 AND e.idx < t.size",
            (index,),
        )
        if not rows:
            return None
        return (_blob(rows[0][0], f"entry {index}"), _blob(rows[0][1], f"entry {index}'s hash"))

    def find(self, request_id: str) -> list[tuple[int, str | None]]:
        rows = self._read(
            "SELECT e.idx, e.kind FROM entries e, tree t "
            "WHERE e.request_id = ? AND t.id = 0 AND e.idx < t.size ORDER BY e.idx",
            (request_id,),
        )
        return [(int(i), k) for i, k in rows]

    def scan(self, start: int, end: int) -> list[tuple[int, bytes, bytes, str | None, str | None]]:
        """Rows ``start <= idx < end`` in index order. Raises ``StorageError`` naming the entry
        whose leaf or hash is not bytes (an edited row: see ``scan_as_stored``)."""
        return [
            (i, _blob(leaf, f"entry {i}"), _blob(h, f"entry {i}'s hash"), r, k)
            for i, leaf, h, r, k in self.scan_as_stored(start, end)
        ]

    def scan_as_stored(
        self, start: int, end: int
    ) -> list[tuple[int, object, object, str | None, str | None]]:
        """Rows ``start <= idx < end`` in index order, as stored (the auditor's view): a leaf or
        hash is bytes unless the row was edited, SQLite keeping whatever type it is given; a
        request id or kind that is not text is given as its repr, which matches no entry."""
        rows = self._read(
            "SELECT idx, leaf, leaf_hash, request_id, kind FROM entries "
            "WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, end),
        )
        return [
            (int(i), _as_stored(leaf), _as_stored(h), _text(r), _text(k))
            for i, leaf, h, r, k in rows
        ]

    def max_index(self) -> int | None:
        rows = self._read("SELECT MAX(idx) FROM entries")
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def nodes_in(self, level: int, start: int, end: int) -> dict[int, bytes]:
        rows = self._read(
            "SELECT idx, hash FROM nodes WHERE level = ? AND idx >= ? AND idx < ?",
            (level, start, end),
        )
        # A row edited to another type is left out: to a reader it is a missing hash.
        return {i: bytes(h) for i, h in rows if isinstance(i, int) and _is_blob(h)}

    # -- checkpoints -----------------------------------------------------------------------------

    def store_checkpoint(self, size: int, root: bytes, signed: str) -> None:
        self._retried(lambda conn: self._store_checkpoint_on(conn, size, root, signed))

    def _store_checkpoint_on(self, conn: Any, size: int, root: bytes, signed: str) -> None:
        cur = conn.cursor()
        try:
            cur.execute(
                self._q(
                    "INSERT INTO checkpoints (size, root, note, created) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (size) DO NOTHING"
                ),
                (size, root, signed, time.time()),
            )
            conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            cur.close()

    def checkpoints(self) -> list[StoredCheckpoint]:
        rows = self._read("SELECT size, root, note FROM checkpoints ORDER BY size")
        return [_checkpoint(row) for row in rows]

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        rows = self._read("SELECT size, root, note FROM checkpoints ORDER BY size DESC LIMIT 1")
        return _checkpoint(rows[0]) if rows else None

    def checkpoint_at(self, size: int) -> StoredCheckpoint | None:
        rows = self._read("SELECT size, root, note FROM checkpoints WHERE size = ?", (size,))
        return _checkpoint(rows[0]) if rows else None


# A row edited by hand may hold any type in any column (SQLite keeps what it is given): what is
# read is checked, so that an edit is reported as one, never a TypeError (bytes("text") fails,
# bytes(5) is five zero bytes).


def _is_blob(value: object) -> bool:
    return isinstance(value, bytes | bytearray | memoryview)


def _as_stored(value: object) -> object:
    return bytes(value) if isinstance(value, bytearray | memoryview) else value


def _blob(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise StorageError(
            f"{what} is stored as {type(value).__name__}, not bytes: the ledger was edited; "
            "run `sekisho ledger audit`"
        )
    return bytes(value)


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _text(value: object) -> str | None:
    return value if value is None or isinstance(value, str) else repr(value)


def _checkpoint(row: Sequence[Any]) -> StoredCheckpoint:
    size, root, note = row
    # A root or note of another type matches no rebuilt root or signature: the audit says so.
    return StoredCheckpoint(
        int(size), bytes(root) if _is_blob(root) else b"", note if isinstance(note, str) else ""
    )


# --- SQLite ---------------------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY,
    leaf BLOB NOT NULL,
    leaf_hash BLOB NOT NULL,
    request_id TEXT,
    kind TEXT
);
CREATE INDEX IF NOT EXISTS entries_request_id ON entries (request_id)
    WHERE request_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tree (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    size INTEGER NOT NULL,
    origin TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    created REAL NOT NULL
);
-- A whole batch in one INSERT (see SQLiteStorage.sequence): a 't' row checks the tree size the
-- writer expects and sets the new one, then 'e' rows are entries and 'n' rows subtree hashes.
CREATE VIEW IF NOT EXISTS append_batch (part, a, b, c, d, e) AS
    SELECT NULL, NULL, NULL, NULL, NULL, NULL WHERE 0;
CREATE TRIGGER IF NOT EXISTS append_batch_tree INSTEAD OF INSERT ON append_batch
WHEN NEW.part = 't' BEGIN
    SELECT RAISE(ABORT, 'sekisho-ledger: stale tree size')
        WHERE (SELECT size FROM tree WHERE id = 0) IS NOT NEW.a;
    UPDATE tree SET size = NEW.b WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS append_batch_entry INSTEAD OF INSERT ON append_batch
WHEN NEW.part = 'e' BEGIN
    INSERT INTO entries (idx, leaf, leaf_hash, request_id, kind)
        VALUES (NEW.a, NEW.b, NEW.c, NEW.d, NEW.e);
END;
CREATE TRIGGER IF NOT EXISTS append_batch_node INSTEAD OF INSERT ON append_batch
WHEN NEW.part = 'n' BEGIN
    INSERT INTO nodes (level, idx, hash) VALUES (NEW.a, NEW.b, NEW.c);
END;
"""
_STALE = "sekisho-ledger: stale tree size"
_BATCH_ROW = "(?, ?, ?, ?, ?, ?)"
_MAX_BATCH_ROWS = 5_000  # 30,000 parameters: below SQLite's 32,766
# Prepared statements a connection keeps (Python's default is 128). Each keeps its program and
# its last bound values, so statements whose text varies with a count (IN lists, multi-row
# INSERTs) would hold megabytes; the statements used at every request stay cached.
_CACHED_STATEMENTS = 32


def _padded_rows(rows: int) -> int:
    """The statement size a batch of ``rows`` rows is padded to: up to 8 as it is, then four
    sizes per doubling (10, 12, 14, 16, 20, 24, ...), so padding adds a quarter at most."""
    if rows <= 8:
        return rows
    step = (1 << (rows - 1).bit_length()) // 8
    return min(_MAX_BATCH_ROWS, -(-rows // step) * step)


class SQLiteStorage(Storage):
    """One SQLite file in WAL mode with ``synchronous=FULL``.

    FULL, not NORMAL: in WAL mode NORMAL skips the fsync at commit, so a power cut can lose
    commits that were already reported durable — and "durable" is the ledger's promise (a
    request goes upstream only after its decision is on disk). Group commit shares one WAL
    fsync among every entry in the batch, which is what makes FULL affordable.
    """

    def __init__(self, path: Path, *, busy_timeout: float = 30.0, read_only: bool = False) -> None:
        super().__init__()
        self.path = path
        self.busy_timeout = busy_timeout
        self.read_only = read_only
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened

    @property
    def location(self) -> str:
        return str(self.path)

    def _connect(self) -> sqlite3.Connection:
        if sqlite3.sqlite_version_info < (3, 35):
            raise StorageError(
                f"the ledger needs SQLite 3.35 or newer (UPDATE ... RETURNING); this Python "
                f"has {sqlite3.sqlite_version}"
            )
        if self.read_only:
            return self._connect_read_only()
        # Switching a new file to WAL needs a moment of exclusive access, and SQLite answers
        # "database is locked" at once (no busy handler) when another process is opening the
        # same new file: retry within the busy timeout instead of failing the start.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            conn: sqlite3.Connection | None = None
            try:
                conn = sqlite3.connect(
                    self.path,
                    timeout=self.busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                    cached_statements=_CACHED_STATEMENTS,
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                if self._file is None:
                    self._remember_file()
                # Text that is not UTF-8 (written by another tool) is read, not an error that
                # would stop the audit that is to report it.
                conn.text_factory = _lenient_text
                return conn
            except sqlite3.OperationalError as e:
                if conn is not None:
                    conn.close()
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise StorageError(f"cannot open the ledger at {self.path}: {e}") from None
                time.sleep(0.01)
            except sqlite3.Error as e:
                raise StorageError(f"cannot open the ledger at {self.path}: {e}") from None

    def _connect_read_only(self) -> sqlite3.Connection:
        """For the audit: writes nothing, and works on a copy it may not write (a backup
        mounted read-only, a file without write permission)."""
        uri = "file:" + quote(str(self.path.resolve())) + "?mode=ro"
        try:
            return self._open_uri(uri)
        except sqlite3.OperationalError as e:
            if "unable to open" not in str(e):
                raise StorageError(f"cannot open the ledger at {self.path}: {e}") from None
        # Reading a WAL database needs its -shm index beside it, which a read-only directory
        # cannot get; ``immutable`` reads the file alone, which is all of it only without a WAL.
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StorageError(
                f"cannot open the ledger at {self.path} read-only: its write-ahead log {wal} "
                "holds commits SQLite can read only with a -shm file it cannot create in this "
                f'directory. Audit a copy (`sqlite3 {self.path} ".backup COPY"`) or the '
                "file where it can be written beside"
            )
        try:
            return self._open_uri(uri + "&immutable=1")
        except sqlite3.Error as e:
            raise StorageError(f"cannot open the ledger at {self.path}: {e}") from None

    def _open_uri(self, uri: str) -> sqlite3.Connection:
        conn = sqlite3.connect(
            uri, uri=True, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.text_factory = _lenient_text  # the audit reads what other tools wrote, too
        try:
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # opens lazily
        except BaseException:
            conn.close()
            raise
        return conn

    def damage(self) -> list[str]:
        try:
            rows = self._read("PRAGMA quick_check")
        except sqlite3.DatabaseError as e:
            return [str(e)]
        found = [str(r[0]) for r in rows]
        return [] if found == ["ok"] else found

    def _end_read(self, conn: Any) -> None:
        # autocommit mode (isolation_level=None): each read is its own transaction already
        return None

    def _has_tree_table(self) -> bool:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return False  # and connecting would create it
        return bool(
            self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tree'")
        )

    def _remember_file(self) -> None:
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            self._file = (st.st_dev, st.st_ino)

    def displaced(self) -> str | None:
        """The file at ``path`` must be the one opened: after an ``rm`` every write would go to
        an unlinked inode (lost at the next start), after a copy over it to a file nobody
        reads. One stat; the ledger calls it at most once a second."""
        if self._file is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the ledger file {self.path} was deleted while the gateway had it open"
        except OSError:
            return None  # unknown: the writes themselves will say
        if (st.st_dev, st.st_ino) != self._file:
            return f"the ledger file {self.path} was replaced by another file while in use"
        return None

    def sequence(self, batch: Sequence[NewEntry]) -> int:
        """As ``Storage.sequence``, in one statement when this process knows the tree's edge.

        The writer thread retakes the GIL after every statement, and under load it waits for
        the event loop each time; five statements per commit made commits slower than their
        fsync. A multi-row INSERT into the ``append_batch`` view runs the size check, the new
        size, the entries and the subtree hashes through its triggers, and commits (autocommit)
        within that one statement: atomic, durable on return. If another process appended
        meanwhile, the size check aborts it and the batch goes the long way, reloading the edge.
        """
        edge = self._edge
        if edge is None or not batch:
            return super().sequence(batch)
        start = edge.size
        grown = CompactRange(edge.size, list(edge.edge))
        params: list[Any] = [None] * 6
        nodes: list[tuple[int, int, bytes]] = []
        for i, entry in enumerate(batch):
            params += ("e", start + i, entry.leaf, entry.leaf_hash, entry.request_id, entry.kind)
            nodes.extend(grown.append(entry.leaf_hash))
        for level, idx, h in nodes:
            params += ("n", level, idx, h, None, None)
        rows = len(params) // 6
        if rows > _MAX_BATCH_ROWS:
            return super().sequence(batch)
        params[0:3] = ("t", start, grown.size)
        # Padded with rows no trigger takes (part NULL) to one of a few sizes: one statement
        # per size would be prepared, cached and kept with its last bound values by SQLite,
        # and batch sizes under load are many (45 MB of the writer's memory at c=256).
        rows = _padded_rows(rows)
        params += [None] * (rows * 6 - len(params))
        sql = self._insert_sql.get(("append_batch", rows))
        if sql is None:
            sql = "INSERT INTO append_batch VALUES " + ", ".join([_BATCH_ROW] * rows)
            self._insert_sql[("append_batch", rows)] = sql
        try:
            self._conn().execute(sql, params)
        except sqlite3.IntegrityError as e:
            self._edge = None
            if _STALE not in str(e):
                raise
            return super().sequence(batch)  # another process appended: reload and retry
        except BaseException:
            self._edge = None
            raise
        self._edge = grown
        return start

    def _begin_sequencing(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def _create_schema(self, conn: Any) -> None:
        conn.executescript(_SQLITE_SCHEMA)
        conn.execute("BEGIN IMMEDIATE")


# --- PostgreSQL -----------------------------------------------------------------------------------

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    idx BIGINT PRIMARY KEY,
    leaf BYTEA NOT NULL,
    leaf_hash BYTEA NOT NULL,
    request_id TEXT,
    kind TEXT
);
CREATE INDEX IF NOT EXISTS entries_request_id ON entries (request_id)
    WHERE request_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS nodes (
    level SMALLINT NOT NULL,
    idx BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TABLE IF NOT EXISTS tree (
    id SMALLINT PRIMARY KEY CHECK (id = 0),
    size BIGINT NOT NULL,
    origin TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    size BIGINT PRIMARY KEY,
    root BYTEA NOT NULL,
    note TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
"""


class PostgresStorage(Storage):
    """PostgreSQL via psycopg 3. Commits are durable with the default ``synchronous_commit=on``.

    The URL may carry ``schema=NAME`` (removed before connecting) to keep the ledger's tables in
    their own schema; the sequencer lock is an advisory lock derived from that schema's name.
    """

    placeholder = "%s"

    def __init__(self, url: str) -> None:
        super().__init__()
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.schema = query.pop("schema", "public")
        if not self.schema.replace("_", "").isalnum():
            raise StorageError(f"schema name {self.schema!r} must be letters, digits and _")
        # How an operator tells the ledger's sessions apart in pg_stat_activity (to watch them,
        # or to end them), unless the URL names them itself.
        query.setdefault("application_name", "sekisho-ledger")
        self.conninfo = urlunsplit(parts._replace(query=urlencode(query)))
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2], query="")
        self._shown = urlunsplit(shown) + f" (schema {self.schema})"
        self.lock_key = zlib.crc32(f"sekisho-ledger:{self.schema}".encode())

    @property
    def location(self) -> str:
        return self._shown

    def _connect(self) -> Any:
        import psycopg

        try:
            conn = psycopg.connect(self.conninfo, connect_timeout=10)
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            conn.execute(f'SET search_path TO "{self.schema}"')
            conn.commit()
        except psycopg.Error as e:
            raise StorageError(f"cannot connect to the ledger at {self.location}: {e}") from None
        return conn

    def _is_broken(self, conn: Any) -> bool:
        return bool(conn.closed)

    def _has_tree_table(self) -> bool:
        rows = self._read("SELECT to_regclass(?)", (f'"{self.schema}".tree',))
        return bool(rows and rows[0][0] is not None)

    def _begin_sequencing(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))

    def _create_schema(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))
        conn.execute(_PG_SCHEMA)


def check_url(url: str) -> str:
    """``url`` if it is a ledger location the config may name (``ledger.url``): a PostgreSQL
    URL naming its database, or ``sqlite:///PATH``; raise ValueError saying what is wrong
    (without the URL's password)."""
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018  (raises for a port outside 0..65535)
        except ValueError:
            raise ValueError("the postgresql:// URL has a port outside 1-65535") from None
        if not parts.path.strip("/"):
            raise ValueError("the postgresql:// URL names no database (postgresql://HOST/DB)")
        schema = dict(parse_qsl(parts.query)).get("schema", "public")
        if not schema or not schema.replace("_", "").isalnum():
            raise ValueError(f"schema name {schema!r} must be letters, digits and _")
        return url
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or path.endswith("/") or "?" in path:
            raise ValueError(
                "sqlite:///PATH must name a database file (sqlite:////abs/ledger.sqlite3)"
            )
        return url
    scheme = url.partition("://")[0] if "://" in url else ""
    said = f" (not {scheme}://)" if scheme else ""
    raise ValueError(
        f"must be a postgresql:// URL{said} or sqlite:///PATH; leave it out for SQLite in data_dir"
    )


def open_storage(
    url_or_path: str | Path, *, create: bool = True, read_only: bool = False
) -> Storage:
    """A PostgreSQL URL, a SQLite file path, or a data directory (holding ``ledger.sqlite3``).
    ``create=False`` (the operator's commands) refuses a SQLite ledger that does not exist yet,
    instead of making an empty one where the operator looked by mistake; ``read_only`` opens
    a SQLite ledger without writing anything (the audit)."""
    text = str(url_or_path)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStorage(text)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") - 1 :] if text.startswith("sqlite:////") else text[10:]
    path = Path(text)
    if path.is_dir():
        path = path / SQLITE_FILE
    elif not path.parent.exists():
        raise StorageError(f"the directory {path.parent} for the ledger does not exist")
    if not create and not path.exists():
        raise StorageError(
            f"there is no ledger at {path}: the gateway makes it on its first start. Pass the "
            "data directory `serve` uses (--data-dir DIR), or its config (--config FILE)."
        )
    return SQLiteStorage(path, read_only=read_only)


@contextlib.contextmanager
def opened(url_or_path: str | Path) -> Iterator[Storage]:
    storage = open_storage(url_or_path)
    try:
        yield storage
    finally:
        storage.close()
