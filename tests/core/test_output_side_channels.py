"""Step 7 (output inspection) reaches every field of an answer that spells its text: a refusal,
and token logprobs. The example's demo tenant masks credit card numbers in answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest

from harness import Harness

CARD = "4111 1111 1111 1111"
TOKENS = ["Card", ":", " 4111", " 1111", " 1111", " 1111"]
CLEAN = ["All", " clear", "."]


def token_logprobs(tokens: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "token": t,
            "logprob": -0.1,
            "bytes": list(t.encode()),
            "top_logprobs": [{"token": t, "logprob": -0.1, "bytes": list(t.encode())}],
        }
        for t in tokens
    ]


def chat_answer(
    content: str | None, logprobs: Any = None, refusal: str | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if refusal is not None:
        message["refusal"] = refusal
    return {
        "id": "chatcmpl-sim",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9},
    }


def answering(h: Harness, body: str, mode: str = "body") -> None:
    for name in h.sims:
        h.fault(name, mode=mode, body=body)


def client(h: Harness) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)


ASK: Any = [{"role": "user", "content": "card?"}]


def test_logprobs_of_a_masked_answer_are_removed_with_the_text_they_spell(
    gateways: Callable[..., Harness],
) -> None:
    h = gateways()
    lp = {"content": token_logprobs(TOKENS), "refusal": None}
    answering(h, json.dumps(chat_answer("".join(TOKENS), lp)))
    raw = client(h).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=ASK, logprobs=True, top_logprobs=1
    )
    choice = raw.parse().choices[0]
    assert raw.headers["x-sekisho-output"] == "masked"
    assert CARD not in (choice.message.content or "")
    assert choice.logprobs is None
    assert CARD.split()[1] not in raw.http_response.text  # no token of the number at all

    # An answer the rule leaves alone keeps its logprobs.
    lp = {"content": token_logprobs(CLEAN), "refusal": None}
    answering(h, json.dumps(chat_answer("".join(CLEAN), lp)))
    choice = client(h).chat.completions.create(model="gpt-4o", messages=ASK, logprobs=True)
    assert choice.choices[0].logprobs is not None
    assert choice.choices[0].logprobs.content is not None
    assert "".join(t.token for t in choice.choices[0].logprobs.content) == "All clear."


def test_a_refusal_gets_what_the_answer_gets(gateways: Callable[..., Harness]) -> None:
    h = gateways()
    answering(h, json.dumps(chat_answer(None, refusal=f"I won't repeat the card {CARD}")))
    raw = client(h).chat.completions.with_raw_response.create(model="gpt-4o", messages=ASK)
    refusal = raw.parse().choices[0].message.refusal
    assert raw.headers["x-sekisho-output"] == "masked"
    assert refusal is not None and refusal.startswith("I won't repeat the card")
    assert CARD not in refusal and CARD not in raw.http_response.text


def chunk(delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> str:
    event = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }
    return f"data: {json.dumps(event)}\n\n"


def test_a_streamed_answer_carries_no_logprobs_and_its_refusal_is_masked(
    gateways: Callable[..., Harness],
) -> None:
    """In a stream, text is released only after a look-behind and may still be masked: token
    logprobs, which would spell it at once, are withheld; a streamed refusal is inspected."""
    h = gateways()
    sse = chunk({"role": "assistant", "content": ""})
    for t in TOKENS:
        sse += chunk({"content": t}, {"content": token_logprobs([t]), "refusal": None})
    sse += chunk({"refusal": f"no: {CARD}"})
    sse += chunk({}, finish="stop") + "data: [DONE]\n\n"
    answering(h, sse, mode="sse")
    with client(h).chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=ASK, stream=True, logprobs=True
    ) as raw:
        chunks = [c for c in raw.parse() if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    refusal = "".join(c.choices[0].delta.refusal or "" for c in chunks)
    assert content.startswith("Card:") and CARD not in content
    assert refusal.startswith("no: ") and CARD not in refusal
    assert all(c.choices[0].logprobs is None for c in chunks)


def responses_answer(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
    return {
        "id": "resp_sim",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "m",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [part],
            }
        ],
        "usage": {"input_tokens": 3, "output_tokens": 6, "total_tokens": 9},
    }


@pytest.mark.parametrize(("tokens", "kept"), [(TOKENS, False), (CLEAN, True)])
def test_responses_output_text_logprobs_go_with_a_masked_text(
    gateways: Callable[..., Harness], tokens: list[str], kept: bool
) -> None:
    h = gateways()
    lp = [{k: v for k, v in t.items() if k != "bytes"} for t in token_logprobs(tokens)]
    answering(h, json.dumps(responses_answer("".join(tokens), lp)))
    raw = client(h).responses.with_raw_response.create(
        model="gpt-4o", input="card?", include=["message.output_text.logprobs"]
    )
    part: Any = raw.parse().output[0].content[0]  # type: ignore[union-attr]
    assert CARD not in part.text
    assert bool(part.logprobs) is kept
    if kept:
        assert "".join(t.token for t in part.logprobs) == part.text


def test_a_responses_stream_carries_no_logprobs(gateways: Callable[..., Harness]) -> None:
    h = gateways()
    events: list[dict[str, Any]] = []
    item = {"type": "message", "id": "msg_1", "role": "assistant", "content": []}
    events.append({"type": "response.output_item.added", "output_index": 0, "item": item})
    for t in TOKENS:
        events.append(
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": t,
                "logprobs": [{"token": t, "logprob": -0.1, "top_logprobs": []}],
            }
        )
    final = responses_answer("".join(TOKENS), [{"token": t, "logprob": -0.1} for t in TOKENS])
    events.append({"type": "response.completed", "response": final})
    for n, e in enumerate(events):
        e["sequence_number"] = n
    sse = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
    answering(h, sse, mode="sse")
    with client(h).responses.with_streaming_response.create(
        model="gpt-4o", input="card?", stream=True, include=["message.output_text.logprobs"]
    ) as raw:
        text = raw.http_response.read().decode()
    assert CARD not in text and "4111" not in text
    assert '"logprobs":[{' not in text.replace(" ", "")


def streamed(h: Harness, sse: str) -> tuple[str, list[dict[str, Any]]]:
    """The body the client gets when every endpoint streams ``sse``, and its events."""
    answering(h, sse, mode="sse")
    with client(h).chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=ASK, stream=True
    ) as raw:
        body = raw.http_response.read().decode()
    return body, [json.loads(x[6:]) for x in body.split("\n\n") if x.startswith("data: {")]


def test_a_custom_tool_calls_input_gets_what_the_answer_gets(
    gateways: Callable[..., Harness],
) -> None:
    """GPT-5's custom tools take free text, not JSON: what the model writes there reaches the
    client's tool, so it is masked like the answer (whole answers and streams)."""
    h = gateways()
    answer = chat_answer(None)
    call = {"id": "call_1", "type": "custom", "custom": {"name": "note", "input": f"pay {CARD}"}}
    answer["choices"][0]["message"]["tool_calls"] = [call]
    answering(h, json.dumps(answer))
    raw = client(h).chat.completions.with_raw_response.create(model="gpt-4o", messages=ASK)
    assert raw.headers["x-sekisho-output"] == "masked"
    assert CARD not in raw.http_response.text and "pay [CREDIT_CARD]" in raw.http_response.text

    sse = chunk({"role": "assistant", "content": None})
    for piece in ("pay 4111 11", "11 1111 ", "1111 now"):
        sse += chunk({"tool_calls": [{"index": 0, "type": "custom",
                                      "custom": {"name": "note", "input": piece}}]})  # fmt: skip
    sse += chunk({}, finish="tool_calls") + "data: [DONE]\n\n"
    body, events = streamed(h, sse)
    text = "".join(
        tc["custom"]["input"]
        for e in events
        for c in e["choices"]
        for tc in c["delta"].get("tool_calls") or ()
        if "custom" in tc
    )
    assert text == "pay [CREDIT_CARD] now" and "4111" not in body


def test_a_streamed_legacy_function_calls_arguments_are_masked(
    gateways: Callable[..., Harness],
) -> None:
    h = gateways()
    sse = chunk({"role": "assistant", "content": None,
                 "function_call": {"name": "pay", "arguments": ""}})  # fmt: skip
    for piece in ('{"card": "4111 11', '11 1111 1111"}'):
        sse += chunk({"function_call": {"arguments": piece}})
    sse += chunk({}, finish="function_call") + "data: [DONE]\n\n"
    body, events = streamed(h, sse)
    args = "".join(
        c["delta"]["function_call"].get("arguments") or ""
        for e in events
        for c in e["choices"]
        if c["delta"].get("function_call")
    )
    assert json.loads(args) == {"card": "[CREDIT_CARD]"} and "4111" not in body
