"""Replay the whole log from storage and check it against every checkpoint ever signed.

The audit trusts nothing in the store but the leaf bytes: it rehashes every leaf, rebuilds every
complete subtree and every checkpointed root, and compares. What it reports:

- ``problems`` (violations): a database that is itself damaged (SQLite's ``quick_check``:
  nothing else is checked then), a missing index (deleted row), a leaf whose bytes do not hash to
  its stored hash (edited row), a stored subtree hash that differs from the rebuilt one (rows
  edited together with their hash, or reordered), a checkpoint whose root or signature does not
  match the rebuilt tree, an outcome with no earlier decision for its request.
- ``incomplete``: decisions with no outcome (a request in flight, a crash between the two
  writes, an outcome refused, or a decision that landed after its deadline while the ledger
  could not take its 503 outcome either). Expected in small numbers; not a violation.
"""

from __future__ import annotations

import base64
import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sekisho.ledger import merkle
from sekisho.ledger.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from sekisho.ledger.note import Verifier
from sekisho.ledger.records import RecordError, parse_record
from sekisho.ledger.storage import Storage

CHUNK = 20_000


@dataclass(frozen=True)
class Problem:
    index: int | None  # the first log index concerned, when there is one
    kind: str  # missing_entry, leaf_hash_mismatch, node_mismatch, checkpoint_mismatch, ...
    detail: str

    def __str__(self) -> str:
        where = f"entry {self.index}: " if self.index is not None else ""
        return f"{where}{self.kind}: {self.detail}"


@dataclass
class AuditReport:
    tree_size: int = 0
    entries_checked: int = 0
    checkpoints_checked: int = 0
    root: bytes = merkle.EMPTY_ROOT
    problems: list[Problem] = field(default_factory=list)
    incomplete: list[tuple[int, str]] = field(default_factory=list)  # (decision index, request id)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "tree_size": self.tree_size,
            "entries_checked": self.entries_checked,
            "checkpoints_checked": self.checkpoints_checked,
            "root": self.root.hex(),
            # as checkpoints and the text report write it, to compare with them directly
            "root_base64": base64.b64encode(self.root).decode(),
            "problems": [
                {"index": p.index, "kind": p.kind, "detail": p.detail} for p in self.problems
            ],
            "incomplete": [{"index": i, "request_id": r} for i, r in self.incomplete],
        }


MAX_PROBLEMS = 1000


def audit(storage: Storage, verifiers: Sequence[Verifier] = ()) -> AuditReport:
    """Replay ``storage``; with ``verifiers`` also check every checkpoint's signature."""
    damage = storage.damage()
    if damage:
        more = f" (and {len(damage) - 1} more)" if len(damage) > 1 else ""
        detail = (
            f"{storage.location} is damaged: the database's own check reports {damage[0]}"
            f"{more}. The gateway cannot use it; restore the ledger from backup (the replay "
            "was not run on a damaged file)"
        )
        return AuditReport(problems=[Problem(None, "corrupt_database", detail)])
    report = AuditReport(tree_size=storage.tree_size())
    size = report.tree_size
    last = storage.max_index()
    if last is not None and last >= size:
        report.problems.append(
            Problem(size, "uncommitted_entries", f"rows beyond the tree size {size} (up to {last})")
        )
    checkpoints = storage.checkpoints()
    by_size = {c.size: c for c in checkpoints}
    origin = storage.origin()
    tree = merkle.CompactRange.empty()
    decisions: dict[str, int] = {}
    outcomes: set[str] = set()

    flagged: list[int] = []  # indexes already reported, to keep ancestor mismatches quiet

    def problem(p: Problem) -> None:
        if p.index is not None:
            bisect.insort(flagged, p.index)
        if len(report.problems) < MAX_PROBLEMS:
            report.problems.append(p)

    def check_checkpoint_at(n: int) -> None:
        stored = by_size.get(n)
        if stored is None:
            return
        report.checkpoints_checked += 1
        root = tree.root()
        if stored.root != root:
            problem(Problem(None, "checkpoint_mismatch", f"stored root of size {n} differs"))
        try:
            parsed = open_checkpoint(stored.note, verifiers, origin=origin) if verifiers else None
        except CheckpointError as e:
            problem(Problem(None, "checkpoint_signature", f"checkpoint of size {n}: {e}"))
            return
        if parsed is not None and (parsed.size != n or parsed.root_hash != root):
            problem(
                Problem(
                    None,
                    "checkpoint_mismatch",
                    f"signed checkpoint of size {n} "
                    "does not match the rebuilt tree: the log was rewritten after it",
                )
            )

    check_checkpoint_at(0)
    for start in range(0, size, CHUNK):
        end = min(start + CHUNK, size)
        rows = storage.scan_as_stored(start, end)
        expected = start
        created: list[tuple[int, int, bytes]] = []
        for idx, leaf, stored_hash, request_id, kind in rows:
            while expected < idx:
                problem(Problem(expected, "missing_entry", "no row at this index (deleted?)"))
                expected += 1
            expected = idx + 1
            if isinstance(leaf, bytes):
                h = merkle.leaf_hash(leaf)
                if not isinstance(stored_hash, bytes):
                    detail = f"its hash is stored as {_sql_type(stored_hash)}, not bytes"
                    problem(Problem(idx, "leaf_hash_mismatch", detail))
                elif h != stored_hash:
                    problem(
                        Problem(idx, "leaf_hash_mismatch", "entry bytes were changed after logging")
                    )
            else:  # rewritten as text, a number or NULL: never how an entry is written
                h = merkle.EMPTY_ROOT
                detail = f"entry is stored as {_sql_type(leaf)}, not bytes: edited after logging"
                problem(Problem(idx, "leaf_hash_mismatch", detail))
            report.entries_checked += 1
            while tree.size < idx:  # stay aligned with indexes despite deleted rows
                created.extend(tree.append(merkle.EMPTY_ROOT))
            created.extend(tree.append(h))
            check_checkpoint_at(tree.size)
            if isinstance(leaf, bytes):
                _note_record(idx, leaf, request_id, kind, decisions, outcomes, problem)
        while expected < end:
            problem(Problem(expected, "missing_entry", "no row at this index (deleted?)"))
            expected += 1
            created.extend(tree.append(merkle.EMPTY_ROOT))
            check_checkpoint_at(tree.size)
        _compare_nodes(storage, created, flagged, problem)
    report.root = tree.root()
    for n in by_size:
        if n > size:
            problem(
                Problem(None, "checkpoint_beyond_tree", f"checkpoint of size {n} > tree {size}")
            )
    report.incomplete = sorted((i, rid) for rid, i in decisions.items() if rid not in outcomes)
    return report


def against_kept(storage: Storage, tree_size: int, kept: Sequence[Checkpoint]) -> list[Problem]:
    """Problems of a ledger compared with checkpoints kept or published earlier (a verified
    chain, oldest first): it must hold each of them as a prefix. A ledger restored from a
    backup older than the newest one is *behind*; a gateway serving from it would sign a
    second history after that size under the same key (a fork)."""
    problems: list[Problem] = []
    if not kept:
        return problems
    held = [c for c in kept if c.size <= tree_size]
    if held:
        # The chain is proved consistent, so the newest one held checks all the older ones.
        newest = held[-1]
        keys = merkle.subtree_keys(0, newest.size)
        root = merkle.root_from_hashes(newest.size, storage.hashes(keys))
        if root != newest.root_hash:
            problems.append(
                Problem(
                    None,
                    "inconsistent_with_kept_checkpoint",
                    f"the ledger's first {newest.size} entries are not those of the checkpoint "
                    f"of size {newest.size} you kept: it was rewritten, or it is another log "
                    "signed under the same name (a fork). Do not serve from it",
                )
            )
    ahead = kept[-1]
    if ahead.size > tree_size:
        problems.append(
            Problem(
                None,
                "behind_kept_checkpoint",
                f"the ledger holds {tree_size} entries, but a checkpoint you kept covers "
                f"{ahead.size} (origin {ahead.origin}): this ledger is behind what was signed "
                "and published (a restore from an older backup). A gateway serving from it "
                "would sign a second, different history after entry "
                f"{tree_size} under the same key: a fork. Restore a copy that reaches "
                f"{ahead.size} entries, or move this one aside (keep it: its entries are "
                "still the old log's) and start a new log: `sekisho ledger init --new-log`",
            )
        )
    return problems


def _sql_type(value: object) -> str:
    return {str: "text", int: "an integer", float: "a real", type(None): "NULL"}.get(
        type(value), type(value).__name__
    )


def _note_record(
    idx: int,
    leaf: bytes,
    request_id: str | None,
    kind: str | None,
    decisions: dict[str, int],
    outcomes: set[str],
    problem: Callable[[Problem], None],
) -> None:
    try:
        record = parse_record(leaf)
    except RecordError as e:
        problem(Problem(idx, "invalid_record", str(e)))
        return
    if record.request_id != request_id or record.kind != kind:
        problem(Problem(idx, "index_mismatch", "request id or kind column differs from the entry"))
    if record.request_id is None:
        return
    if record.kind == "decision":
        decisions.setdefault(record.request_id, idx)
    elif record.kind == "outcome":
        if record.request_id not in decisions:
            detail = f"request {record.request_id} has an outcome but no earlier decision"
            problem(Problem(idx, "outcome_without_decision", detail))
        outcomes.add(record.request_id)


def _compare_nodes(
    storage: Storage,
    created: list[tuple[int, int, bytes]],
    flagged: list[int],
    problem: Callable[[Problem], None],
) -> None:
    by_level: dict[int, dict[int, bytes]] = {}
    for level, idx, h in created:
        by_level.setdefault(level, {})[idx] = h
    for level in sorted(by_level):
        rebuilt = by_level[level]
        stored = storage.nodes_in(level, min(rebuilt), max(rebuilt) + 1)
        for idx, h in sorted(rebuilt.items()):
            if stored.get(idx) == h:
                continue
            first, last = idx << level, ((idx + 1) << level) - 1
            pos = bisect.bisect_left(flagged, first)
            if pos < len(flagged) and flagged[pos] <= last:
                continue  # explained by a problem already reported inside this subtree
            detail = (
                f"stored hash over entries {first}..{last} differs from the rebuilt one "
                "(rows edited or reordered)"
            )
            problem(Problem(first, "node_mismatch", detail))
