"""Ledger records are canonical JSON, versioned, and carry no secrets or personal data."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sekisho.ledger.records import (
    AdminRecord,
    DecisionRecord,
    OutcomeRecord,
    RecordError,
    keyed_hash,
    parse_record,
)

TENANT_KEY = b"k" * 32
WHEN = datetime(2025, 4, 1, 9, 30, 15, 123456, tzinfo=UTC)


def decision(**changes: object) -> DecisionRecord:
    fields: dict[str, object] = {
        "time": WHEN,
        "request_id": "req-1",
        "tenant": "acme",
        "principal": "p-7f3a",
        "classification": "confidential",
        "findings": {"jp_my_number": 1, "email": 2},
        "policy_digest": "sha256:abcd",
        "action": "allow",
        "endpoint": "sakura-tokyo",
        "jurisdiction_country": "JP",
        "jurisdiction_region": "tokyo",
        "operator_name": "Sakura Internet",
        "operator_country": "JP",
        "model": "llama-3-70b",
        "storage_region": "jp-east",
        "prompt_hash": keyed_hash(TENANT_KEY, "田中さんの住所".encode()),
    }
    fields.update(changes)
    return DecisionRecord(**fields)  # type: ignore[arg-type]


def test_decision_record_is_canonical_sorted_compact_utf8_json() -> None:
    data = decision().to_bytes()
    assert data.startswith(b'{"action":"allow","classification":"confidential"')
    assert b" " not in data.replace(b"Sakura Internet", b"")
    assert b'"v":1' in data
    assert b'"time":"2025-04-01T09:30:15.123Z"' in data
    assert b'"findings":{"email":2,"jp_my_number":1}' in data


def test_records_round_trip_through_their_bytes() -> None:
    outcome = OutcomeRecord(WHEN, "req-1", 200, 12, 30, keyed_hash(TENANT_KEY, b"out"), None, 812)
    admin = AdminRecord(WHEN, "admin@acme", "policy.update", "acme", {"digest": "sha256:ef"})
    eligible = decision(eligible=("sakura-tokyo", "onprem-osaka"))
    for record in (decision(), eligible, outcome, admin):
        data = record.to_bytes()
        parsed = parse_record(data)
        assert parsed.to_bytes() == data
        assert parsed.kind == record.kind
        assert parsed.time == WHEN.replace(microsecond=123000)  # milliseconds are kept


def test_the_providers_request_id_is_kept_only_when_given() -> None:
    """Entries written before the field existed keep their bytes (and so their hashes)."""
    plain = OutcomeRecord(WHEN, "req-1", 200, 1, 2, None, None, 5, "sakura-tokyo")
    assert b"upstream_request_id" not in plain.to_bytes()
    assert parse_record(plain.to_bytes()).to_bytes() == plain.to_bytes()
    traced = OutcomeRecord(WHEN, "req-1", 200, 1, 2, None, None, 5, "sakura-tokyo", "chatcmpl-9x")
    assert b'"upstream_request_id":"chatcmpl-9x"' in traced.to_bytes()
    assert parse_record(traced.to_bytes()).upstream_request_id == "chatcmpl-9x"
    with pytest.raises(RecordError, match="upstream_request_id"):
        parse_record(traced.to_bytes().replace(b'"chatcmpl-9x"', b"7"))


def test_the_prompt_appears_only_as_a_keyed_hash() -> None:
    data = decision().to_bytes()
    assert "田中".encode() not in data
    assert keyed_hash(TENANT_KEY, b"x") != keyed_hash(b"j" * 32, b"x")
    assert keyed_hash(TENANT_KEY, b"x").startswith("hmac-sha256:")


def test_short_tenant_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        keyed_hash(b"short", b"x")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"v":2}', "version 2"),
        (b'{"kind":"mystery","time":"2025-04-01T09:30:15.123Z","v":1}', "kind 'mystery'"),
    ],
)
def test_unknown_or_broken_entries_are_named(data: bytes, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        parse_record(data)


def test_non_canonical_bytes_are_refused() -> None:
    pretty = decision().to_bytes().replace(b'"action":', b'"action": ')
    with pytest.raises(RecordError, match="canonical"):
        parse_record(pretty)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_the_record_parser_only_ever_raises_record_error(data: bytes) -> None:
    with contextlib.suppress(RecordError):
        parse_record(data)
