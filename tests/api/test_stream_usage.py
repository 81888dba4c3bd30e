"""A streamed answer costs tokens whether or not its client asked to see the count: sekisho
asks the endpoint for it, charges it to token limits and the ledger, and gives the client only
what it asked for. An endpoint that reports no usage is charged an estimate."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from harness import Harness, ledger_entries, receipt, start_example
from sekisho.pipeline import estimate_tokens

PROMPT = "word " * 200


def tokens_per_minute(limit: int) -> Any:
    def mutate(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["limits"] = {"tokens_per_minute": limit}

    return mutate


def stream(h: Harness, key: str, **kw: Any) -> tuple[list[Any], str]:
    c = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
    with c.chat.completions.with_streaming_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=16,
        stream=True,
        **kw,
    ) as resp:
        chunks = list(resp.parse())
        return chunks, resp.headers["x-sekisho-request-id"]


def test_streams_without_include_usage_still_count_against_token_limits(tmp_path: Path) -> None:
    h = start_example(tmp_path, tokens_per_minute(1000))
    try:
        key = h.key()
        served = 0
        with pytest.raises(openai.RateLimitError) as err:
            for _ in range(20):
                chunks, _ = stream(h, key)
                served += 1
                # The client did not ask for usage: it gets none, in the SDK's terms.
                assert all(ch.choices and ch.usage is None for ch in chunks)
        assert 2 <= served < 20  # before, streams were charged nothing and never refused
        assert "tokens_per_minute (1000)" in err.value.response.json()["error"]["message"]
        sent = [orjson.loads(b) for s in h.sims.values() for b in s.stats.bodies]
        assert sent and all(b["stream_options"] == {"include_usage": True} for b in sent)
    finally:
        h.stop()


def test_a_client_that_asks_for_usage_gets_it_once_at_the_end(gateway: Harness) -> None:
    chunks, _ = stream(gateway, gateway.key(), stream_options={"include_usage": True})
    usage = [ch for ch in chunks if ch.usage is not None]
    assert len(usage) == 1 and usage[0] is chunks[-1] and usage[0].choices == []
    assert usage[0].usage.prompt_tokens > 0 and usage[0].usage.completion_tokens > 0


def no_stream_usage(raw: dict[str, Any]) -> None:
    for ep in raw["endpoints"]:
        ep["stream_usage"] = False  # e.g. a server that rejects stream_options


def test_an_endpoint_that_reports_no_usage_is_charged_an_estimate(tmp_path: Path) -> None:
    h = start_example(tmp_path, no_stream_usage)
    try:
        key = h.key()
        chunks, rid = stream(h, key)
        assert all(ch.usage is None for ch in chunks)
        for sim in h.sims.values():
            for body in sim.stats.bodies:
                assert "stream_options" not in orjson.loads(body)
        deadline = time.monotonic() + 5
        while True:
            got = receipt(h, rid, key)
            _, outcome = ledger_entries(got.json())
            if outcome is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert outcome is not None
        assert outcome["usage_estimated"] is True
        assert outcome["prompt_tokens"] >= estimate_tokens([PROMPT]) > 0
        assert outcome["completion_tokens"] > 0
        # A client that asks for usage, of an endpoint that sends none even when asked, gets
        # the estimate where it waits for usage: the last chunk, with no choices (it got no
        # usage at all, though it had asked).
        events = [
            {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1,
             "model": "m-upstream", "choices": [{"index": 0, "delta": {"content": t}}]}
            for t in ("Hello", " there")
        ]  # fmt: skip
        sse = "".join(f"data: {orjson.dumps(e).decode()}\n\n" for e in events)
        for name in h.sims:
            h.fault(name, mode="sse", body=sse + "data: [DONE]\n\n")
        chunks, _ = stream(h, key, stream_options={"include_usage": True})
        usage = [ch for ch in chunks if ch.usage is not None]
        assert len(usage) == 1 and usage[0] is chunks[-1] and usage[0].choices == []
        assert usage[0].usage.prompt_tokens >= estimate_tokens([PROMPT])
        assert usage[0].usage.total_tokens == (
            usage[0].usage.prompt_tokens + usage[0].usage.completion_tokens
        )
        assert usage[0].id == chunks[0].id and usage[0].model == chunks[0].model
    finally:
        h.stop()


def test_the_estimate_counts_japanese_by_the_character_and_english_by_the_word() -> None:
    assert estimate_tokens([]) == 0
    assert estimate_tokens(["abcd" * 25]) == 25  # 100 ASCII characters: 25 tokens
    assert estimate_tokens(["山田太郎様への返信"]) == 9
    assert estimate_tokens(["abc", "東京"]) == 1 + 2


def test_an_older_server_that_refuses_stream_options_is_asked_no_more_and_charged_an_estimate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Upgrading sekisho must not break streaming to a server that predates stream_options:
    its 400 to the parameter sekisho added is retried at once without it."""
    h = start_example(tmp_path, rejects_stream_options=True)
    try:
        key = h.key()
        for _ in range(3):
            chunks, rid = stream(h, key)
            assert chunks and all(ch.usage is None for ch in chunks)
        _, outcome = ledger_entries(receipt(h, rid, key).json())
        assert outcome is not None and outcome["usage_estimated"] is True
        assert caplog.text.count("endpoint refuses stream_options") <= len(h.sims)  # once each
        # A client that asks for stream_options itself still gets the server's own answer.
        with pytest.raises(openai.BadRequestError, match="stream_options"):
            stream(h, key, stream_options={"include_usage": True})
    finally:
        h.stop()


def streamed_text(c: openai.OpenAI, api: str, prompt: str, leave_at: int = 0) -> tuple[str, str]:
    """The answer's text a client of ``api`` reads (all of it, or until it has ``leave_at``
    characters and goes away), and the request's id."""
    text = ""
    if api == "chat":
        messages: Any = [{"role": "user", "content": prompt}]
        with c.chat.completions.with_streaming_response.create(
            model="chat-default", messages=messages, stream=True
        ) as resp:
            for ch in resp.parse():
                text += (ch.choices[0].delta.content or "") if ch.choices else ""
                if leave_at and len(text) >= leave_at:
                    break
            return text, resp.headers["x-sekisho-request-id"]
    with c.responses.with_streaming_response.create(
        model="chat-default", input=prompt, stream=True
    ) as raw:
        for event in raw.parse():
            text += event.delta if event.type == "response.output_text.delta" else ""
            if leave_at and len(text) >= leave_at:
                break
        return text, raw.headers["x-sekisho-request-id"]


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_client_leaving_a_masked_stream_is_charged_what_the_endpoint_sent(
    tmp_path: Path, api: str
) -> None:
    """The demo tenant's output rule (mask) holds back the last 256 characters of a stream's
    text until it can inspect them. A client that left mid-stream was charged (ledger, usage,
    token limits) only for the text it had been sent: what the endpoint had generated and
    sekisho held back was free. It is charged what the endpoint sent."""
    h = start_example(tmp_path, chunk_chars=8, chunk_delay_ms=5, echo_chars=4000)
    try:
        prompt = "plain words " * 300  # chat-default: one endpoint, the same answer each time
        c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
        full, _ = streamed_text(c, api, prompt)
        assert len(full) > 3000
        key = h.key()
        c = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
        read, rid = streamed_text(c, api, prompt, leave_at=800)  # gone mid-answer
        gw: Any = h.gateway
        deadline = time.monotonic() + 5
        while gw.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        _, outcome = ledger_entries(receipt(h, rid, key).json())
        assert outcome is not None and outcome["status"] == 499
        # What sekisho had sent it (the outcome's output hash is over exactly that): a prefix
        # of the answer, at least what the client read.
        sent = next(
            full[:n]
            for n in range(len(read), len(full) + 1)
            if gw.recorder.keyed_hash("demo", full[:n].encode()) == outcome["output_hash"]
        )
        assert outcome["usage_estimated"] is True
        # The endpoint had sent that and the 256 characters held back for inspection.
        charged = outcome["completion_tokens"]
        assert estimate_tokens([full[: len(sent) + 256]]) <= charged <= estimate_tokens([full])
        # Usage (chargeback, token budgets) counts the same.
        limiter = gw.limiter
        day = date.fromisoformat(limiter.today())
        [row] = h.call(limiter.usage.query(day, day, key_ids={key.split("-")[2]}))
        assert (row.requests, row.completion_tokens) == (1, charged)
    finally:
        h.stop()


def test_a_stream_its_output_rule_cut_is_charged_the_whole_answer_the_endpoint_sent(
    tmp_path: Path,
) -> None:
    """An endpoint without usage streams an answer that the tenant's output rule (cut) ends at
    a card number: the client gets the text before it, but the endpoint generated all of it,
    and the estimate is of all of it (it was of the text delivered)."""

    def cut_cards(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["detection"]["output"] = {"action": "cut", "types": ["CREDIT_CARD"]}

    h = start_example(tmp_path, cut_cards)
    try:
        pieces = ["Before the number. " * 20, "card 4111 1111 1111 1111 ", "and after it. " * 40]
        events = [
            {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1,
             "model": "m-upstream", "choices": [{"index": 0, "delta": {"content": t}}]}
            for t in pieces
        ]  # fmt: skip
        sse = "".join(f"data: {orjson.dumps(e).decode()}\n\n" for e in events)
        for name in h.sims:
            h.fault(name, mode="sse", body=sse + "data: [DONE]\n\n")
        key = h.key()
        chunks, rid = stream(h, key)
        delivered = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert "4111" not in delivered and "after it" not in delivered
        _, outcome = ledger_entries(receipt(h, rid, key).json())
        assert outcome is not None and outcome["error_code"] == "output_cut"
        assert outcome["usage_estimated"] is True
        assert outcome["completion_tokens"] == estimate_tokens(["".join(pieces)])
    finally:
        h.stop()
