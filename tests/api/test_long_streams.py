"""Streams that go on and on: the text a stream delivers is kept for its record, and bounded as
a whole answer is (``_streams.MAX_OUTPUT``); a stream past it ends with an error event and the
outcome ``upstream_answer_too_large``. (The limit is lowered here so that the simulator's
ordinary answers pass it.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from harness import Harness, ledger_entries, receipt
from sekisho import _streams
from sekisho._output import StreamOutput

LIMIT = 40  # characters: the simulator's answer ("[SIMULATOR] You said: ...") is longer


def _outcome(h: Harness, rid: str, key: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        r = receipt(h, rid, key)
        outcome = ledger_entries(r.json())[1] if r.status_code == 200 else None
        if outcome is not None:
            return outcome
        assert time.monotonic() < deadline, "no outcome recorded"
        time.sleep(0.05)


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_streams, "MAX_OUTPUT", LIMIT)


def no_output_rule(raw: dict[str, Any]) -> None:
    """The text passes as it comes (an output rule holds back a look-behind's worth, which
    would hold all of the simulator's short answer to its end)."""
    raw["tenants"]["demo"]["detection"]["output"] = {"action": "none", "types": []}


def test_a_chat_stream_past_the_limit_ends_with_an_error_and_its_record_matches_what_was_sent(
    gateways: Callable[..., Harness], small_limit: None
) -> None:
    h = gateways(no_output_rule, chunk_chars=8)
    key = h.key()
    client = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "tell me a very long story, please"}],
        stream=True,
    )
    rid = raw.headers["x-sekisho-request-id"]
    delivered = ""
    with pytest.raises(openai.APIError) as err:
        for chunk in raw.parse():
            if chunk.choices:
                delivered += chunk.choices[0].delta.content or ""
    assert err.value.code == "upstream_answer_too_large"
    # Ended at the first event after the limit was passed: the text sent, and nothing more.
    assert LIMIT < len(delivered) <= LIMIT + 8
    outcome = _outcome(h, rid, key)
    assert outcome["status"] == 502 and outcome["error_code"] == "upstream_answer_too_large"
    assert outcome["output_hash"] == h.gateway.recorder.keyed_hash("demo", delivered.encode())


def test_a_responses_stream_past_the_limit_ends_with_an_error_event(
    gateways: Callable[..., Harness], small_limit: None
) -> None:
    h = gateways(no_output_rule, chunk_chars=8)
    key = h.key()
    client = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
    with client.responses.with_streaming_response.create(
        model="gpt-4o", input="tell me a very long story, please", stream=True
    ) as raw:
        rid = raw.headers["x-sekisho-request-id"]
        events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[-1] == "error" and "response.completed" not in kinds
    assert events[-1].code == "upstream_answer_too_large"
    delivered = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert LIMIT < len(delivered) <= LIMIT + 8
    outcome = _outcome(h, rid, key)
    assert outcome["status"] == 502 and outcome["error_code"] == "upstream_answer_too_large"
    assert outcome["output_hash"] == h.gateway.recorder.keyed_hash("demo", delivered.encode())


def test_the_delivered_text_is_kept_joined_not_as_one_object_per_event() -> None:
    """An endless stream of small deltas grew the gateway by 1.5 GB in a minute: every delta
    was kept as its own string. Kept joined, the text costs its characters; the record reads
    it back the same."""
    tenant: Any = type(
        "T", (), {"detection": type("D", (), {"output": type("O", (), {"action": "none"})()})()}
    )()
    out = StreamOutput(None, tenant, scanner=None)  # type: ignore[arg-type]
    pieces = [f"piece {i} " for i in range(20_000)]
    for i, piece in enumerate(pieces):
        event = {"choices": [{"index": 0, "delta": {"content": piece}}]}
        out.apply(event)
        if i % 2:
            out.apply({"choices": [{"index": 1, "delta": {"content": "x"}}]})
    assert out.texts() == ["".join(pieces), "x" * 10_000]
    assert out.size == sum(map(len, pieces)) + 10_000
    kept = out._texts[(0, -1)]
    assert len(kept.joined) + len(kept.parts) < 100
