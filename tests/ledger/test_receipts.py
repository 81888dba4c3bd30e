"""Receipts as a skeptical auditor handles them: every forged or mangled receipt, tlog-proof,
checkpoint or kept-checkpoints line is refused by name (``ReceiptError``, FAILED and exit 1 on
the command line), never accepted and never a traceback; what verifies proves the same entries.

The receipts come from a real ledger (SQLite, signed checkpoints); the parsers and the verifier
are fuzzed with hypothesis.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sekisho
from sekisho.cli import main
from sekisho.ledger import Ledger, Signer
from sekisho.ledger.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from sekisho.ledger.note import Verifier
from sekisho.ledger.proof import (
    KeptCheckpoints,
    ReceiptError,
    TlogProof,
    verify_document,
)

from .conftest import decision, outcome

SRC = str(Path(sekisho.__file__).parent.parent)
ORIGIN = "receipts.test.example/log"


@dataclass
class Log:
    verifier: Verifier
    key: str  # verifier key string
    receipt: dict[str, Any]  # a request's receipt with a consistency proof from ``kept``
    kept: KeptCheckpoints  # the checkpoint an auditor kept before the request
    kept_line: str  # ... as its line in a kept-checkpoints file
    dir: Path
    odd_receipt: dict[str, Any]  # of a request whose model name hides text (a bidi override)


async def _build(directory: Path) -> Log:
    signer = Signer.generate(ORIGIN)
    ledger = await Ledger.open(str(directory), signer, origin=ORIGIN, checkpoint_interval=3600)
    try:
        for i in range(5):
            await ledger.append(decision(f"early-{i}"))
            await ledger.append(outcome(f"early-{i}"))
        signed = ledger.checkpoint_now()  # size 11 with the key's own first entry, or 10
        kept = KeptCheckpoints()
        kept.add(open_checkpoint(signed, [signer.verifier()]), signed, [])
        for i in range(4):
            await ledger.append(decision(f"late-{i}"))
            await ledger.append(outcome(f"late-{i}"))
        await ledger.append(decision("odd-0", model="gpt-4o\u202e\u200bini"))
        ledger.checkpoint_now()
        receipt = ledger.receipt("late-1", consistency_with=kept.checkpoints[0].size)
        odd = ledger.receipt("odd-0")
    finally:
        await ledger.close()
    verifier = signer.verifier()
    return Log(
        verifier,
        verifier.key_string(),
        receipt,
        kept,
        KeptCheckpoints.line(signed, []),
        directory,
        odd,
    )


@pytest.fixture(scope="module")
def log() -> Iterator[Log]:
    with tempfile.TemporaryDirectory() as d:
        yield asyncio.run(_build(Path(d)))


def run_verify(log: Log, text: str | bytes, *extra: str) -> subprocess.CompletedProcess[str]:
    """``sekisho verify`` as an auditor runs it, in its own process."""
    path = log.dir / "receipt-under-test"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return subprocess.run(
        [sys.executable, "-m", "sekisho", "verify", str(path), "--key", log.key, *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=60,
    )


def verify_here(
    log: Log, text: str, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    """The same command in this process (a traceback would fail the test): exit, out, err."""
    path = log.dir / "receipt-under-test"
    path.write_text(text, encoding="utf-8")
    status = main(["verify", str(path), "--key", log.key, *extra])
    out, err = capsys.readouterr()
    return status, out, err


def _kept_file(log: Log) -> str:
    path = log.dir / "kept.jsonl"
    path.write_text(log.kept_line)
    return str(path)


def test_the_genuine_receipt_verifies_with_and_without_kept_checkpoints(log: Log) -> None:
    plain = run_verify(log, json.dumps(log.receipt))
    assert plain.returncode == 0, plain.stderr
    assert "proof(s) in the receipt NOT checked" in plain.stdout
    kept = run_verify(log, json.dumps(log.receipt), "--checkpoints", _kept_file(log))
    assert kept.returncode == 0, kept.stderr
    assert "are one append-only log" in kept.stdout


def test_verify_shows_the_entries_the_receipt_proves(log: Log) -> None:
    """What an auditor checks a receipt for (the decision, its policy digest and time, the
    outcome's status and output hash) is in the proved entries; verify printed only the
    request id and the indexes, leaving the auditor to decode base64 by hand."""
    out = run_verify(log, json.dumps(log.receipt))
    assert out.returncode == 0, out.stderr
    decision_text = base64.b64decode(log.receipt["entry"]).decode()
    outcome_text = base64.b64decode(log.receipt["outcome"]["entry"]).decode()
    lines = out.stdout.splitlines()
    at = lines.index(f"decision entry {log.receipt['index']}, as logged:")
    assert lines[at + 1] == "  " + decision_text
    assert '"policy_digest":"sha256:0f"' in decision_text and '"time":"' in decision_text
    at = lines.index(f"outcome entry {log.receipt['outcome']['index']}, as logged:")
    assert lines[at + 1] == "  " + outcome_text
    assert '"output_hash":"hmac-sha256:' in outcome_text

    # A character that reorders or hides text on a terminal is shown as its escape.
    odd = run_verify(log, json.dumps(log.odd_receipt))
    assert odd.returncode == 0, odd.stderr
    assert '"model":"gpt-4o\\u202e\\u200bini"' in odd.stdout
    assert "\u202e" not in odd.stdout and "\u200b" not in odd.stdout

    bare = run_verify(log, log.receipt["tlog_proof"])
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.splitlines()[-1] == "  " + decision_text


def test_a_field_given_twice_or_an_index_that_is_not_an_integer_fails(
    log: Log, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON with a field twice means what the reader makes of it: Python took the last
    (genuine) request_id and said "verified", a reader taking the first would show req_FAKE.
    An index of true or 1.0 passed as the integer it equals."""
    genuine = json.dumps(log.receipt)
    index = log.receipt["index"]
    forged = {
        '{"request_id": "req_FAKE", ' + genuine[1:]: "field 'request_id' appears twice",
        '{"entry": "AAAA", ' + genuine[1:]: "field 'entry' appears twice",
        genuine.replace('"outcome": {', '"outcome": {"index": 0, ', 1): "'index' appears twice",
        json.dumps({**log.receipt, "index": float(index)}): f"index {float(index)} is not an int",
        json.dumps({**log.receipt, "outcome": {**log.receipt["outcome"], "index": True}}): (
            "outcome entry: index True is not an integer"
        ),
    }
    for text, said in forged.items():
        status, out, err = verify_here(log, text, capsys)
        assert status == 1 and "verified" not in out, (text[:80], out)
        assert said in err, err


def test_consistency_proofs_not_in_their_shape_fail_with_or_without_kept_checkpoints(
    log: Log, capsys: pytest.CaptureFixture[str]
) -> None:
    """They were not read at all without --checkpoints (so "verified" beside garbage), and
    with it a proof or size of another type stopped with a TypeError traceback."""
    item = log.receipt["consistency"][0]
    a_hash = base64.b64encode(b"\x00" * 32).decode()
    bad: list[tuple[Any, str]] = [
        ("abc", "'consistency' is not a list"),
        (5, "'consistency' is not a list"),
        ([[1, 2]], "consistency item 0 is not an object"),
        ([{**item, "proof": 5}], "proof is not a list of base64 hashes"),
        ([{**item, "proof": [5]}], "proof is not a list of base64 hashes"),
        ([{**item, "proof": ["!!"]}], "proof hash 0 is not valid base64"),
        ([{**item, "proof": ["AAAA"]}], "proof hash 0 is 3 bytes, not 32"),
        ([{**item, "old_size": {}}], "old_size {} is not a tree size"),
        ([{**item, "old_size": [1]}], "old_size [1] is not a tree size"),
        ([{**item, "new_size": True}], "new_size True is not a tree size"),
        ([{**item, "new_size": -1}], "new_size -1 is not a tree size"),
        ([{**item, "new_size": 2**64}], "is not a tree size"),
        ([{**item, "old_size": item["new_size"] + 1}], "is larger than new_size"),
        ([{**item, "root": a_hash}], "consistency item 0 carries 'root'"),
    ]
    kept = _kept_file(log)
    for consistency, said in bad:
        text = json.dumps({**log.receipt, "consistency": consistency})
        for extra in ((), ("--checkpoints", kept)):
            status, out, err = verify_here(log, text, capsys, *extra)
            assert status == 1 and "verified" not in out, (consistency, extra, out)
            assert said in err, (extra, err)
    # From an auditor's shell, too: FAILED, exit 1, no traceback.
    out = run_verify(log, json.dumps({**log.receipt, "consistency": [{**item, "proof": 5}]}))
    assert out.returncode == 1 and "FAILED: " in out.stderr and "Traceback" not in out.stderr


# --- fuzz -----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELD_PATHS = [
    ("request_id",),
    ("entry",),
    ("index",),
    ("tlog_proof",),
    ("outcome",),
    ("outcome", "entry"),
    ("outcome", "index"),
    ("outcome", "tlog_proof"),
    ("consistency",),
    ("consistency", 0),
    ("consistency", 0, "old_size"),
    ("consistency", 0, "new_size"),
    ("consistency", 0, "proof"),
    ("consistency", 0, "proof", 0),
    ("extra field",),
]


def _proves_the_same(log: Log, text: str) -> None:
    """What verified must prove what the genuine receipt proves: the same entry bytes."""
    if text.startswith("c2sp.org/tlog-proof@v1"):
        return
    accepted = json.loads(text)
    assert base64.b64decode(accepted["entry"]) == base64.b64decode(log.receipt["entry"])
    assert accepted.get("request_id", log.receipt["request_id"]) == log.receipt["request_id"]
    if accepted.get("outcome") is not None:
        outcome_entry = base64.b64decode(accepted["outcome"]["entry"])
        assert outcome_entry == base64.b64decode(log.receipt["outcome"]["entry"])


def _verify_only_refuses_by_name(log: Log, text: str, *, kept: bool) -> None:
    try:
        verify_document(text, "receipt", [log.verifier], kept=log.kept if kept else None)
    except ReceiptError:
        return
    _proves_the_same(log, text)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), kept=st.booleans())
def test_any_json_value_in_any_field_is_refused_by_name(
    log: Log, data: st.DataObject, kept: bool
) -> None:
    receipt = json.loads(json.dumps(log.receipt))
    path = data.draw(st.sampled_from(FIELD_PATHS))
    value = data.draw(json_values)
    target: Any = receipt
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    _verify_only_refuses_by_name(log, json.dumps(receipt), kept=kept)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), kept=st.booleans())
def test_any_edit_of_the_receipt_text_is_refused_or_proves_the_same(
    log: Log, data: st.DataObject, kept: bool
) -> None:
    """Bit flips, cuts, insertions (unicode included) anywhere in the receipt's JSON text."""
    text = json.dumps(log.receipt)
    at = data.draw(st.integers(0, len(text) - 1))
    edit = data.draw(st.sampled_from(["flip", "cut", "insert", "replace"]))
    if edit == "flip":
        bit = data.draw(st.integers(0, 6))
        text = text[:at] + chr(ord(text[at]) ^ (1 << bit)) + text[at + 1 :]
    elif edit == "cut":
        text = text[:at] + text[at + data.draw(st.integers(1, 200)) :]
    elif edit == "insert":
        text = text[:at] + data.draw(st.text(min_size=1, max_size=10)) + text[at:]
    else:
        end = at + data.draw(st.integers(1, 10))
        text = text[:at] + data.draw(st.text(min_size=1, max_size=10)) + text[end:]
    _verify_only_refuses_by_name(log, text, kept=kept)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_edit_of_a_bare_tlog_proof_is_refused_or_proves_the_same_entry(
    log: Log, data: st.DataObject
) -> None:
    proof = log.receipt["tlog_proof"]
    lines = proof.split("\n")
    at = data.draw(st.integers(0, len(lines) - 1))
    new_line = data.draw(
        st.text(max_size=60)
        | st.from_regex(r"index [0-9]{1,30}", fullmatch=True)
        | st.sampled_from(["", "index 0", "index " + "9" * 5000, lines[at][:-4]])
    )
    edited = "\n".join([*lines[:at], new_line, *lines[at + 1 :]])
    try:
        parsed = TlogProof.parse(edited)
        verify_document(edited, "proof", [log.verifier])
    except ReceiptError:
        return
    assert parsed.index == TlogProof.parse(proof).index
    assert parsed.extra == base64.b64decode(log.receipt["entry"])


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.one_of(json_values.map(json.dumps), st.text(max_size=80)))
def test_any_kept_checkpoints_line_is_refused_by_name(log: Log, line: str) -> None:
    path = log.dir / "fuzzed-kept.jsonl"
    path.write_text(log.kept_line + line.replace("\n", " ") + "\n", encoding="utf-8")
    try:
        KeptCheckpoints.load(path, [log.verifier])
    except ReceiptError:
        return
    assert not line.strip()  # only an empty line is skipped; nothing else loads


@given(st.text(max_size=120))
def test_the_checkpoint_parser_only_ever_raises_checkpoint_error(text: str) -> None:
    for candidate in (text, f"{ORIGIN}\n{text}\n", f"{ORIGIN}\n10\n{text}\n"):
        with contextlib.suppress(CheckpointError):
            Checkpoint.parse(candidate)


# --- tree sizes at the edges ----------------------------------------------------------------------


async def _receipts_at_size(directory: Path, size: int) -> list[str]:
    """Grow a log to ``size`` entries (decision, outcome, ...), keeping the checkpoint of every
    size on the way; verify the receipts of the first and the last request, each against every
    kept checkpoint. Returns what failed."""
    from sekisho.ledger.proof import verify_receipt

    signer = Signer.generate(ORIGIN)
    verifiers = [signer.verifier()]
    ledger = await Ledger.open(str(directory), signer, origin=ORIGIN, checkpoint_interval=3600)
    failed: list[str] = []
    try:
        signed = {0: ledger.checkpoint_now()}
        ids: list[str] = []
        while ledger.storage.tree_size() < size:
            request_id = f"edge-{len(ids)}"
            ids.append(request_id)
            for record in (decision(request_id), outcome(request_id)):
                if ledger.storage.tree_size() < size:
                    await ledger.append(record)
                    note = ledger.checkpoint_now()
                    signed[int(note.split("\n")[1])] = note
        assert ledger.storage.tree_size() == size
        for request_id in dict.fromkeys((ids[0], ids[-1])):
            for kept_size, note in signed.items():
                kept = KeptCheckpoints()
                kept.add(open_checkpoint(note, verifiers), note, [])
                receipt = ledger.receipt(request_id, consistency_with=kept_size)
                try:
                    report = verify_receipt(receipt, verifiers, kept=kept)
                except ReceiptError as e:
                    failed.append(f"size {size}, {request_id}, kept {kept_size}: {e}")
                    continue
                assert report.checkpoint is not None and report.checkpoint.size == size
                assert report.proved[0][1] == ledger.find(request_id)[0][0]
    finally:
        await ledger.close()
    return failed


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33])
async def test_receipts_of_the_first_and_last_request_verify_at_every_edge_size(
    tmp_path: Path, size: int
) -> None:
    """Sizes 1 and 2, powers of two and one either side; against a checkpoint kept at every
    earlier size (0 included), linked by the receipt's consistency proof."""
    assert await _receipts_at_size(tmp_path, size) == []


def _spare_bits_set(b64: str) -> str:
    """The same bytes in a non-canonical spelling: the unused low bits of the last character
    before the padding set (RFC 4648 §3.5 says an encoder leaves them zero)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = b64.rstrip("=")
    spare = {1: 0b11, 2: 0b1111}[len(b64) - len(body)]
    spelled = body[:-1] + alphabet[alphabet.index(body[-1]) | spare] + b64[len(body) :]
    assert base64.b64decode(spelled) == base64.b64decode(b64) and spelled != b64
    return spelled


def test_a_non_canonical_base64_spelling_of_any_hash_or_entry_is_refused(
    log: Log, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same bytes spelled another way verified: one receipt, many texts (a receipt's hash
    or signature then no longer names it). Each base64 value must be the canonical one."""
    proof = log.receipt["tlog_proof"]
    hash_line = proof.split("\n")[3]
    signature = proof.rstrip("\n").rsplit(" ", 1)[1]
    forged = {
        "signature of receipts.test.example/log": {
            **log.receipt,
            "outcome": None,
            "tlog_proof": proof.replace(signature, _spare_bits_set(signature)),
        },
        "entry": {**log.receipt, "entry": _spare_bits_set(log.receipt["entry"])}
        if log.receipt["entry"].endswith("=")
        else None,
        "inclusion proof line 0": {
            **log.receipt,
            "tlog_proof": proof.replace(hash_line, _spare_bits_set(hash_line), 1),
        },
        "proof hash 0": {
            **log.receipt,
            "consistency": [
                {
                    **log.receipt["consistency"][0],
                    "proof": [
                        _spare_bits_set(log.receipt["consistency"][0]["proof"][0]),
                        *log.receipt["consistency"][0]["proof"][1:],
                    ],
                }
            ],
        },
    }
    for said, receipt in forged.items():
        if receipt is None:
            continue
        status, out, err = verify_here(log, json.dumps(receipt), capsys)
        assert status == 1 and "verified" not in out, (said, out)
        assert said in err and "not canonical base64" in err, err
