"""Answers an endpoint should not have given: a shape the OpenAI clients cannot parse and
output inspection cannot read, a stream that begins with garbage or an error, token counts
that cannot be true. None is passed on; where nothing has reached the client yet, another
endpoint answers; every request keeps its outcome entry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from harness import (
    Harness,
    ledger_entries,
    ledger_incomplete,
    receipt,
    request,
    start_example,
)

GOOD, BAD = "sim-global-useast", "sim-global-japaneast"


@pytest.fixture
def two(tmp_path: Path) -> Any:
    """gpt-4o from the two global endpoints only (Tokyo serves chat-default alone)."""

    def only_global(raw: dict[str, Any]) -> None:
        raw["endpoints"][0]["models"][0]["aliases"] = ["chat-default"]

    h = start_example(tmp_path, only_global)
    yield h
    h.stop()


def answer(**message: Any) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", **message},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )  # fmt: skip


MALFORMED = {
    "content a number": answer(content=5),
    "content an object": answer(content={"a": 1}),
    "content a list of parts": answer(content=[{"type": "text", "text": "x"}]),
    "tool_calls not a list": answer(content=None, tool_calls="bad"),
    "arguments an object": answer(
        content=None,
        tool_calls=[{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}],
    ),
    "message null": json.dumps({"object": "chat.completion", "choices": [{"message": None}]}),
    "a choice that is a number": json.dumps({"object": "chat.completion", "choices": [5]}),
}


def chat(h: Harness, stream: bool = False) -> Any:
    c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    return c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello"}], stream=stream
    )


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_an_answer_clients_cannot_parse_is_not_passed_on_and_another_endpoint_answers(
    two: Harness, case: str
) -> None:
    two.fault(BAD, mode="body", body=MALFORMED[case])
    for _ in range(8):  # whichever the weighted choice tries first, the good one answers
        raw = chat(two)
        assert raw.headers["x-sekisho-endpoint"] == GOOD
        assert isinstance(raw.parse().choices[0].message.content, str)
    state = two.gateway.health.snapshot()[BAD]  # type: ignore[union-attr]
    assert "answered with" in str(state["last_error"]) or state["consecutive_failures"] == 0
    two.fault(GOOD, mode="body", body=MALFORMED[case])  # now neither can answer
    two.gateway.health.success(BAD)  # type: ignore[union-attr]
    with pytest.raises(openai.InternalServerError) as e:
        chat(two)
    assert e.value.status_code == 502 and "answered with" in e.value.message


def sse(*events: Any) -> str:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)


def delta(**d: Any) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d}]}


FIRST_EVENTS = {
    "garbage": sse("not json at all", "[DONE]"),
    "an error event": sse({"error": {"message": "model overloaded"}}, "[DONE]"),
    "only [DONE]": sse("[DONE]"),
    "a delta content that is a number": sse(delta(content=5), "[DONE]"),
    # vLLM's older error shape, and an event with no choices at all: not a chat event
    "an error object without choices": sse(
        {"object": "error", "message": "overloaded", "type": "InternalServerError"}, "[DONE]"
    ),
    "choices that are not a list": sse(
        {"object": "chat.completion.chunk", "choices": {"index": 0}}, "[DONE]"
    ),
}


@pytest.mark.parametrize("case", sorted(FIRST_EVENTS))
def test_a_stream_whose_first_event_is_unusable_fails_over(two: Harness, case: str) -> None:
    """Nothing has reached the client when the first event is garbage or an error: another
    endpoint answers (the audit saw a 200 with an error event instead)."""
    two.fault(BAD, mode="sse", body=FIRST_EVENTS[case])
    for _ in range(8):
        raw = chat(two, stream=True)
        assert raw.headers["x-sekisho-endpoint"] == GOOD
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        assert text
    assert ledger_incomplete(two) == []


def test_a_tool_call_delta_that_names_its_function_before_its_arguments_streams_through(
    two: Harness,
) -> None:
    """`"arguments": null` in the first tool-call delta is valid (the SDKs type it Optional):
    a review found it cut as malformed."""
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": None}}  # fmt: skip
    more = {"index": 0, "function": {"arguments": '{"city":"Tokyo"}'}}
    events = sse(delta(role="assistant", tool_calls=[call]), delta(tool_calls=[more]), "[DONE]")
    for name in (GOOD, BAD):
        two.fault(name, mode="sse", body=events)
    raw = chat(two, stream=True)
    chunks = [c for c in raw.parse() if c.choices]
    args = "".join(
        tc.function.arguments or ""
        for c in chunks
        for tc in c.choices[0].delta.tool_calls or ()
        if tc.function is not None
    )
    assert args == '{"city":"Tokyo"}'


def test_a_stream_that_turns_malformed_midway_ends_with_an_error_event(two: Harness) -> None:
    events = sse(delta(role="assistant", content="Hello"), delta(content={"x": 1}), "[DONE]")
    two.fault(BAD, mode="sse", body=events)
    two.fault(GOOD, mode="sse", body=events)
    with pytest.raises(openai.APIError) as e:
        for _ in openai.OpenAI(base_url=two.base_url, api_key=two.key(), max_retries=0).chat.\
                completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                   stream=True):  # fmt: skip
            pass
    assert "delta.content that is not a string" in str(e.value)


@pytest.mark.parametrize("stream", [False, True])
def test_token_counts_that_cannot_be_true_are_estimated_not_a_500(
    two: Harness, stream: bool
) -> None:
    """An endpoint reporting -5 prompt tokens (or 10^12) made a 500 (Prometheus counters
    refuse to go down) and lost the answer's record and outcome."""
    usage = {"prompt_tokens": -5, "completion_tokens": 10**12, "total_tokens": 1}
    body = (
        sse(delta(role="assistant", content="hi"),
            {"object": "chat.completion.chunk", "choices": [], "usage": usage}, "[DONE]")
        if stream
        else json.dumps({**json.loads(answer(content="hi")), "usage": usage})
    )  # fmt: skip
    for name in (GOOD, BAD):
        two.fault(name, mode="sse" if stream else "body", body=body)
    raw = chat(two, stream=stream)
    assert raw.http_response.status_code == 200
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == "hi"
    else:
        assert raw.parse().choices[0].message.content == "hi"
    assert ledger_incomplete(two) == []
    metrics = request("GET", two.root + "/metrics").text
    assert "sekisho_tokens_total" in metrics


CARD = "4111 1111 1111 1111"


def test_text_a_stream_keeps_where_this_api_keeps_none_never_reaches_the_client(
    two: Harness,
) -> None:
    """A chat stream whose choice carried a whole `message` or a `text` was relayed byte for
    byte, past the output rule (the audit's card number arrived unmasked)."""
    for stray in ({"message": {"role": "assistant", "content": f"card {CARD}"}},
                  {"text": f"card {CARD}"}):  # fmt: skip
        chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, **stray}]}
        events = sse(delta(role="assistant", content="Hello"), chunk, "[DONE]")
        two.fault(BAD, mode="sse", body=events)
        two.fault(GOOD, mode="sse", body=events)
        got = ""
        with pytest.raises(openai.APIError) as e:
            for c in openai.OpenAI(base_url=two.base_url, api_key=two.key(), max_retries=0).\
                    chat.completions.create(model="gpt-4o", messages=[{"role": "user",
                    "content": "x"}], stream=True):  # fmt: skip
                got += c.model_dump_json()
        assert "where a chat answer has none" in str(e.value)
        assert "4111" not in got


def test_a_chat_shaped_stream_on_the_completions_api_is_not_relayed(tmp_path: Path) -> None:
    def legacy_too(raw: dict[str, Any]) -> None:
        raw["endpoints"][0]["models"][0]["aliases"] = ["chat-default"]
        for ep in raw["endpoints"]:
            ep["completions_api"] = True

    two = start_example(tmp_path, legacy_too)
    try:
        _chat_shaped_legacy_stream(two)
    finally:
        two.stop()


def _chat_shaped_legacy_stream(two: Harness) -> None:
    events = sse(delta(role="assistant", content=f"my card is {CARD}"), "[DONE]")
    two.fault(BAD, mode="sse", body=events)
    two.fault(GOOD, mode="sse", body=events)
    c = openai.OpenAI(base_url=two.base_url, api_key=two.key(), max_retries=0)
    with pytest.raises(openai.InternalServerError) as e:
        c.completions.create(model="gpt-4o", prompt="x", stream=True)
    assert "carries 'delta'" in e.value.message and "4111" not in e.value.message


def test_an_error_event_midway_ends_the_stream_as_broken_with_the_reason_masked(
    two: Harness,
) -> None:
    """The endpoint's error event was relayed and the stream went on to [DONE], recorded as a
    success (or, when the SDK stopped reading at the error, as the client's disconnect); its
    message reached the client unmasked."""
    broken = {"error": {"message": f"overloaded while echoing {CARD}", "type": "server_error"}}
    events = sse(delta(role="assistant", content="Hello"), broken, delta(content=" more"),
                 "[DONE]")  # fmt: skip
    two.fault(BAD, mode="sse", body=events)
    two.fault(GOOD, mode="sse", body=events)
    key = two.key()
    raw = openai.OpenAI(base_url=two.base_url, api_key=key, max_retries=0).chat.completions.\
        with_raw_response.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                 stream=True)  # fmt: skip
    got = ""
    with pytest.raises(openai.APIError) as e:
        for c in raw.parse():
            got += "".join(ch.delta.content or "" for ch in c.choices)
    assert "more" not in got  # nothing after the error event (the output rule may hold "Hello")
    message = str(e.value)
    assert "stream error event: overloaded while echoing [CREDIT_CARD]" in message
    assert "4111" not in message
    rid = raw.headers["x-sekisho-request-id"]
    _, outcome = ledger_entries(receipt(two, rid, key).json())
    assert outcome is not None and outcome["status"] == 502
    assert outcome["error_code"] == "upstream_stream_broken"


def test_an_endpoints_rejection_reaches_the_client_with_what_it_echoed_masked(
    two: Harness,
) -> None:
    """vLLM and others echo the request in a 400; that text is no answer the output rule saw."""
    body = json.dumps({"error": {"message": f"bad value '{CARD}' for user",
                                 "type": "invalid_request_error", "param": "user"}})  # fmt: skip
    for name in (GOOD, BAD):
        two.fault(name, mode="status", status=400, body=body)
    with pytest.raises(openai.BadRequestError) as e:
        chat(two)
    assert "bad value '[CREDIT_CARD]' for user" in e.value.message
    assert "4111" not in e.value.message and e.value.param == "user"


def test_an_event_whose_data_spans_several_lines_is_one_event(two: Harness) -> None:
    """SSE joins an event's data: lines with newlines, as the OpenAI SDKs do; each such event
    was read as garbage (502, the endpoint marked down). The client gets each as one line."""
    first = json.dumps(delta(role="assistant", content="Hel"), indent=1)
    second = json.dumps(delta(content="lo"), indent=1)
    body = (
        "".join(
            "".join(f"data: {line}\n" for line in event.splitlines()) + "\n"
            for event in (first, second)
        )
        + "data: [DONE]\n\n"
    )
    for name in (GOOD, BAD):
        two.fault(name, mode="sse", body=body)
    c = openai.OpenAI(base_url=two.base_url, api_key=two.key(), max_retries=0)
    with c.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello"}], stream=True
    ) as raw:
        assert raw.http_response.status_code == 200
        lines = [line for line in raw.iter_lines() if line]
    # What the client reads is SSE of its own: each event one data: line of JSON.
    assert all(line.startswith("data: ") for line in lines), lines
    events = [json.loads(line[6:]) for line in lines if line != "data: [DONE]"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "Hello"
    assert ledger_incomplete(two) == []


@pytest.mark.parametrize("end", ["\r\n", "\r"], ids=["CRLF", "CR"])
def test_a_stream_with_any_of_sses_line_ends_is_relayed(two: Harness, end: str) -> None:
    """SSE ends a line with CRLF, LF or a lone CR, and the OpenAI SDKs read all three: a
    stream whose lines ended in CR alone was one endless line to sekisho, every endpoint
    sending one was marked down, and the client got a 502."""
    events = sse(delta(role="assistant", content="Hel"), delta(content="lo"), "[DONE]")
    for name in (GOOD, BAD):
        two.fault(name, mode="sse", body=events.replace("\n", end))
    raw = chat(two, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == "Hello"
    snapshot = two.gateway.health.snapshot()  # type: ignore[union-attr]
    assert all(snapshot[name]["consecutive_failures"] == 0 for name in (GOOD, BAD))
    assert ledger_incomplete(two) == []


def test_a_stream_that_begins_with_a_byte_order_mark_keeps_its_first_event(
    two: Harness,
) -> None:
    """SSE lets a stream begin with a UTF-8 byte order mark: its first line was not read as a
    data: line, and the answer reached the client without its first event, recorded as whole."""
    events = sse(delta(role="assistant", content="Hel"), delta(content="lo"), "[DONE]")
    for name in (GOOD, BAD):
        two.fault(name, mode="sse", body="\ufeff" + events)
    raw = chat(two, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == "Hello"


# -- the Responses API ---------------------------------------------------------------------------


def response(*output: Any) -> dict[str, Any]:
    return {
        "id": "resp_x",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "gpt-4o",
        "output": list(output),
        "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
    }


def message(content: Any) -> dict[str, Any]:
    return {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": content}  # fmt: skip


MALFORMED_RESPONSES = {
    # the shape chat answers have: it reached the client unmasked, streamed or not
    "content a string": response(message(f"my card is {CARD}")),
    # 'int' object is not iterable: sekisho's own 500
    "content a number": response(message(5)),
    "content a boolean": response(message(True)),
    "a part that is a string": response(message([f"card {CARD}"])),
    "a part whose text is a list": response(message([{"type": "output_text", "text": [CARD]}])),
    # unhashable type: a 500 and an error-level traceback
    "an item whose type is a list": response({"type": ["message"], "content": []}),
    "an item that is a string": response(f"card {CARD}"),
    "reasoning summary a string": response({"type": "reasoning", "summary": f"card {CARD}"}),
    "arguments an object": response(
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": {"card": CARD}}
    ),
}


def responses(h: Harness, stream: bool = False) -> Any:
    c = openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)
    return c.responses.with_raw_response.create(model="gpt-4o", input="hello", stream=stream)


@pytest.mark.parametrize("case", sorted(MALFORMED_RESPONSES))
def test_a_responses_answer_inspection_cannot_read_is_a_502_and_another_endpoint_answers(
    two: Harness, case: str
) -> None:
    two.fault(BAD, mode="body", body=json.dumps(MALFORMED_RESPONSES[case]))
    for _ in range(6):  # whichever the weighted choice tries first, the good one answers
        raw = responses(two)
        assert raw.headers["x-sekisho-endpoint"] == GOOD
        assert raw.parse().output_text
    two.fault(GOOD, mode="body", body=json.dumps(MALFORMED_RESPONSES[case]))
    two.gateway.health.success(BAD)  # type: ignore[union-attr]
    with pytest.raises(openai.InternalServerError) as e:
        responses(two)
    assert e.value.status_code == 502 and "answered with" in e.value.message, e.value.message
    assert "4111" not in e.value.message
    assert ledger_incomplete(two) == []


def rsse(*events: dict[str, Any]) -> str:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


def created(output: Any = None) -> dict[str, Any]:
    r = {**response(), "status": "in_progress", "output": [] if output is None else output}
    return {"type": "response.created", "sequence_number": 0, "response": r}


@pytest.mark.parametrize("output", [5, "x", {"a": 1}, [5]])
def test_a_responses_stream_whose_first_event_is_unreadable_fails_over(
    two: Harness, output: Any
) -> None:
    """response.output a scalar in response.created ended the stream with internal_error."""
    two.fault(BAD, mode="sse", body=rsse(created(output)))
    for _ in range(6):
        raw = responses(two, stream=True)
        assert raw.headers["x-sekisho-endpoint"] == GOOD
        assert [e.type for e in raw.parse()][-1] == "response.completed"


def test_a_responses_stream_whose_first_event_has_no_type_fails_over(two: Harness) -> None:
    """An event the relay refuses (no type) was let through as the first: the stream began
    and broke at once, where another endpoint could still have answered."""
    two.fault(BAD, mode="sse", body='data: {"message": "overloaded"}\n\n')
    for _ in range(6):
        raw = responses(two, stream=True)
        assert raw.headers["x-sekisho-endpoint"] == GOOD
        assert [e.type for e in raw.parse()][-1] == "response.completed"
    assert ledger_incomplete(two) == []


MIDWAY = {
    "the item's content a string": {
        "type": "response.output_item.done", "sequence_number": 1, "output_index": 0,
        "item": message(f"my card is {CARD}"),
    },
    "the item's content a number": {
        "type": "response.output_item.done", "sequence_number": 1, "output_index": 0,
        "item": message(5),
    },
    "the item's type a list": {
        "type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
        "item": {"type": ["message"], "content": []},
    },
    "a part that is a string": {
        "type": "response.content_part.done", "sequence_number": 1, "output_index": 0,
        "content_index": 0, "part": f"card {CARD}",
    },
    "a delta that is a list": {
        "type": "response.output_text.delta", "sequence_number": 1, "output_index": 0,
        "content_index": 0, "delta": [f"card {CARD}"],
    },
    "the final output a scalar": {
        "type": "response.completed", "sequence_number": 1,
        "response": {**response(), "output": 5},
    },
    "the final output's message content a string": {
        "type": "response.completed", "sequence_number": 1,
        "response": response(message(f"my card is {CARD}")),
    },
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MIDWAY))
def test_a_responses_stream_that_turns_unreadable_midway_ends_as_broken(
    two: Harness, case: str
) -> None:
    """Such an event reached the client unmasked, or ended the stream with sekisho's own
    internal_error; it ends the stream as the endpoint's fault, and nothing of it arrives."""
    body = rsse(created(), MIDWAY[case])
    two.fault(BAD, mode="sse", body=body)
    two.fault(GOOD, mode="sse", body=body)
    key = two.key()
    raw = openai.OpenAI(base_url=two.base_url, api_key=key, max_retries=0).responses.\
        with_raw_response.create(model="gpt-4o", input="hello", stream=True)  # fmt: skip
    events = [e.model_dump() for e in raw.parse()]
    assert "4111" not in json.dumps(events)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "upstream_stream_broken"
    assert "stream event with" in events[-1]["message"]
    _, outcome = ledger_entries(receipt(two, raw.headers["x-sekisho-request-id"], key).json())
    assert outcome is not None and outcome["error_code"] == "upstream_stream_broken"
    state = two.gateway.health.snapshot()[raw.headers["x-sekisho-endpoint"]]  # type: ignore[union-attr]
    assert "stream event with" in str(state["last_error"])
