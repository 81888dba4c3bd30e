"""Streams that go on and on: the text a stream delivers is kept for its record, and bounded
(``server.max_stream_text_chars``, at most as large as a whole answer may be); a stream past it
ends with an error event and the outcome ``upstream_answer_too_large``. (The limit is set to
its least here, and the simulator echoes a longer prompt.) A fast stream gives way to everyone
else on the event loop every few events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from harness import Harness, ledger_entries, receipt
from sekisho._output import StreamOutput

LIMIT = 1024  # characters: the least server.max_stream_text_chars may be
CHUNK = 64  # characters of text per streamed event
# The simulator's answer repeats it ("[SIMULATOR] You said: ..."): past the limit.
LONG_PROMPT = "tell me a very long story, please. " * 40


def _outcome(h: Harness, rid: str, key: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        r = receipt(h, rid, key)
        outcome = ledger_entries(r.json())[1] if r.status_code == 200 else None
        if outcome is not None:
            return outcome
        assert time.monotonic() < deadline, "no outcome recorded"
        time.sleep(0.05)


def no_output_rule(raw: dict[str, Any]) -> None:
    """The text passes as it comes (an output rule holds back a look-behind's worth, which
    would hold all of the simulator's short answer to its end)."""
    raw["tenants"]["demo"]["detection"]["output"] = {"action": "none", "types": []}


def small_limit(raw: dict[str, Any]) -> None:
    no_output_rule(raw)
    raw["server"]["max_stream_text_chars"] = LIMIT


def test_a_chat_stream_past_the_limit_ends_with_an_error_and_its_record_matches_what_was_sent(
    gateways: Callable[..., Harness],
) -> None:
    h = gateways(small_limit, chunk_chars=CHUNK, echo_chars=2 * LIMIT)
    key = h.key()
    client = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": LONG_PROMPT}],
        stream=True,
    )
    rid = raw.headers["x-sekisho-request-id"]
    delivered = ""
    with pytest.raises(openai.APIError) as err:
        for chunk in raw.parse():
            if chunk.choices:
                delivered += chunk.choices[0].delta.content or ""
    assert err.value.code == "upstream_answer_too_large"
    assert f"passed {LIMIT} characters" in str(err.value)
    assert "server.max_stream_text_chars" in str(err.value)
    # Ended at the first event after the limit was passed: the text sent, and nothing more.
    assert LIMIT < len(delivered) <= LIMIT + CHUNK
    outcome = _outcome(h, rid, key)
    assert outcome["status"] == 502 and outcome["error_code"] == "upstream_answer_too_large"
    assert outcome["output_hash"] == h.gateway.recorder.keyed_hash("demo", delivered.encode())


def test_a_responses_stream_past_the_limit_ends_with_an_error_event(
    gateways: Callable[..., Harness],
) -> None:
    h = gateways(small_limit, chunk_chars=CHUNK, echo_chars=2 * LIMIT)
    key = h.key()
    client = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
    with client.responses.with_streaming_response.create(
        model="gpt-4o", input=LONG_PROMPT, stream=True
    ) as raw:
        rid = raw.headers["x-sekisho-request-id"]
        events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[-1] == "error" and "response.completed" not in kinds
    assert events[-1].code == "upstream_answer_too_large"
    delivered = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert LIMIT < len(delivered) <= LIMIT + CHUNK
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


def test_a_fast_stream_lets_the_event_loop_serve_others_every_few_events(
    gateways: Callable[..., Harness],
) -> None:
    """The upstream client hands the relay up to 256 KiB of events at once, and sending waits
    only when the client's connection is full: a fast stream relayed them all before anything
    else on the event loop ran (50 such streams made a /healthz take 5.4 s). Now the stream
    gives way every ``YIELD_EVERY`` events. Counted here directly: a task beside the stream
    notes how many events went out between two of its turns."""
    from sekisho import app

    h = gateways(no_output_rule)
    event = {
        "id": "chatcmpl-fast",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": "lorem ipsum dolor sit amet "}}],
    }
    sse = ("data: " + json.dumps(event) + "\n\n") * 5000 + "data: [DONE]\n\n"
    for name in h.sims:
        h.fault(name, mode="sse", body=sse)  # 880 KB, sent at once
    body = json.dumps(
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "速く"}]}
    ).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "query_string": b"",
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"authorization", b"Bearer " + h.key().encode()),
            (b"content-type", b"application/json"),
        ],
    }

    async def run() -> tuple[int, list[int]]:
        sent: list[bytes] = []
        between: list[int] = []  # events sent between two turns of the other task
        request = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if request:
                return request.pop()
            await asyncio.Event().wait()  # the client stays
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            if message.get("body"):
                sent.append(message["body"])

        done = False

        async def other() -> None:
            seen = 0
            while not done:
                await asyncio.sleep(0)
                between.append(len(sent) - seen)
                seen = len(sent)

        beside = asyncio.create_task(other())
        await h.gateway(scope, receive, send)
        done = True
        await beside
        return len(sent), between

    count, between = h.call(run())
    assert count > 5000  # every event, then [DONE]
    assert max(between) <= app.YIELD_EVERY + 1, max(between)
