"""An unexpected error (a defect of sekisho's, not a refusal) after a request's decision entry
was written: the client gets a 500 ``internal_error`` with the request's id and receipt, the
decision gets its outcome (500, ``internal_error``), so `ledger audit` keeps "incomplete" for
requests a crash cut short; a stream that had begun ends with an error event."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from harness import Harness, ledger_entries, ledger_incomplete, receipt, request, start_example

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


def keepalive(raw: dict[str, Any]) -> None:
    raw["server"]["stream_keepalive_seconds"] = 0.1


@pytest.fixture
def gw(tmp_path: Path) -> Any:
    h = start_example(tmp_path)
    yield h
    h.stop()


def post(h: Harness, key: str, body: dict[str, Any]) -> Any:
    return request(
        "POST",
        h.base_url + "/chat/completions",
        json_body=body,
        headers={"authorization": f"Bearer {key}"},
    )


def outcome_of(h: Harness, key: str, request_id: str) -> dict[str, Any]:
    _, outcome = ledger_entries(receipt(h, request_id, key).json())
    assert outcome is not None, "the decision has no outcome"
    return outcome


def broken_transports(h: Harness, monkeypatch: pytest.MonkeyPatch, delay: float = 0) -> None:
    async def broken(*args: Any, **kw: Any) -> Any:
        await asyncio.sleep(delay)
        raise RuntimeError("a defect")

    for transport in h.gateway.transports.values():
        monkeypatch.setattr(transport, "open", broken)


def test_an_unexpected_error_after_the_decision_has_an_outcome_and_the_request_id(
    gw: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken_transports(gw, monkeypatch)
    key = gw.key()
    r = post(gw, key, CHAT)
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    rid = r.headers["x-sekisho-request-id"]
    assert rid in r.json()["error"]["message"]
    assert "x-sekisho-receipt" in r.headers  # the decision was written: its receipt
    outcome = outcome_of(gw, key, rid)
    assert outcome["status"] == 500 and outcome["error_code"] == "internal_error"
    assert ledger_incomplete(gw) == []


def test_an_unexpected_error_mid_stream_ends_it_with_an_error_event_and_an_outcome(
    gw: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sekisho._output import StreamOutput

    def broken(self: Any, event: Any) -> bool:
        raise RuntimeError("a defect")

    monkeypatch.setattr(StreamOutput, "apply", broken)
    key = gw.key()
    r = post(gw, key, {**CHAT, "stream": True})
    assert r.status_code == 200
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "internal_error"
    outcome = outcome_of(gw, key, r.headers["x-sekisho-request-id"])
    assert outcome["status"] == 500 and outcome["error_code"] == "internal_error"
    assert ledger_incomplete(gw) == []


def test_an_unexpected_error_while_a_kept_alive_stream_waits_is_an_error_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = start_example(tmp_path, keepalive)
    try:
        broken_transports(h, monkeypatch, delay=0.4)
        key = h.key()
        r = post(h, key, {**CHAT, "stream": True})
        assert r.status_code == 200
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[-1])["error"]["code"] == "internal_error"
        outcome = outcome_of(h, key, r.headers["x-sekisho-request-id"])
        assert outcome["status"] == 500 and outcome["error_code"] == "internal_error"
        assert ledger_incomplete(h) == []
    finally:
        h.stop()


def test_an_unexpected_error_before_the_decision_still_logs_the_request_line(
    gw: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A 500 that came before the pipeline (a defect in parsing, say) left a traceback and
    no request line: the SOC's view (who asked, what status) had no trace of it."""
    import logging

    import sekisho.api.openai

    def broken(raw: bytes) -> Any:
        raise TypeError("a defect")

    monkeypatch.setattr(sekisho.api.openai, "parse_chat", broken)
    caplog.set_level(logging.INFO, logger="sekisho.app")
    key = gw.key()
    r = post(gw, key, CHAT)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    rid = r.headers["x-sekisho-request-id"]
    deadline = time.monotonic() + 5  # the line is written once the answer has gone out
    while not [x for x in caplog.records if x.getMessage() == "request"]:
        assert time.monotonic() < deadline, "no request line"
        time.sleep(0.02)
    (line,) = [x for x in caplog.records if x.getMessage() == "request"]
    assert (line.request_id, line.status, line.error) == (rid, 500, "internal_error")  # type: ignore[attr-defined]
    assert line.tenant == "demo" and line.key_id == key.split("-")[2]  # type: ignore[attr-defined]
