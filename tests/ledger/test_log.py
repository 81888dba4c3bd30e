"""The sequencer: durable before it answers, grouped under load, refusing rather than hanging."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sekisho.errors import NotFound, ServiceUnavailable
from sekisho.ledger import (
    LEDGER_REFUSALS,
    Checkpoint,
    Ledger,
    ReceiptError,
    Signer,
    StorageError,
    merkle,
    open_checkpoint,
    verify_receipt,
)
from sekisho.ledger.audit import audit
from sekisho.ledger.storage import NewEntry, SQLiteStorage, open_storage

from .conftest import ORIGIN, decision, new_request_id, outcome


def _refusals(reason: str) -> float:
    value = LEDGER_REFUSALS.labels(reason=reason)._value.get()
    return float(value)


async def test_appended_entry_is_already_on_disk_when_append_returns(
    ledger: Ledger, data_dir: Path
) -> None:
    other = open_storage(str(data_dir))  # a second connection: what a crash would leave
    try:
        for _ in range(20):
            record = decision(new_request_id())
            appended = await ledger.append(record)
            stored = other.entry(appended.index)
            assert stored == (record.to_bytes(), appended.leaf_hash)
            assert other.tree_size() >= appended.index + 1
    finally:
        other.close()


async def test_concurrent_appends_get_distinct_consecutive_indexes(ledger: Ledger) -> None:
    results = await asyncio.gather(*(ledger.append(decision(new_request_id())) for _ in range(300)))
    assert sorted(r.index for r in results) == list(range(300))
    for r in results[:10]:
        assert merkle.leaf_hash(ledger.entry(r.index)) == r.leaf_hash


class CountingStorage(SQLiteStorage):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []

    def sequence(self, batch: Any) -> int:
        self.batches.append(len(batch))
        return super().sequence(batch)


async def test_group_commit_shares_one_commit_among_many_entries(
    data_dir: Path, signer: Signer
) -> None:
    storage = CountingStorage(data_dir / "ledger.sqlite3")
    storage.initialise(ORIGIN)
    ledger = Ledger(storage, signer, origin=ORIGIN, group_interval=0.005, group_size=128)
    ledger.start()
    try:
        await asyncio.gather(*(ledger.append(decision(new_request_id())) for _ in range(1000)))
    finally:
        await ledger.close()
    assert sum(storage.batches) == 1000
    assert max(storage.batches) <= 128
    assert len(storage.batches) < 100  # ~10 entries per fsync at the very least


async def test_a_lone_request_never_waits_for_the_group_interval(
    data_dir: Path, signer: Signer
) -> None:
    ledger = await Ledger.open(str(data_dir), signer, origin=ORIGIN, group_interval=0.5)
    try:
        await ledger.append(decision(new_request_id()))
        started = time.perf_counter()
        for _ in range(3):
            await ledger.append(decision(new_request_id()))
        assert time.perf_counter() - started < 0.5
    finally:
        await ledger.close()


class HangingStorage(SQLiteStorage):
    """A disk that stops answering: every write blocks until the test releases it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()

    def sequence(self, batch: Any) -> int:
        self.release.wait()
        return super().sequence(batch)


async def test_a_hanging_disk_means_refusal_within_the_deadline_not_a_hang(
    data_dir: Path, signer: Signer
) -> None:
    storage = HangingStorage(data_dir / "ledger.sqlite3")
    storage.initialise(ORIGIN)
    ledger = Ledger(storage, signer, origin=ORIGIN, deadline=0.3)
    ledger.start()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    before = _refusals("deadline")
    started = time.perf_counter()
    with pytest.raises(ServiceUnavailable) as refused:
        await ledger.append(decision(new_request_id()))
    elapsed = time.perf_counter() - started
    tick_task.cancel()
    assert 0.3 <= elapsed < 0.6
    assert ticks >= 15  # the event loop kept running while the disk hung
    assert refused.value.code == "ledger_unavailable"
    assert refused.value.status == 503
    assert "within 0.3 s" in refused.value.message
    assert "Nothing was sent upstream" in refused.value.message
    assert str(data_dir) not in refused.value.message
    assert _refusals("deadline") == before + 1
    storage.release.set()
    await ledger.close()


async def test_an_entry_refused_at_its_deadline_is_not_written_afterwards_if_still_queued(
    data_dir: Path, signer: Signer
) -> None:
    storage = HangingStorage(data_dir / "ledger.sqlite3")
    storage.initialise(ORIGIN)
    ledger = Ledger(storage, signer, origin=ORIGIN, deadline=0.2)
    ledger.start()
    first = asyncio.create_task(ledger.append(decision("in-flight")))
    await asyncio.sleep(0.05)  # the writer is now stuck on the first batch
    with pytest.raises(ServiceUnavailable):
        await ledger.append(decision("queued-behind"))
    with pytest.raises(ServiceUnavailable):
        await first
    storage.release.set()
    await ledger.close()
    check = open_storage(str(data_dir))
    try:
        assert check.find("queued-behind") == []  # dropped: its waiter was already refused
    finally:
        check.close()


async def test_a_decision_that_lands_after_its_refusal_is_followed_by_its_503_outcome(
    data_dir: Path, signer: Signer
) -> None:
    # The commit had begun when the deadline refused the request (503, nothing sent upstream);
    # the entry became durable afterwards. The log must not show a decision standing alone,
    # which reads as a request that went out without its outcome recorded.
    storage = HangingStorage(data_dir / "ledger.sqlite3")
    storage.initialise(ORIGIN)
    ledger = Ledger(storage, signer, origin=ORIGIN, deadline=0.2)
    ledger.start()
    with pytest.raises(ServiceUnavailable):
        await ledger.append(decision("landed-late"))
    storage.release.set()
    for _ in range(200):
        if len(ledger.find("landed-late")) == 2:
            break
        await asyncio.sleep(0.01)
    await ledger.close()
    check = open_storage(str(data_dir))
    try:
        kinds = dict((kind, index) for index, kind in check.find("landed-late"))
        assert set(kinds) == {"decision", "outcome"}
        assert kinds["outcome"] > kinds["decision"]
        found = check.entry(kinds["outcome"])
        assert found is not None
        entry = json.loads(found[0])
        assert entry["status"] == 503
        assert entry["error_code"] == "ledger_unavailable"
        assert entry["output_hash"] is None and entry["endpoint"] is None
        assert audit(check).incomplete == []
    finally:
        check.close()


async def test_the_late_outcome_is_written_even_when_the_ledger_closes_at_once(
    data_dir: Path, signer: Signer
) -> None:
    storage = HangingStorage(data_dir / "ledger.sqlite3")
    storage.initialise(ORIGIN)
    ledger = Ledger(storage, signer, origin=ORIGIN, deadline=0.2)
    ledger.start()
    with pytest.raises(ServiceUnavailable):
        await ledger.append(decision("closing"))
    storage.release.set()
    await asyncio.sleep(0.05)  # the late decision is resolved on the loop, then close begins
    await ledger.close()
    check = open_storage(str(data_dir))
    try:
        assert sorted(kind for _, kind in check.find("closing")) == ["decision", "outcome"]
    finally:
        check.close()


class FailingStorage(SQLiteStorage):
    def sequence(self, batch: Any) -> int:
        raise StorageError("disk full")


async def test_a_storage_error_is_a_refusal_that_says_why(data_dir: Path, signer: Signer) -> None:
    storage = FailingStorage(data_dir / "ledger.sqlite3")
    storage.initialise(ORIGIN)
    ledger = Ledger(storage, signer, origin=ORIGIN)
    ledger.start()
    before = _refusals("storage_error")
    with pytest.raises(ServiceUnavailable, match="disk is full") as refused:
        await ledger.append(decision(new_request_id()))
    assert refused.value.code == "ledger_unavailable"
    assert _refusals("storage_error") == before + 1
    # The client hears what failed, not where: the path is the operator's (log, /readyz).
    assert str(data_dir) not in refused.value.message
    await ledger.close()


class GatedFailingStorage(SQLiteStorage):
    """Fails every batch, the first only once ``gate`` is set (so that others queue)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.batches: list[int] = []

    def sequence(self, batch: Any) -> int:
        self.batches.append(len(batch))
        self.gate.wait(5)
        raise StorageError("disk full")


async def test_a_failed_group_commit_counts_every_entry_it_refused(
    data_dir: Path, signer: Signer
) -> None:
    storage = GatedFailingStorage(data_dir / "ledger.sqlite3")
    storage.initialise(ORIGIN)
    ledger = Ledger(storage, signer, origin=ORIGIN, deadline=10)
    ledger.start()
    before = _refusals("storage_error")
    first = asyncio.ensure_future(ledger.append(decision(new_request_id())))
    await asyncio.sleep(0.05)  # the writer holds the first batch: the next seven wait together
    rest = [asyncio.ensure_future(ledger.append(decision(new_request_id()))) for _ in range(7)]
    await asyncio.sleep(0.05)
    storage.gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(r, ServiceUnavailable) for r in results)
    assert sum(storage.batches) == 8 and max(storage.batches) > 1
    assert _refusals("storage_error") == before + 8  # entries, not the 2 batches
    await ledger.close()


async def test_appends_after_close_are_refused(data_dir: Path, signer: Signer) -> None:
    ledger = await Ledger.open(str(data_dir), signer, origin=ORIGIN)
    await ledger.close()
    with pytest.raises(ServiceUnavailable, match="shut down"):
        await ledger.append(decision(new_request_id()))


async def test_checkpoints_are_signed_in_the_background_as_the_tree_grows(
    ledger: Ledger, signer: Signer
) -> None:
    for _ in range(5):
        await ledger.append(decision(new_request_id()))
    await asyncio.sleep(0.2)
    cp = open_checkpoint(ledger.latest_checkpoint(), [signer.verifier()], origin=ORIGIN)
    assert cp.size == 5
    assert cp.root_hash == ledger.root_at(5)
    sizes = [c.size for c in ledger.storage.checkpoints()]
    assert sizes[0] == 0 and sizes[-1] == 5  # every published checkpoint is kept


async def test_receipt_proves_decision_and_outcome_offline(ledger: Ledger, signer: Signer) -> None:
    rid = new_request_id()
    record = decision(rid)
    await ledger.append(record)
    for _ in range(7):
        await ledger.append(decision(new_request_id()))
    await ledger.append(outcome(rid))
    receipt = await asyncio.to_thread(ledger.receipt, rid)
    assert base64.b64decode(receipt["entry"]) == record.to_bytes()
    assert receipt["index"] == 0
    assert receipt["outcome"]["index"] == 8
    report = verify_receipt(receipt, [signer.verifier()])
    assert any("decision of request" in c for c in report.checks)
    assert any("outcome of the same request is entry 8" in c for c in report.checks)


async def test_a_receipt_with_edited_entry_bytes_fails_verification(
    ledger: Ledger, signer: Signer
) -> None:
    rid = new_request_id()
    await ledger.append(decision(rid))
    await ledger.append(decision(new_request_id()))
    receipt = ledger.receipt(rid)
    forged = decision(rid, endpoint="us-east-1", jurisdiction_country="US").to_bytes()
    receipt["entry"] = base64.b64encode(forged).decode()
    with pytest.raises(ReceiptError, match=r"extra data differs|inclusion"):
        verify_receipt(receipt, [signer.verifier()])
    other_key = Signer.generate(ORIGIN).verifier()
    with pytest.raises(ReceiptError, match="not signed by any known key"):
        verify_receipt(ledger.receipt(rid), [other_key])


async def test_receipt_can_carry_a_consistency_proof_from_an_older_tree(
    ledger: Ledger, signer: Signer
) -> None:
    for _ in range(3):
        await ledger.append(decision(new_request_id()))
    old = ledger.checkpoint_now()
    rid = new_request_id()
    await ledger.append(decision(rid))
    receipt = ledger.receipt(rid, consistency_with=3)
    assert receipt["consistency"][0]["old_size"] == 3
    cp_old = Checkpoint.parse(old.partition("\n\n")[0] + "\n")
    cp_new = Checkpoint.parse(receipt["tlog_proof"].split("\n\n")[1] + "\n")
    proof = [base64.b64decode(h) for h in receipt["consistency"][0]["proof"]]
    merkle.verify_consistency(3, cp_new.size, cp_old.root_hash, cp_new.root_hash, proof)


async def test_lookups_name_what_is_missing(ledger: Ledger) -> None:
    await ledger.append(decision(new_request_id()))
    with pytest.raises(NotFound, match="no entry 5"):
        ledger.entry(5)
    with pytest.raises(NotFound, match="no tree of size 9"):
        ledger.inclusion_proof(0, 9)
    with pytest.raises(NotFound, match="no decision for request 'nope'"):
        ledger.receipt("nope")


async def test_proofs_from_the_store_match_the_reference(ledger: Ledger) -> None:
    await asyncio.gather(*(ledger.append(decision(new_request_id())) for _ in range(37)))
    leaves = [merkle.leaf_hash(ledger.entry(i)) for i in range(37)]
    for size in (1, 2, 17, 37):
        for index in range(0, size, 5):
            assert ledger.inclusion_proof(index, size) == merkle.reference_inclusion(
                index, leaves[:size]
            )
        for old in range(size + 1):
            assert ledger.consistency_proof(old, size) == merkle.reference_consistency(
                old, leaves[:size]
            )


async def test_a_store_of_another_log_is_refused(data_dir: Path, signer: Signer) -> None:
    first = await Ledger.open(str(data_dir), signer, origin=ORIGIN)
    await first.close()
    with pytest.raises(StorageError, match="holds the log"):
        await Ledger.open(str(data_dir), signer, origin="other.example/log")


def test_bulk_load_builds_the_same_tree_as_appends(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "bulk.sqlite3"))
    storage.initialise(ORIGIN)
    leaves = [f"entry {i}".encode() for i in range(1000)]
    storage.bulk_load(leaves[:600], chunk=128)
    storage.sequence([NewEntry(x, merkle.leaf_hash(x), None, None) for x in leaves[600:]])
    root = merkle.root_from_hashes(1000, storage.hashes(merkle.subtree_keys(0, 1000)))
    assert root == merkle.reference_root([merkle.leaf_hash(x) for x in leaves])
    storage.close()


def _remove_ledger_files(data_dir: Path) -> None:
    for path in data_dir.glob("ledger.sqlite3*"):  # as `rm DATA/ledger.sqlite3*`
        path.unlink()


async def test_a_ledger_file_deleted_while_serving_refuses_appends_for_good(
    ledger: Ledger, data_dir: Path
) -> None:
    await ledger.append(decision(new_request_id()))
    signed = ledger.checkpoint_now()
    _remove_ledger_files(data_dir)
    await asyncio.sleep(1.1)  # it looks at most once a second
    before = _refusals("storage_error")
    with pytest.raises(ServiceUnavailable, match=r"deleted or replaced while in use") as refused:
        await ledger.append(decision(new_request_id()))
    assert refused.value.code == "ledger_unavailable"
    assert _refusals("storage_error") == before + 1
    ledger.health.ok()  # not cured by time or a success: only a restore and a restart
    ready, why = ledger.health.state()
    assert not ready and "was deleted" in why and "restored from backup" in why
    with pytest.raises(StorageError, match="was deleted"):
        ledger.checkpoint_now()  # nothing more is signed for the unlinked file
    assert ledger.storage.latest_checkpoint() is not None
    assert ledger.storage.latest_checkpoint().note == signed  # type: ignore[union-attr]


async def test_an_idle_gateway_turns_unready_when_its_ledger_file_is_replaced(
    ledger: Ledger, data_dir: Path
) -> None:
    await ledger.append(decision(new_request_id()))
    path = data_dir / "ledger.sqlite3"
    copy = data_dir / "copy.sqlite3"
    copy.write_bytes(path.read_bytes())
    copy.replace(path)  # a backup copied over the file in use
    deadline = time.monotonic() + 3
    while ledger.health.state()[0] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # no request: the checkpoint task notices (every 50 ms here)
    ready, why = ledger.health.state()
    assert not ready and "replaced by another file" in why
    with pytest.raises(ServiceUnavailable, match="replaced"):
        await ledger.append(decision(new_request_id()))


async def test_a_busy_ledger_looks_at_its_file_at_most_once_a_second(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    looks = []
    real = ledger.storage.displaced

    def counted() -> str | None:
        looks.append(time.monotonic())
        return real()

    monkeypatch.setattr(ledger.storage, "displaced", counted)
    began = time.monotonic()
    while time.monotonic() - began < 1.5:
        await asyncio.gather(*(ledger.append(decision(new_request_id())) for _ in range(16)))
    assert 1 <= len(looks) <= 2
