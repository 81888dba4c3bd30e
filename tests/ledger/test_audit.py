"""The audit replays the log and names the index of any row edited, deleted or reordered."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sekisho.ledger import AuditReport, Ledger, Signer, audit, merkle, open_storage
from sekisho.ledger.storage import NewEntry, StorageError

from .conftest import ORIGIN, decision, outcome


async def _fill(ledger: Ledger, requests: int = 12) -> None:
    for i in range(requests):
        await ledger.append(decision(f"audit-{i}"))
        if i % 4 != 3:  # every fourth request never gets its outcome
            await ledger.append(outcome(f"audit-{i}"))
        if i % 5 == 0:
            ledger.checkpoint_now()


def _run_audit(data_dir: Path, signer: Signer) -> AuditReport:
    storage = open_storage(str(data_dir))
    try:
        return audit(storage, [signer.verifier()])
    finally:
        storage.close()


def _db(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(data_dir / "ledger.sqlite3", isolation_level=None)


async def test_an_untouched_log_passes_and_lists_incomplete_requests(
    ledger: Ledger, data_dir: Path, signer: Signer
) -> None:
    await _fill(ledger)
    report = _run_audit(data_dir, signer)
    assert report.ok, report.problems
    assert report.entries_checked == 12 + 9
    assert report.checkpoints_checked >= 3
    assert [rid for _, rid in report.incomplete] == ["audit-3", "audit-7", "audit-11"]


async def test_an_edited_entry_is_reported_with_its_index(
    ledger: Ledger, data_dir: Path, signer: Signer
) -> None:
    await _fill(ledger)
    forged = decision("audit-2", endpoint="us-east-1").to_bytes()
    with _db(data_dir) as db:
        index = db.execute("SELECT idx FROM entries WHERE request_id = 'audit-2'").fetchone()[0]
        db.execute("UPDATE entries SET leaf = ? WHERE idx = ?", (forged, index))
    report = _run_audit(data_dir, signer)
    assert not report.ok
    first = report.problems[0]
    assert (first.index, first.kind) == (index, "leaf_hash_mismatch")


async def test_an_entry_edited_together_with_its_hash_is_still_caught(
    ledger: Ledger, data_dir: Path, signer: Signer
) -> None:
    await _fill(ledger)
    forged = decision("audit-5", endpoint="us-east-1").to_bytes()
    with _db(data_dir) as db:
        index = db.execute("SELECT idx FROM entries WHERE request_id = 'audit-5'").fetchone()[0]
        db.execute(
            "UPDATE entries SET leaf = ?, leaf_hash = ? WHERE idx = ?",
            (forged, merkle.leaf_hash(forged), index),
        )
    report = _run_audit(data_dir, signer)
    kinds = {p.kind for p in report.problems}
    assert "checkpoint_mismatch" in kinds
    node = next(p for p in report.problems if p.kind == "node_mismatch")
    assert node.index == index - index % 2  # the pair that holds the edited entry
    assert str(index) in node.detail or str(index - 1) in node.detail


async def test_a_deleted_row_is_reported_with_its_index(
    ledger: Ledger, data_dir: Path, signer: Signer
) -> None:
    await _fill(ledger)
    with _db(data_dir) as db:
        db.execute("DELETE FROM entries WHERE idx = 6")
    report = _run_audit(data_dir, signer)
    assert (6, "missing_entry") in [(p.index, p.kind) for p in report.problems]


async def test_reordered_rows_are_reported(ledger: Ledger, data_dir: Path, signer: Signer) -> None:
    await _fill(ledger)
    with _db(data_dir) as db:
        db.execute("UPDATE entries SET idx = -1 WHERE idx = 9")
        db.execute("UPDATE entries SET idx = 9 WHERE idx = 10")
        db.execute("UPDATE entries SET idx = 10 WHERE idx = -1")
    report = _run_audit(data_dir, signer)
    found = [(p.index, p.kind) for p in report.problems]
    # Entry 10 (audit-5's outcome) now precedes its decision, and the pair 10..11 no longer
    # hashes to what was stored.
    assert (9, "outcome_without_decision") in found
    assert (10, "node_mismatch") in found


async def test_an_outcome_without_a_decision_is_a_violation(data_dir: Path, signer: Signer) -> None:
    storage = open_storage(str(data_dir))
    storage.initialise("ledger.test.example/log")
    orphan = outcome("ghost").to_bytes()
    storage.sequence([NewEntry(orphan, merkle.leaf_hash(orphan), "ghost", "outcome")])
    storage.close()
    report = _run_audit(data_dir, signer)
    assert [(p.index, p.kind) for p in report.problems] == [(0, "outcome_without_decision")]


async def test_a_checkpoint_signed_by_another_key_is_reported(
    ledger: Ledger, data_dir: Path
) -> None:
    await _fill(ledger, 2)
    report = _run_audit(data_dir, Signer.generate("ledger.test.example/log"))
    assert any(p.kind == "checkpoint_signature" for p in report.problems)


# Every column the audit reads, and what a hand edit can leave there: SQLite keeps any type in
# any column. Each edit is a violation named with its entry where there is one; none stops the
# audit. The tree size is the log's length: anything but a count is refused by name instead.
_COLUMNS = [
    ("entries", "leaf", "idx = 3"),
    ("entries", "leaf_hash", "idx = 3"),
    ("entries", "request_id", "idx = 3"),
    ("entries", "kind", "idx = 3"),
    ("nodes", "hash", "level = 1 AND idx = 1"),
    ("nodes", "idx", "level = 1 AND idx = 1"),
    ("nodes", "level", "level = 1 AND idx = 1"),
    ("checkpoints", "root", "size = (SELECT MIN(size) FROM checkpoints WHERE size > 0)"),
    ("checkpoints", "note", "size = (SELECT MIN(size) FROM checkpoints WHERE size > 0)"),
]


@dataclass(frozen=True)
class Sql:
    """A value written as SQL, for what a driver would not send (text that is not UTF-8)."""

    text: str


_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from(["'allow'", "CAST(x'ff00fe' AS TEXT)", "'42'", "zeroblob(32)"]).map(Sql),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(column=st.sampled_from(_COLUMNS), value=_VALUES)
def test_a_column_rewritten_with_any_type_is_reported_never_a_crash(
    column: tuple[str, str, str], value: object, filled_ledger: tuple[Path, Signer]
) -> None:
    source, signer = filled_ledger
    table, name, where = column
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        shutil.copy(source / "ledger.sqlite3", data_dir / "ledger.sqlite3")
        db = _db(data_dir)
        stored = f"SELECT typeof({name}), hex({name}) FROM {table} WHERE {where}"
        before = db.execute(stored).fetchone()
        sql = f"UPDATE {table} SET {name} = %s WHERE {where}"
        try:
            if isinstance(value, Sql):
                db.execute(sql % value.text)
            else:
                db.execute(sql % "?", (value,))
        except sqlite3.IntegrityError:
            assume(False)  # NOT NULL or the key: SQLite refuses the edit itself
        after = db.execute(stored).fetchone()  # None: the row's key itself was changed
        db.close()
        report = _run_audit(data_dir, signer)
    if after == before:  # the same type and value: nothing was changed
        assert report.ok, report.problems
        return
    assert not report.ok, (table, name, value)
    if table == "entries":
        assert report.problems[0].index == 3, report.problems


@pytest.fixture(scope="module")
def filled_ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Signer]:
    data_dir = tmp_path_factory.mktemp("ledger")
    signer = Signer.generate(ORIGIN)

    async def fill() -> None:
        ledger = await Ledger.open(str(data_dir), signer, origin=ORIGIN, checkpoint_interval=0.05)
        try:
            await _fill(ledger)
            ledger.checkpoint_now()
        finally:
            await ledger.close()

    asyncio.run(fill())
    return data_dir, signer


def test_a_tree_size_that_is_not_a_count_is_refused_by_name(
    filled_ledger: tuple[Path, Signer], tmp_path: Path
) -> None:
    source, _ = filled_ledger
    shutil.copy(source / "ledger.sqlite3", tmp_path / "ledger.sqlite3")
    with _db(tmp_path) as db:
        db.execute("UPDATE tree SET size = 'many' WHERE id = 0")
    storage = open_storage(str(tmp_path))
    try:
        with pytest.raises(StorageError, match="the tree size is 'many'"):
            audit(storage)
    finally:
        storage.close()
