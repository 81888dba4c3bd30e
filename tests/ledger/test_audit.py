"""The audit replays the log and names the index of any row edited, deleted or reordered."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sekisho.ledger import AuditReport, Ledger, Signer, audit, merkle, open_storage
from sekisho.ledger.storage import NewEntry

from .conftest import decision, outcome


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
