"""The examples in docs/ledger.md are real: they parse and verify with the documented key."""

from __future__ import annotations

import re
from pathlib import Path

from sekisho.ledger import TlogProof, Verifier, open_checkpoint, parse_record
from sekisho.ledger.proof import verify_tlog_proof

DOC = Path(__file__).parents[2] / "docs" / "ledger.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_documented_decision_entry_is_a_canonical_record() -> None:
    (entry,) = _blocks("json")
    record = parse_record(entry.strip().encode())
    assert record.kind == "decision"
    assert record.to_bytes() == entry.strip().encode()


def test_documented_checkpoint_and_receipt_verify_with_the_documented_key() -> None:
    key, checkpoint, proof = _blocks("text")
    verifier = Verifier.from_key_string(key.strip())
    cp = open_checkpoint(checkpoint, [verifier], origin="gateway.example/ledger")
    entry = verify_tlog_proof(TlogProof.parse(proof), [verifier])
    assert entry.checkpoint == cp
    record = parse_record(entry.leaf)
    assert record.request_id == "req-7Hc2"
    (decision,) = _blocks("json")
    assert entry.leaf == decision.strip().encode()  # the receipt is of the entry shown
    assert key.strip() in DOC.read_text(encoding="utf-8").split("## Verifying offline")[1]


def test_documented_entry_names_findings_as_the_classifier_does() -> None:
    """The example said {"email":1,"jp_phone":1}; entries say EMAIL and PHONE_JP."""
    from sekisho.classify import TYPES

    (entry,) = _blocks("json")
    record = parse_record(entry.strip().encode())
    assert record.findings and set(record.findings) <= set(TYPES), record.findings
