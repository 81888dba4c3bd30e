"""Receipts: C2SP ``tlog-proof@v1`` (https://c2sp.org/tlog-proof), built and verified offline.

A tlog-proof is::

    c2sp.org/tlog-proof@v1
    extra BASE64          (optional; we put the exact leaf bytes here)
    index N
    BASE64 inclusion proof hashes, leaf's sibling first, one per line

    <the signed checkpoint, verbatim>

The ``extra`` line is unauthenticated by design; verification hashes whatever leaf bytes it is
given (the receipt's ``entry``, or ``extra``) and checks them against the signed root, so a
forged ``extra`` simply fails. A sekisho receipt is JSON holding the decision entry's proof, the
outcome entry's proof (same checkpoint) when there is one, and optional consistency proofs that
link the receipt's checkpoint to checkpoints an auditor kept earlier (see ``KeptCheckpoints``).
"""

from __future__ import annotations

import base64
import binascii
import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sekisho.ledger import merkle, note
from sekisho.ledger.checkpoint import Checkpoint, CheckpointError, OtherLogError, open_checkpoint
from sekisho.ledger.records import RecordError, parse_record

HEADER = "c2sp.org/tlog-proof@v1"


class ReceiptError(ValueError):
    """A receipt or tlog-proof that is malformed or does not verify; the message says which part."""


class ReceiptOfAnotherLog(ReceiptError):
    """A receipt, or kept checkpoint, signed for another log than the one expected (even under
    the key expected: one key may sign several logs, and proves nothing about another's)."""


def _within(e: ReceiptError, where: str) -> ReceiptError:
    """``e`` with ``where`` in front of its message, of the same kind."""
    return type(e)(f"{where}: {e}")


def _b64(text: str, what: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ReceiptError(f"{what} is not valid base64") from None
    if base64.b64encode(data).decode() != text:
        # The same bytes spelled otherwise (unused bits set): one receipt, many texts.
        raise ReceiptError(f"{what} is not canonical base64 (RFC 4648: unused bits zero)")
    return data


def read_text(path: Path, what: str) -> str:
    """A file an auditor was handed, as text; ``ReceiptError`` naming why it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ReceiptError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReceiptError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            # Which of the two is "the" value depends on the JSON library reading it: another
            # tool could show the one no proof covers.
            raise ReceiptError(f"field {key!r} appears twice")
        obj[key] = value
    return obj


def load_json(text: str, what: str) -> Any:
    """Parse JSON from an untrusted file; ``ReceiptError`` naming what is wrong with it."""
    try:
        return json.loads(text, object_pairs_hook=_once_each)
    except ReceiptError as e:
        raise ReceiptError(f"{what}: {e}") from None
    except RecursionError:
        raise ReceiptError(f"{what} is nested too deeply to be JSON sekisho wrote") from None
    except ValueError as e:
        raise ReceiptError(f"{what} is not JSON ({e})") from None


@dataclass(frozen=True)
class TlogProof:
    index: int
    inclusion: tuple[bytes, ...]
    checkpoint: str  # signed checkpoint note, verbatim
    extra: bytes | None = None

    def text(self) -> str:
        lines = [HEADER]
        if self.extra is not None:
            lines.append("extra " + base64.b64encode(self.extra).decode())
        lines.append(f"index {self.index}")
        lines.extend(base64.b64encode(h).decode() for h in self.inclusion)
        return "\n".join(lines) + "\n\n" + self.checkpoint

    @classmethod
    def parse(cls, text: str) -> TlogProof:
        head, sep, checkpoint = text.partition("\n\n")
        if not sep:
            raise ReceiptError("tlog-proof has no empty line before its checkpoint")
        lines = head.split("\n")
        if lines[0] != HEADER:
            raise ReceiptError(f"tlog-proof must start with {HEADER!r}, got {lines[0][:40]!r}")
        rest = lines[1:]
        extra = None
        if rest and rest[0].startswith("extra "):
            extra = _b64(rest[0][len("extra ") :], "tlog-proof extra line")
            rest = rest[1:]
        if not rest or not rest[0].startswith("index "):
            raise ReceiptError("tlog-proof has no 'index N' line")
        index_text = rest[0][len("index ") :]
        if (
            not index_text.isascii()
            or not index_text.isdigit()
            or (index_text != "0" and index_text.startswith("0"))
        ):
            raise ReceiptError(f"tlog-proof index {index_text!r} is not a decimal without zeroes")
        if len(index_text) > len(str(merkle.MAX_SIZE)) or int(index_text) > merkle.MAX_SIZE:
            raise ReceiptError(
                f"tlog-proof index {index_text[:30]}... is larger than {merkle.MAX_SIZE} (2^64-1)"
            )
        hashes = tuple(_b64(h, f"inclusion proof line {i}") for i, h in enumerate(rest[1:]))
        return cls(int(index_text), hashes, checkpoint, extra)


@dataclass(frozen=True)
class VerifiedEntry:
    index: int
    leaf: bytes
    checkpoint: Checkpoint


def verify_tlog_proof(
    proof: TlogProof,
    verifiers: Iterable[note.Verifier],
    *,
    leaf: bytes | None = None,
    origin: str | None = None,
) -> VerifiedEntry:
    """Check the checkpoint signature and that ``leaf`` (or the extra data) is at ``index``."""
    try:
        checkpoint = open_checkpoint(proof.checkpoint, verifiers, origin=origin)
    except OtherLogError as e:
        raise ReceiptOfAnotherLog(str(e)) from None
    except CheckpointError as e:
        raise ReceiptError(str(e)) from None
    if leaf is None:
        leaf = proof.extra
    if leaf is None:
        raise ReceiptError("no entry bytes to check: the receipt has neither 'entry' nor extra")
    try:
        merkle.verify_inclusion(
            proof.index,
            checkpoint.size,
            merkle.leaf_hash(leaf),
            proof.inclusion,
            checkpoint.root_hash,
        )
    except merkle.ProofError as e:
        raise ReceiptError(f"inclusion of entry {proof.index}: {e}") from None
    return VerifiedEntry(proof.index, leaf, checkpoint)


# --- checkpoints an auditor keeps (witness-style) -------------------------------------------------


@dataclass
class KeptCheckpoints:
    """A JSON-lines file of checkpoints seen earlier, each proved consistent with the one before.

    Each line: ``{"checkpoint": "<signed note>", "consistency_from_previous": ["<b64>", ...]}``.
    Loading verifies every signature and every link, so a kept file is a verified history.
    """

    checkpoints: list[Checkpoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(
        cls, path: Path, verifiers: Sequence[note.Verifier], *, origin: str | None = None
    ) -> KeptCheckpoints:
        kept = cls()
        lines = read_text(path, "kept checkpoints").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            item = load_json(line, where)
            try:
                signed = item["checkpoint"]
                proof = [
                    _b64(h, "consistency hash") for h in item.get("consistency_from_previous", [])
                ]
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ReceiptError(f"{where}: not a kept-checkpoint line ({e})") from None
            if not isinstance(signed, str):
                raise ReceiptError(f"{where}: 'checkpoint' is not a signed note (a string)")
            try:
                kept.add(open_checkpoint(signed, verifiers, origin=origin), signed, proof)
            except OtherLogError as e:
                raise ReceiptOfAnotherLog(f"{where}: {e}") from None
            except (CheckpointError, ReceiptError) as e:
                raise ReceiptError(f"{where}: {e}") from None
        return kept

    def add(self, checkpoint: Checkpoint, signed: str, proof: Sequence[bytes]) -> None:
        """Append a checkpoint after checking it is consistent with the newest one kept."""
        if self.checkpoints:
            last = self.checkpoints[-1]
            try:
                merkle.verify_consistency(
                    last.size, checkpoint.size, last.root_hash, checkpoint.root_hash, proof
                )
            except merkle.ProofError as e:
                raise ReceiptError(
                    f"checkpoint of size {checkpoint.size} is not consistent with the kept "
                    f"checkpoint of size {last.size}: {e}"
                ) from None
        self.checkpoints.append(checkpoint)
        self.notes.append(signed)

    @staticmethod
    def line(signed: str, proof: Sequence[bytes]) -> str:
        item = {
            "checkpoint": signed,
            "consistency_from_previous": [base64.b64encode(h).decode() for h in proof],
        }
        return json.dumps(item, sort_keys=True) + "\n"


# --- a sekisho receipt ----------------------------------------------------------------------------


@dataclass
class ReceiptReport:
    """What was verified, one sentence per check, for people reading the verify output."""

    checks: list[str] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    # The entries the proofs cover, (index, exact bytes): what the receipt proves was logged.
    proved: list[tuple[str, int, bytes]] = field(default_factory=list)


def _get(receipt: Mapping[str, Any], key: str, kind: type) -> Any:
    value = receipt.get(key)
    if not isinstance(value, kind):
        raise ReceiptError(f"receipt field {key!r} is missing or not a {kind.__name__}")
    return value


# What a receipt may carry: everything else would be a claim no proof covers, shown beside
# "verified" (``request_id`` is checked against the proved entry; ``consistency`` is proofs).
_RECEIPT_FIELDS = frozenset(
    {"request_id", "entry", "index", "tlog_proof", "outcome", "consistency"}
)
_PART_FIELDS = frozenset({"entry", "index", "tlog_proof"})


def _only_known(part: Mapping[str, Any], known: frozenset[str], name: str) -> None:
    unknown = sorted(str(k) for k in part if k not in known)
    if unknown:
        raise ReceiptError(
            f"{name} carries {', '.join(map(repr, unknown))}, which no proof covers; "
            f"a sekisho receipt has only {', '.join(sorted(known))}"
        )


def _verify_part(
    part: Mapping[str, Any], name: str, verifiers: Sequence[note.Verifier], origin: str | None
) -> VerifiedEntry:
    leaf = _b64(_get(part, "entry", str), f"{name} entry")
    proof = TlogProof.parse(_get(part, "tlog_proof", str))
    index = part.get("index")
    if index is not None:
        if not isinstance(index, int) or isinstance(index, bool):
            raise ReceiptError(f"{name}: index {index!r} is not an integer")
        if index != proof.index:
            raise ReceiptError(f"{name}: index {index} differs from tlog-proof {proof.index}")
    if proof.extra is not None and proof.extra != leaf:
        raise ReceiptError(f"{name}: tlog-proof extra data differs from the receipt's entry")
    try:
        return verify_tlog_proof(proof, verifiers, leaf=leaf, origin=origin)
    except ReceiptError as e:
        raise _within(e, name) from None


@dataclass(frozen=True)
class ConsistencyProof:
    old_size: int
    new_size: int
    proof: tuple[bytes, ...]


_CONSISTENCY_FIELDS = frozenset({"old_size", "new_size", "proof"})


def _tree_size(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= merkle.MAX_SIZE:
        raise ReceiptError(f"{what} {value!r:.40} is not a tree size (an integer, 0 to 2^64-1)")
    return value


def consistency_proofs(receipt: Mapping[str, Any]) -> list[ConsistencyProof]:
    """The receipt's ``consistency`` list, each item checked for its shape (not yet its proof)."""
    items = receipt.get("consistency")
    if items is None:
        return []
    if not isinstance(items, list):
        raise ReceiptError("receipt field 'consistency' is not a list")
    proofs = []
    for n, item in enumerate(items):
        where = f"receipt consistency item {n}"
        if not isinstance(item, Mapping):
            raise ReceiptError(f"{where} is not an object")
        unknown = sorted(str(k) for k in item if k not in _CONSISTENCY_FIELDS)
        if unknown:
            raise ReceiptError(
                f"{where} carries {', '.join(map(repr, unknown))}; it has only "
                "old_size, new_size and proof"
            )
        old = _tree_size(item.get("old_size"), f"{where}: old_size")
        new = _tree_size(item.get("new_size"), f"{where}: new_size")
        if old > new:
            raise ReceiptError(f"{where}: old_size {old} is larger than new_size {new}")
        hashes = item.get("proof")
        if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
            raise ReceiptError(f"{where}: proof is not a list of base64 hashes")
        decoded = tuple(_b64(h, f"{where}: proof hash {i}") for i, h in enumerate(hashes))
        for i, h in enumerate(decoded):
            if len(h) != merkle.HASH_SIZE:
                raise ReceiptError(
                    f"{where}: proof hash {i} is {len(h)} bytes, not {merkle.HASH_SIZE}"
                )
        proofs.append(ConsistencyProof(old, new, decoded))
    return proofs


def verify_receipt(
    receipt: Mapping[str, Any],
    verifiers: Sequence[note.Verifier],
    *,
    kept: KeptCheckpoints | None = None,
    origin: str | None = None,
) -> ReceiptReport:
    """Verify a receipt offline; raise ``ReceiptError`` naming the first check that failed."""
    report = ReceiptReport()
    _only_known(receipt, _RECEIPT_FIELDS, "the receipt")
    consistency = consistency_proofs(receipt)
    decision = _verify_part(receipt, "decision entry", verifiers, origin)
    cp = decision.checkpoint
    report.checkpoint = cp
    key_names = ", ".join(f"{v.name}+{v.key_id:08x}" for v in verifiers)
    report.checks.append(f"checkpoint signature: {cp.origin} at size {cp.size} (key {key_names})")
    try:
        record = parse_record(decision.leaf)
    except RecordError as e:
        raise ReceiptError(f"decision entry: {e}") from None
    if record.kind != "decision":
        raise ReceiptError(f"decision entry is a {record.kind!r} record")
    if "request_id" in receipt and receipt["request_id"] != record.request_id:
        # The id a client looks its receipt up by is bound to the proved entry, not beside it.
        raise ReceiptError(
            f"the receipt's request_id {receipt['request_id']!r} is not the request of the "
            f"proved decision entry ({record.request_id!r})"
        )
    report.checks.append(
        f"inclusion: decision of request {show_entry(str(record.request_id).encode())} is entry "
        f"{decision.index}"
    )
    report.proved.append(("decision", decision.index, decision.leaf))
    outcome_part = receipt.get("outcome")
    if outcome_part is not None:
        if not isinstance(outcome_part, Mapping):
            raise ReceiptError("receipt field 'outcome' is not an object")
        _only_known(outcome_part, _PART_FIELDS, "the receipt's outcome")
        outcome = _verify_part(outcome_part, "outcome entry", verifiers, origin)
        if outcome.checkpoint != cp:
            raise ReceiptError("outcome entry is proved against a different checkpoint")
        try:
            outcome_record = parse_record(outcome.leaf)
        except RecordError as e:
            raise ReceiptError(f"outcome entry: {e}") from None
        if outcome_record.kind != "outcome" or outcome_record.request_id != record.request_id:
            raise ReceiptError("outcome entry is not the outcome of this receipt's request")
        if outcome.index <= decision.index:
            raise ReceiptError("outcome entry precedes its decision in the log")
        report.checks.append(f"inclusion: outcome of the same request is entry {outcome.index}")
        report.proved.append(("outcome", outcome.index, outcome.leaf))
    else:
        report.checks.append("outcome: none in this receipt (request incomplete or in progress)")
    if kept is not None and kept.checkpoints:
        report.checks.append(_check_against_kept(cp, consistency, kept))
    elif consistency:
        report.checks.append(
            f"consistency: {len(consistency)} proof(s) in the receipt NOT checked: there are no "
            "kept checkpoints to check them against (--checkpoints)"
        )
    return report


def _check_against_kept(
    cp: Checkpoint, proofs: Sequence[ConsistencyProof], kept: KeptCheckpoints
) -> str:
    """Tie the receipt's tree head to the kept chain where its size falls.

    The kept checkpoints are one verified chain. The receipt's tree must be the kept one of its
    size, else a prefix of the smallest kept tree larger than it (and so of every later one;
    every smaller one is a prefix of both), else an extension of the newest kept one. A link to
    any other kept checkpoint proves too little: a fork after it would pass.
    """
    later = [old for old in kept.checkpoints if old.size >= cp.size]
    target = later[0] if later else kept.checkpoints[-1]
    if target.size == cp.size:
        if target.root_hash != cp.root_hash:
            raise ReceiptError(
                f"consistency: the log signed two different roots for size {cp.size} "
                "(one kept, one in the receipt): the log forked"
            )
        return f"consistency: same tree head as kept checkpoint of size {cp.size}"
    old, new = (target, cp) if target.size < cp.size else (cp, target)
    for item in proofs:
        if (item.old_size, item.new_size) != (old.size, new.size):
            continue
        try:
            merkle.verify_consistency(old.size, new.size, old.root_hash, new.root_hash, item.proof)
        except merkle.ProofError as e:
            raise ReceiptError(
                f"consistency with kept checkpoint of size {target.size}: {e}"
            ) from None
        return (
            f"consistency: receipt's tree (size {cp.size}) and kept tree "
            f"(size {target.size}) are one append-only log"
        )
    raise ReceiptError(
        f"consistency: nothing links the receipt's checkpoint (size {cp.size}) to your kept "
        f"checkpoint of size {target.size}; fetch the receipt again with ?since={target.size} "
        "(a consistency proof from that size)"
    )


def show_entry(leaf: bytes) -> str:
    """An entry's bytes for a terminal: its UTF-8 text (a record is canonical JSON), with every
    character that could hide or reorder text (controls, bidi overrides, zero-width, unassigned)
    shown as an escape; bytes that are not UTF-8 as base64."""
    try:
        text = leaf.decode("utf-8")
    except UnicodeDecodeError:
        return "base64 " + base64.b64encode(leaf).decode()
    return "".join(
        (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
        if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")
        else c
        for c in text
    )


def _relate_plain(cp: Checkpoint, kept: KeptCheckpoints) -> str:
    for old in kept.checkpoints:
        if old.size == cp.size:
            if old.root_hash != cp.root_hash:
                raise ReceiptError(f"the log signed two different roots for size {cp.size}")
            return f"consistency: same tree head as kept checkpoint of size {cp.size}"
    raise ReceiptError(
        f"a bare tlog-proof carries no consistency proof; nothing links size {cp.size} to "
        "your kept checkpoints (use the JSON receipt with a consistency proof)"
    )


def verify_document(
    text: str,
    where: str,
    verifiers: Sequence[note.Verifier],
    *,
    kept: KeptCheckpoints | None = None,
    origin: str | None = None,
) -> list[str]:
    """What ``sekisho verify`` does with a file's text (a receipt's JSON, or a bare tlog-proof):
    the lines it prints, or ``ReceiptError`` naming the first check that failed. With
    ``origin``, a checkpoint of any other log fails (``ReceiptOfAnotherLog``)."""
    pinned = [f"ok  origin: {origin}, the log expected"] if origin is not None else []
    if text.startswith(HEADER):
        # What `jq -r .tlog_proof` and editors write: one more newline at the end (or CRLF);
        # the proof itself ends with its last signature line and one newline.
        proof = text.replace("\r\n", "\n").rstrip("\n") + "\n"
        entry = verify_tlog_proof(TlogProof.parse(proof), verifiers, origin=origin)
        cp = entry.checkpoint
        lines = [
            f"ok  checkpoint signature: {cp.origin} at size {cp.size}",
            *pinned,
            f"ok  inclusion: the proof's entry bytes are entry {entry.index}",
        ]
        if kept is not None and kept.checkpoints:
            lines.append("ok  " + _relate_plain(cp, kept))
        return [*lines, f"entry {entry.index}, as logged:", "  " + show_entry(entry.leaf)]
    try:
        receipt = load_json(text, where)
    except ReceiptError as e:
        raise ReceiptError(f"{e}: it is neither a tlog-proof nor a receipt") from None
    if not isinstance(receipt, dict):
        raise ReceiptError(f"{where} is not a receipt object")
    report = verify_receipt(receipt, verifiers, kept=kept, origin=origin)
    checks = [f"ok  {check}" for check in report.checks]
    lines = [
        *checks[:1],
        *pinned,
        *checks[1:],
        "verified: the decision was logged and the log holds it under a signed tree head",
    ]
    for kind, index, leaf in report.proved:
        lines += [f"{kind} entry {index}, as logged:", "  " + show_entry(leaf)]
    return lines
