"""The ledger: one sequencer that makes entries durable, and the lookups built on it.

What it promises, in the order the code keeps it:

1. ``append`` returns only once the entry is committed to disk (SQLite WAL fsync, or a
   PostgreSQL commit), with its index in the log. Entries are made durable in groups: the
   writer thread commits whatever is waiting in one transaction (up to ``group_size``): what
   arrived while the previous commit ran. With a positive ``group_interval`` it also lingers
   that long for more, only while entries keep arriving concurrently, so a lone request never
   waits for company.
2. If the entry is not durable within ``deadline`` seconds, ``append`` raises
   ``ServiceUnavailable`` (code ``ledger_unavailable``), counts the refusal and logs why. The
   blocking I/O runs in a dedicated thread, so a hanging disk stalls that thread, not the event
   loop. An entry refused at its deadline may still land later (its commit had begun). A
   decision entry that does is followed by the outcome its request had: status 503,
   ``ledger_unavailable``, nothing sent upstream. So the log does not leave it looking like a
   request that went out unrecorded; only a crash or a ledger down for good can leave a
   decision without an outcome, which the audit reports as incomplete — never an outcome
   without a decision.
3. Entries are ordered by a single sequencer per log, across processes (see ``storage``).
4. Checkpoints are signed off the request path: a background task signs one every
   ``checkpoint_interval`` seconds when the tree has grown, and stores every one it signs.
   Each is computed from committed subtree hashes only, so every checkpoint ever published
   stays consistent with the tree after any crash.

Lookups (``latest_checkpoint``, ``entry``, ``inclusion_proof``, ``consistency_proof``,
``receipt``, ``find``) are synchronous and thread-safe: from async code call them with
``await asyncio.to_thread(ledger.receipt, request_id)``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Counter

from sekisho._deadlines import WriterHealth, refuse_late
from sekisho._handoff import Handoff
from sekisho.errors import NotFound, ServiceUnavailable
from sekisho.ledger import merkle
from sekisho.ledger.checkpoint import Checkpoint
from sekisho.ledger.note import Signer, Verifier
from sekisho.ledger.proof import TlogProof
from sekisho.ledger.records import OutcomeRecord, Record, now
from sekisho.ledger.storage import NewEntry, Storage, StorageError, open_storage

log = logging.getLogger("sekisho.ledger")


_LOST = "its storage was deleted or replaced while in use; the operator must restore it"


class LedgerUnavailable(ServiceUnavailable):
    """An entry could not be made durable; ``why`` says what failed. The message is the one a
    refused request gets (its decision entry came first, so nothing was sent upstream); an
    entry made later in a request's life words it for that moment (``recorder``)."""

    code = "ledger_unavailable"

    def __init__(self, why: str) -> None:
        super().__init__(
            f"Request refused: it cannot be recorded in the transparency ledger ({why}). "
            "Nothing was sent upstream; retry later.",
            headers={"retry-after": "1"},
        )
        self.why = why


LEDGER_REFUSALS = Counter(
    "sekisho_ledger_refusals_total",
    "Ledger entries refused (each append that could not be made durable; a failed group "
    "commit counts every entry in it).",
    ["reason"],
)

# Under load a batch forms on its own while the previous commit runs; waiting for more on top
# measured slower (A/B through the gateway: +7% throughput at concurrency 16 without it).
DEFAULT_GROUP_INTERVAL = 0.0
DEFAULT_GROUP_SIZE = 256
DEFAULT_DEADLINE = 1.0
DEFAULT_CHECKPOINT_INTERVAL = 1.0
# How often the writer looks whether its file is still the one at its path: one stat() per
# second at most, whatever the request rate.
PLACE_CHECK_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Appended:
    index: int
    leaf_hash: bytes

    def header(self) -> str:
        """The compact ``x-sekisho-receipt`` reference: index and base64 leaf hash."""
        return f"{self.index} {base64.b64encode(self.leaf_hash).decode()}"


@dataclass(slots=True)
class _Pending:
    entry: NewEntry
    future: asyncio.Future[Appended]
    loop: asyncio.AbstractEventLoop
    give_up_at: float  # time.monotonic() after which the waiter has been refused


def _describe(record: bytes | Record) -> tuple[bytes, str | None, str | None]:
    """Leaf bytes plus the request id and kind the store indexes."""
    if not isinstance(record, bytes | bytearray | memoryview):
        return record.to_bytes(), record.request_id, record.kind
    leaf = bytes(record)
    try:
        obj = orjson.loads(leaf)
    except orjson.JSONDecodeError:
        return leaf, None, None
    if not isinstance(obj, dict):
        return leaf, None, None
    rid, kind = obj.get("request_id"), obj.get("kind")
    return leaf, rid if isinstance(rid, str) else None, kind if isinstance(kind, str) else None


class Ledger:
    """The transparency log of one gateway deployment. Open with ``await Ledger.open(...)``."""

    def __init__(
        self,
        storage: Storage,
        signer: Signer,
        *,
        origin: str,
        group_interval: float = DEFAULT_GROUP_INTERVAL,
        group_size: int = DEFAULT_GROUP_SIZE,
        deadline: float = DEFAULT_DEADLINE,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
    ) -> None:
        if group_size < 1 or group_interval < 0 or deadline <= 0 or checkpoint_interval <= 0:
            raise ValueError(
                "ledger needs group_size >= 1, group_interval >= 0, deadline > 0 and "
                "checkpoint_interval > 0"
            )
        self.storage = storage
        self.signer = signer
        self.origin = origin
        self.group_interval = group_interval
        self.group_size = group_size
        self.deadline = deadline
        self.checkpoint_interval = checkpoint_interval
        self._handoff: Handoff[_Pending] = Handoff(
            group_interval=group_interval, group_size=group_size
        )
        self._writer = threading.Thread(target=self._write_loop, name="sekisho-ledger", daemon=True)
        self._closed = False
        self._checkpointer: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._waiting: collections.deque[_Pending] = collections.deque()
        self.health = WriterHealth(deadline)  # for /readyz
        self._signing = threading.Lock()
        self._late: set[asyncio.Task[None]] = set()  # outcomes of decisions that landed late
        self._signed_size = -1
        # Told (size, root) of each checkpoint signed, outside the ledger (see continuity).
        self.on_signed: Callable[[int, bytes], None] | None = None
        # Told (seconds, entries) by the writer thread after each batch commit, failed ones
        # too: the gateway's sekisho_writer_commit_seconds and sekisho_writer_batch_entries.
        self.on_commit: Callable[[float, int], None] | None = None
        self._record_warned = False
        self._displaced: str | None = None  # for good: why nothing more may be written
        self._place_checked_at = time.monotonic()

    @classmethod
    async def open(
        cls,
        url_or_path: str,
        signer: Signer,
        *,
        origin: str,
        group_interval: float = DEFAULT_GROUP_INTERVAL,
        group_size: int = DEFAULT_GROUP_SIZE,
        deadline: float = DEFAULT_DEADLINE,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
    ) -> Ledger:
        """Open (creating if needed) the log at a data dir, SQLite path or PostgreSQL URL."""
        storage = open_storage(url_or_path)
        await asyncio.to_thread(storage.initialise, origin)
        ledger = cls(
            storage,
            signer,
            origin=origin,
            group_interval=group_interval,
            group_size=group_size,
            deadline=deadline,
            checkpoint_interval=checkpoint_interval,
        )
        ledger.start()
        await asyncio.to_thread(ledger.checkpoint_now)
        return ledger

    def start(self) -> None:
        """Start the writer thread and (inside a running loop) the checkpoint task."""
        self._writer.start()
        with contextlib.suppress(RuntimeError):
            self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoint_loop())

    @property
    def verifier(self) -> Verifier:
        return self.signer.verifier()

    # -- the write path --------------------------------------------------------------------------

    async def append(self, record: bytes | Record) -> Appended:
        """Make one entry durable; raise ``ServiceUnavailable`` if that cannot happen in time."""
        if self._closed:
            raise self._refuse("closed", "the ledger is shut down")
        return await self._enqueue(record)

    def _enqueue(self, record: bytes | Record) -> asyncio.Future[Appended]:
        """Hand ``record`` to the writer; the future is answered when it is durable."""
        if self._displaced is not None:
            raise self._refuse("storage_error", self._displaced, told=_LOST)
        leaf, request_id, kind = _describe(record)
        entry = NewEntry(leaf, merkle.leaf_hash(leaf), request_id, kind)
        loop = asyncio.get_running_loop()
        if self._watchdog is None:
            self._watchdog = loop.create_task(
                refuse_late(self._waiting, self.deadline, self._too_late)
            )
        future: asyncio.Future[Appended] = loop.create_future()
        pending = _Pending(entry, future, loop, time.monotonic() + self.deadline)
        self._waiting.append(pending)
        self._handoff.put(loop, pending)
        return future

    def waiting(self) -> int:
        """Entries handed to the writer and not yet durable nor refused (for /metrics: read
        when scraped, so that the request path pays nothing for it)."""
        return sum(1 for p in list(self._waiting) if not p.future.done())

    def _too_late(self, pending: _Pending) -> LedgerUnavailable:
        why = (
            f"the ledger could not make the entry durable within {self.deadline:g} s "
            f"(storage {self.storage.location} is slow or hanging)"
        )
        self.health.failed(why, commit_ended=False)
        told = (
            f"the ledger could not make the entry durable within {self.deadline:g} s "
            "(its storage is slow or hanging)"
        )
        return self._refuse("deadline", why, told=told)

    def _refuse(
        self, reason: str, why: str, entries: int = 1, told: str | None = None
    ) -> LedgerUnavailable:
        """The error for ``entries`` refused appends: each is counted, the cause logged once.
        ``told``: what the client reads, when ``why`` names internal paths or hosts (the log
        and /readyz's details, behind metrics_token, have them)."""
        LEDGER_REFUSALS.labels(reason=reason).inc(entries)
        what = "an entry" if entries == 1 else f"{entries} entries"
        log.error("ledger refused %s (%s): %s", what, reason, why)
        return LedgerUnavailable(told or why)

    def _write_loop(self) -> None:
        lingering = False
        while True:
            batch, stop = self._handoff.next_batch(lingering)
            # Linger next time only under concurrency: a lone request never waits for company.
            lingering = len(batch) > 1
            now = time.monotonic()
            live = [p for p in batch if p.give_up_at > now]
            if live:
                self._commit(live)
            if stop:
                return

    def _still_in_place(self) -> str | None:
        """None while the storage is the one opened; else why not, for good (rate-limited)."""
        now = time.monotonic()
        if self._displaced is None and now - self._place_checked_at >= PLACE_CHECK_INTERVAL:
            self._place_checked_at = now
            why = self.storage.displaced()
            if why is not None:
                self._displaced = (
                    f"{why}; nothing more is written or signed until it is restored from "
                    "backup and the gateway restarted"
                )
                self.health.lost(f"the ledger: {self._displaced}")
                log.error("ledger storage lost: %s", self._displaced)
        return self._displaced

    def _commit(self, live: list[_Pending]) -> None:
        results: list[Appended | BaseException]
        self.health.begin()
        began = time.monotonic()
        try:
            displaced = self._still_in_place()
            if displaced is not None:
                raise StorageError(displaced)
            start = self.storage.sequence([p.entry for p in live])
        except Exception as e:
            why = self._displaced or f"storage {self.storage.location} failed: {e}"
            self.health.failed(f"the ledger's {why}")
            if self._displaced is not None:
                told = _LOST
            elif getattr(e, "errno", None) == errno.ENOSPC or "full" in str(e).lower():
                told = "its storage failed: database or disk is full"
            else:
                told = "its storage failed; the operator's log says why"
            error = self._refuse("storage_error", why, entries=len(live), told=told)
            results = [error] * len(live)
        else:
            self.health.ok()
            results = [Appended(start + i, p.entry.leaf_hash) for i, p in enumerate(live)]
        if self.on_commit is not None:
            with contextlib.suppress(Exception):  # counting must not change the outcome
                self.on_commit(time.monotonic() - began, len(live))
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for p, result in zip(live, results, strict=True):
            by_loop.setdefault(p.loop, []).append((p, result))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                loop.call_soon_threadsafe(self._resolve, items)

    def _resolve(self, results: list[tuple[_Pending, Appended | BaseException]]) -> None:
        """Answer the waiters of a commit (on their event loop)."""
        for pending, result in results:
            future = pending.future
            if not future.done():
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            elif isinstance(result, Appended) and pending.entry.kind == "decision":
                # Refused at its deadline, durable afterwards: the request got 503 and nothing
                # went upstream. Its outcome says so, or the decision would stand alone.
                task = asyncio.get_running_loop().create_task(self._late_outcome(pending))
                self._late.add(task)
                task.add_done_callback(self._late.discard)

    async def _late_outcome(self, pending: _Pending) -> None:
        request_id = pending.entry.request_id
        if request_id is None:
            return
        waited = time.monotonic() - (pending.give_up_at - self.deadline)
        record = OutcomeRecord(
            time=now(),
            request_id=request_id,
            status=503,
            prompt_tokens=None,
            completion_tokens=None,
            output_hash=None,
            error_code=LedgerUnavailable.code,
            duration_ms=int(waited * 1000),
        )
        try:
            await self._enqueue(record)  # also while closing: close() waits for these
        except ServiceUnavailable as exc:
            log.warning(
                "the outcome of a decision entry that became durable after its deadline could "
                "not be recorded (%s); the audit lists request %s as incomplete",
                exc.message,
                request_id,
            )

    async def close(self) -> None:
        """Stop accepting entries, finish the ones queued, sign a last checkpoint."""
        if self._closed:
            return
        self._closed = True
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
        if self._late:
            await asyncio.wait(set(self._late), timeout=self.deadline)
        self._handoff.stop()
        # The watchdog keeps refusing at the deadline while queued entries are finished.
        await asyncio.to_thread(self._writer.join, self.deadline + 5)
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for pending in self._waiting:
            if not pending.future.done():
                pending.future.set_exception(self._refuse("closed", "the ledger is shut down"))
        self._waiting.clear()
        if self._writer.is_alive():
            log.error("ledger writer did not stop: storage %s is hanging", self.storage.location)
            return
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.checkpoint_now)
        await asyncio.to_thread(self.storage.close)

    # -- checkpoints -----------------------------------------------------------------------------

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            try:
                await asyncio.to_thread(self.checkpoint_now)
            except Exception:
                if self._displaced is None:  # else said once already
                    log.exception("ledger could not sign a checkpoint")

    def checkpoint_now(self) -> str:
        """Sign and store a checkpoint if the tree grew since the last one; return the latest."""
        displaced = self._still_in_place()  # also how an idle gateway notices (readyz)
        if displaced is not None:
            raise StorageError(displaced)
        with self._signing:
            size = self.storage.tree_size()
            latest = self.storage.latest_checkpoint()
            if latest is not None and latest.size >= size:
                self._signed_size = latest.size
                return latest.note
            root = self.root_at(size)
            # Recorded outside the ledger before it is signed: a crash in between leaves a
            # record of a checkpoint never signed (harmless: the ledger holds its entries),
            # never a signature the record does not know (a restore behind it unnoticed).
            if self.on_signed is not None:
                try:
                    self.on_signed(size, root)
                except OSError as e:
                    if not self._record_warned:
                        self._record_warned = True
                        log.warning(
                            "cannot record the checkpoint signed (%s): a ledger restored from "
                            "an older backup may not be noticed at the next start",
                            e.strerror or e,
                        )
            signed = Checkpoint(self.origin, size, root).sign(self.signer)
            self.storage.store_checkpoint(size, root, signed)
            self._signed_size = size
            return signed

    # -- lookups (sync, thread-safe) -------------------------------------------------------------

    def root_at(self, size: int) -> bytes:
        return merkle.root_from_hashes(size, self.storage.hashes(merkle.subtree_keys(0, size)))

    def latest_checkpoint(self) -> str:
        latest = self.storage.latest_checkpoint()
        return latest.note if latest is not None else self.checkpoint_now()

    def entry(self, index: int) -> bytes:
        found = self.storage.entry(index)
        if found is None:
            raise NotFound(f"the ledger has no entry {index}", code="ledger_entry_not_found")
        return found[0]

    def _check_size(self, tree_size: int) -> None:
        current = self.storage.tree_size()
        if not 0 <= tree_size <= current:
            raise NotFound(
                f"the ledger has no tree of size {tree_size} (current size {current})",
                code="ledger_tree_size_not_found",
            )

    def _proof(self, ranges: Sequence[merkle.Range]) -> list[bytes]:
        return merkle.proof_from_hashes(ranges, self.storage.hashes(merkle.keys_for(ranges)))

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        self._check_size(tree_size)
        if not 0 <= index < tree_size:
            raise NotFound(
                f"entry {index} is not in the tree of size {tree_size}",
                code="ledger_entry_not_found",
            )
        return self._proof(merkle.inclusion_ranges(index, tree_size))

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise NotFound(
                f"no consistency proof from size {old_size} to size {new_size}",
                code="ledger_tree_size_not_found",
            )
        return self._proof(merkle.consistency_ranges(old_size, new_size))

    def find(self, request_id: str) -> list[tuple[int, str | None]]:
        """``(index, kind)`` of every entry of a request, in log order."""
        return self.storage.find(request_id)

    def tlog_proof(self, index: int, signed_checkpoint: str) -> str:
        """The C2SP tlog-proof text of entry ``index`` against a signed checkpoint."""
        checkpoint = Checkpoint.parse(signed_checkpoint.partition("\n\n")[0] + "\n")
        leaf = self.entry(index)
        proof = self.inclusion_proof(index, checkpoint.size)
        return TlogProof(index, tuple(proof), signed_checkpoint, extra=leaf).text()

    def receipt(self, request_id: str, *, consistency_with: int | None = None) -> dict[str, Any]:
        """The full receipt of a request.

        ``{"request_id", "entry", "index", "tlog_proof", "outcome", "consistency"}``: ``entry``
        is base64 of the decision's exact leaf bytes, ``tlog_proof`` its C2SP tlog-proof; the
        outcome entry (when logged) is ``outcome: {"entry", "index", "tlog_proof"}`` against
        the same checkpoint, else null. With ``consistency_with=SIZE`` the receipt also carries
        a consistency proof between that tree size and the receipt's checkpoint, so an auditor
        can link it to a checkpoint kept earlier.
        """
        located = self.find(request_id)
        decision = next((i for i, kind in located if kind == "decision"), None)
        if decision is None:
            raise NotFound(
                f"the ledger has no decision for request {request_id!r}",
                code="ledger_receipt_not_found",
            )
        outcome = next((i for i, kind in located if kind == "outcome" and i > decision), None)
        signed = self.latest_checkpoint()
        checkpoint = Checkpoint.parse(signed.partition("\n\n")[0] + "\n")
        if checkpoint.size <= max(decision, outcome or 0):
            signed = self.checkpoint_now()  # not yet covered: sign one now (off the hot path)
            checkpoint = Checkpoint.parse(signed.partition("\n\n")[0] + "\n")

        def part(index: int) -> dict[str, Any]:
            return {
                "entry": base64.b64encode(self.entry(index)).decode(),
                "index": index,
                "tlog_proof": self.tlog_proof(index, signed),
            }

        receipt: dict[str, Any] = {"request_id": request_id, **part(decision), "outcome": None}
        if outcome is not None:
            receipt["outcome"] = part(outcome)
        consistency = []
        if consistency_with is not None:
            old, new = sorted((consistency_with, checkpoint.size))
            proof = self.consistency_proof(old, new)
            consistency.append(
                {
                    "old_size": old,
                    "new_size": new,
                    "proof": [base64.b64encode(h).decode() for h in proof],
                }
            )
        receipt["consistency"] = consistency
        return receipt
