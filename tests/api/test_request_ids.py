"""The request ids others choose, as sekisho passes them on: a client's ``x-request-id`` and an
endpoint's (its ``x-request-id``, Azure's ``apim-request-id``) reach the response headers, the
log and the ledger only as short, plain tokens. A value with control characters (terminal
escapes, a line break a log reader would take for a new line) or of many kilobytes (the ledger
keeps it for good) is not passed on: the client's is replaced by the gateway's own id, the
endpoint's is left out."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import Harness, ledger_entries, receipt, request
from sekisho import simulator
from sekisho.api.http import request_id
from sekisho.providers.base import upstream_request_id

SANE = "req-2024_07.01:ab"


def _chat(h: Harness, key: str, **headers: str) -> Any:
    return request(
        "POST",
        f"{h.base_url}/chat/completions",
        json_body={"model": "gpt-4o", "messages": [{"role": "user", "content": "ids"}]},
        headers={"authorization": f"Bearer {key}", **headers},
    )


def _outcome(h: Harness, rid: str, key: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        r = receipt(h, rid, key)
        outcome = ledger_entries(r.json())[1] if r.status_code == 200 else None
        if outcome is not None:
            return outcome
        assert time.monotonic() < deadline, "no outcome recorded"
        time.sleep(0.05)


def _access_line(caplog: pytest.LogCaptureFixture, rid: str) -> logging.LogRecord:
    """The request's log line (written just after its answer went out)."""
    deadline = time.monotonic() + 10
    while True:
        found = [
            r
            for r in caplog.records
            if r.name == "sekisho.app" and getattr(r, "request_id", None) == rid
        ]
        if found:
            (line,) = found
            return line
        assert time.monotonic() < deadline, "no log line"
        time.sleep(0.02)


@pytest.mark.parametrize(
    "given_id",
    ["x" * 60_000, "line\tbreak", "日本語の依頼番号", "a" * 65, "<b>bold</b>", "a b"],
    ids=["60-KB", "tab", "non-ascii", "65-chars", "markup", "space"],
)
def test_a_clients_request_id_that_is_not_a_short_token_is_replaced_not_echoed(
    gateway: Harness, caplog: pytest.LogCaptureFixture, given_id: str
) -> None:
    key = gateway.key()
    caplog.set_level(logging.INFO, logger="sekisho.app")
    sent = given_id.encode("utf-8").decode("latin-1")  # as the bytes reach the header
    r = _chat(gateway, key, **{"x-request-id": sent})
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    assert rid.startswith("req_") and len(rid) < 64
    line = _access_line(caplog, rid)
    assert not hasattr(line, "client_request_id")
    assert _outcome(gateway, rid, key)["request_id"] == rid

    echoed = _chat(gateway, key, **{"x-request-id": SANE})
    assert echoed.headers["x-request-id"] == SANE  # a sane one is the client's to trace by


@pytest.mark.parametrize(
    "sent_id",
    ["u" * 200_000, "req\tid", "日本語".encode().decode("latin-1"), "a" * 129],
    ids=["200-KB", "tab", "non-ascii", "129-chars"],
)
def test_an_endpoints_request_id_that_is_not_a_short_token_is_left_out(
    gateway: Harness,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    sent_id: str,
) -> None:
    write = simulator._Protocol._write

    def with_id(self: Any, status: int, body: bytes, ctype: str = "application/json",
                extra: dict[str, str] | None = None) -> None:  # fmt: skip
        write(self, status, body, ctype, {**(extra or {}), "x-request-id": sent_id})

    monkeypatch.setattr(simulator._Protocol, "_write", with_id)
    key = gateway.key()
    caplog.set_level(logging.INFO, logger="sekisho.app")
    r = _chat(gateway, key)
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    assert "x-sekisho-upstream-request-id" not in r.headers
    line = _access_line(caplog, rid)
    assert not hasattr(line, "upstream_request_id")
    assert "upstream_request_id" not in _outcome(gateway, rid, key)


def test_a_control_character_in_a_header_is_refused_before_anything_reads_it(
    gateway: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP allows no control character but the tab in a header's value: the parser refuses
    such a request (400 invalid_http) and such an answer (the endpoint failed, as for any
    malformed answer), so none reaches an id at all."""
    r = _chat(gateway, gateway.key(), **{"x-request-id": "abc\x1b[31mdef"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_http"
    write = simulator._Protocol._write

    def with_id(self: Any, status: int, body: bytes, ctype: str = "application/json",
                extra: dict[str, str] | None = None) -> None:  # fmt: skip
        write(self, status, body, ctype, {**(extra or {}), "x-request-id": "req\x1b]0;t\x07"})

    monkeypatch.setattr(simulator._Protocol, "_write", with_id)
    r = _chat(gateway, gateway.key())
    assert r.status_code == 502 and "Invalid header value char" in r.text


@given(st.text(max_size=300))
def test_an_endpoints_request_id_is_passed_on_only_as_short_printable_ascii(value: str) -> None:
    for headers in ({"x-request-id": value}, {"apim-request-id": value}):
        got = upstream_request_id(headers)
        assert got is None or (got == value and len(got) <= 128)
        if got is not None:
            assert got.isascii() and got.isprintable()


@given(st.text(max_size=200))
def test_a_clients_request_id_is_kept_only_as_a_short_token(value: str) -> None:
    scope = {"headers": [(b"x-request-id", value.encode("utf-8"))]}
    got = request_id(scope)
    assert got == value or got.startswith("req_")
    assert 1 <= len(got) <= 64 and got.isascii() and got.isprintable() and " " not in got
