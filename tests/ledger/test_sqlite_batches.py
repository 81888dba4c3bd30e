"""SQLite sequencing: a batch is one statement when the writer knows the tree's edge, and the
log stays one consistent tree when another writer appended in between."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sekisho.ledger import merkle
from sekisho.ledger.storage import NewEntry, SQLiteStorage, StorageError, open_storage

ORIGIN = "ledger.test.example/log"


def entries(prefix: str, n: int) -> list[NewEntry]:
    out = []
    for i in range(n):
        leaf = f'{{"request_id":"{prefix}-{i}"}}'.encode()
        out.append(NewEntry(leaf, merkle.leaf_hash(leaf), f"{prefix}-{i}", "decision"))
    return out


def statements(storage: SQLiteStorage) -> list[str]:
    """The statements the writer's connection runs from now on (SQLite reports a statement
    again for each trigger program it runs: a repeat is not a new statement)."""
    seen: list[str] = []

    def trace(sql: str) -> None:
        if not sql.startswith("--") and (not seen or seen[-1] != sql):
            seen.append(sql)

    storage._conn().set_trace_callback(trace)
    return seen


def root_in_store(storage: SQLiteStorage) -> bytes:
    size = storage.tree_size()
    return merkle.root_from_hashes(size, storage.hashes(merkle.subtree_keys(0, size)))


def test_after_the_first_batch_a_batch_is_one_durable_statement(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    assert isinstance(storage, SQLiteStorage)
    storage.initialise(ORIGIN)
    leaves: list[NewEntry] = []
    try:
        for n in (1, 3, 7, 2, 16, 1):
            seen = statements(storage)
            batch = entries(f"b{len(leaves)}", n)
            assert storage.sequence(batch) == len(leaves)
            leaves += batch
            if len(leaves) > n:  # not the first batch: the edge is known
                assert len(seen) == 1 and seen[0].startswith("INSERT INTO append_batch"), seen
        assert storage.tree_size() == len(leaves)
        assert root_in_store(storage) == merkle.reference_root([e.leaf_hash for e in leaves])
        assert [i for i, _ in storage.find("b4-2")] == [6]
    finally:
        storage.close()
    # what was reported durable is there for a new reader
    again = open_storage(tmp_path)
    try:
        assert again.tree_size() == len(leaves)
    finally:
        again.close()


def test_batches_of_every_size_share_a_few_statements(tmp_path: Path) -> None:
    """SQLite keeps each distinct statement it prepared with its last bound values: one
    statement per batch size held tens of MB under load. Batches are padded to one of a few
    sizes (four per doubling), so sixty sizes use a score of statements, and the log is the same
    tree."""
    storage = open_storage(tmp_path)
    assert isinstance(storage, SQLiteStorage)
    storage.initialise(ORIGIN)
    leaves: list[NewEntry] = []
    shapes: set[int] = set()
    try:
        for n in range(1, 61):
            seen = statements(storage)
            batch = entries(f"s{n}", n)
            assert storage.sequence(batch) == len(leaves)
            leaves += batch
            if len(leaves) > n:
                (sql,) = seen
                shapes.add(sql.count("), (") + 1)  # rows in the multi-row INSERT
        assert len(shapes) <= 20, sorted(shapes)
        assert storage.tree_size() == len(leaves)
        assert root_in_store(storage) == merkle.reference_root([e.leaf_hash for e in leaves])
        assert [i for i, _ in storage.find("s60-59")] == [len(leaves) - 1]
    finally:
        storage.close()


def test_two_writers_taking_turns_keep_one_tree(tmp_path: Path) -> None:
    a, b = open_storage(tmp_path), open_storage(tmp_path)
    assert isinstance(a, SQLiteStorage) and isinstance(b, SQLiteStorage)
    a.initialise(ORIGIN)
    b.initialise(ORIGIN)
    leaves: list[NewEntry] = []
    try:
        for turn in range(12):
            writer = a if turn % 3 else b  # a's cached edge goes stale whenever b wrote
            batch = entries(f"t{turn}", turn % 4 + 1)
            assert writer.sequence(batch) == len(leaves)
            leaves += batch
        assert a.tree_size() == b.tree_size() == len(leaves)
        expected = merkle.reference_root([e.leaf_hash for e in leaves])
        assert root_in_store(a) == root_in_store(b) == expected
    finally:
        a.close()
        b.close()


def test_a_failed_batch_leaves_nothing_and_the_next_one_still_lands(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    assert isinstance(storage, SQLiteStorage)
    storage.initialise(ORIGIN)
    try:
        storage.sequence(entries("ok", 2))
        bad = entries("bad", 2)
        bad[1] = NewEntry(bad[1].leaf, bad[1].leaf_hash, bad[1].request_id, None)
        conn = storage._conn()
        conn.execute(  # a constraint the second entry breaks, mid-statement
            "CREATE TRIGGER no_null_kind BEFORE INSERT ON entries WHEN NEW.kind IS NULL "
            "BEGIN SELECT RAISE(ABORT, 'kind required'); END"
        )
        with pytest.raises((sqlite3.IntegrityError, StorageError)):
            storage.sequence(bad)
        assert storage.tree_size() == 2
        assert storage.find("bad-0") == []  # the first entry of the batch did not land either
        conn.execute("DROP TRIGGER no_null_kind")
        storage.sequence(entries("after", 3))
        assert storage.tree_size() == 5
        assert [i for i, _ in storage.find("after-0")] == [2]
    finally:
        storage.close()
