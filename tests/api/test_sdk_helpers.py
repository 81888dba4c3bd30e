"""The official openai client's higher-level helpers work through sekisho as against OpenAI:
``chat.completions.parse`` and ``stream`` (its events and final completion), parallel tool
calls, refusals, and the Responses API's ``parse`` and ``stream``, sync and async."""

from __future__ import annotations

import logging
import time
from datetime import date

import openai
import pytest
from pydantic import BaseModel, Field

from harness import Harness


class GetWeather(BaseModel):
    city: str
    days: int = Field(ge=1)


class GetTime(BaseModel):
    timezone: str


class Verdict(BaseModel):
    guilty: bool


TOOLS = [
    openai.pydantic_function_tool(GetWeather, name="get_weather"),
    openai.pydantic_function_tool(GetTime, name="get_time"),
]
ASKED = "weather and time in Tokyo"
PARSED = [GetWeather(city=ASKED, days=1), GetTime(timezone=ASKED)]


def client(h: Harness) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)


def test_parallel_tool_calls_stream_through_the_stream_helper(gateway: Harness) -> None:
    """The stream helper takes a tool call as complete when the next one starts: each call's
    arguments arrive whole by then, so ``tool_calls.function.arguments.done`` parses them
    (sekisho held the first call's last pieces back for inspection until the answer's end,
    and the helper raised a ValidationError on '')."""
    c = client(gateway)
    whole = c.chat.completions.parse(model="gpt-4o", messages=[{"role": "user", "content": ASKED}],
                                     tools=TOOLS)  # fmt: skip
    calls = whole.choices[0].message.tool_calls or []
    assert [t.function.parsed_arguments for t in calls] == [
        GetWeather(city=ASKED, days=1),
        GetTime(timezone=ASKED),
    ]
    with c.chat.completions.stream(
        model="gpt-4o", messages=[{"role": "user", "content": ASKED}], tools=TOOLS
    ) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert [(e.index, e.name, e.parsed_arguments) for e in done] == [
        (0, "get_weather", GetWeather(city=ASKED, days=1)),
        (1, "get_time", GetTime(timezone=ASKED)),
    ]
    streamed = final.choices[0].message.tool_calls or []
    assert [(t.id, t.function.arguments) for t in streamed] == [
        (t.id, t.function.arguments) for t in calls
    ]
    assert final.choices[0].finish_reason == "tool_calls"


async def test_parallel_tool_calls_stream_through_the_async_stream_helper(
    gateway: Harness,
) -> None:
    c = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=gateway.key(), max_retries=0)
    async with c.chat.completions.stream(
        model="gpt-4o", messages=[{"role": "user", "content": ASKED}], tools=TOOLS, n=2
    ) as stream:
        done = [e async for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = await stream.get_final_completion()
    assert sorted((e.name, repr(e.parsed_arguments)) for e in done) == sorted(
        [("get_weather", repr(PARSED[0])), ("get_time", repr(PARSED[1]))] * 2
    )
    for choice in final.choices:
        assert [t.function.parsed_arguments for t in choice.message.tool_calls or []] == [
            GetWeather(city=ASKED, days=1),
            GetTime(timezone=ASKED),
        ]
    await c.close()


def test_a_refusal_reaches_the_parse_and_stream_helpers(gateway: Harness) -> None:
    """A model's refusal comes through as one: ``message.refusal`` with nothing parsed, the
    stream helper's ``refusal.delta``/``refusal.done`` events, the Responses API's refusal
    part and ``response.refusal.*`` events."""
    c = client(gateway)
    asked = [{"role": "user", "content": "[sim:refuse] judge him"}]
    r = c.chat.completions.parse(model="gpt-4o", messages=asked, response_format=Verdict)  # type: ignore[arg-type]
    message = r.choices[0].message
    assert message.parsed is None and message.content is None
    assert message.refusal is not None and "I can't help with that" in message.refusal
    with c.chat.completions.stream(
        model="gpt-4o",
        messages=asked,
        response_format=Verdict,  # type: ignore[arg-type]
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_completion()
    assert "refusal.done" in kinds and "content.delta" not in kinds
    assert final.choices[0].message.refusal == message.refusal
    assert final.choices[0].message.parsed is None

    parsed = c.responses.parse(model="gpt-4o", input="[sim:refuse] judge him", text_format=Verdict)
    assert parsed.output_parsed is None
    part = parsed.output[0].content[0]  # type: ignore[union-attr]
    assert part.type == "refusal" and part.refusal == message.refusal
    with c.responses.stream(
        model="gpt-4o", input="[sim:refuse] judge him", text_format=Verdict
    ) as rs:
        events = list(rs)
        final_response = rs.get_final_response()
    assert "".join(e.delta for e in events if e.type == "response.refusal.delta") == part.refusal
    assert final_response.output[0].content[0].refusal == part.refusal  # type: ignore[union-attr]


def test_an_sdk_retry_is_its_own_request_charged_once_and_logged_as_a_retry(
    gateway: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Every endpoint fails once: the SDK gets a 502 with Retry-After, waits and tries again
    (x-stainless-retry-count: 1), and that try is answered. Two requests, each in the log (the
    second saying client_retry 1); the failed one charged no tokens."""
    for eid in gateway.sims:
        gateway.fault(eid, mode="status", status=500, count=1)
    key = gateway.key()
    c = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=2)
    key_id = key.split("-")[2]

    def logged() -> list[logging.LogRecord]:
        lines = [r for r in caplog.records if r.getMessage() == "request"]
        return [r for r in lines if getattr(r, "key_id", None) == key_id]

    with caplog.at_level(logging.INFO, logger="sekisho.app"):
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "try again"}]
        )
        deadline = time.monotonic() + 5
        while len(logged()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # a request's line is written once its answer has gone out
    assert raw.retries_taken == 1
    answer = raw.parse()
    lines = logged()
    assert [(r.status, getattr(r, "error", None), getattr(r, "client_retry", None))  # type: ignore[attr-defined]
            for r in lines] == [(502, "upstream_failed", None), (200, None, 1)]  # fmt: skip
    assert lines[1].request_id == raw.headers["x-sekisho-request-id"]  # type: ignore[attr-defined]
    assert answer.usage is not None
    limiter = gateway.gateway.limiter
    day = date.fromisoformat(limiter.today())
    deadline = time.monotonic() + 5
    while True:  # usage is settled as the answer goes out
        rows = gateway.call(limiter.usage.query(day, day, key_ids={key_id}))
        if (rows and rows[0].requests == 2) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    [row] = rows
    assert row.requests == 2
    assert (row.prompt_tokens, row.completion_tokens) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )


def test_text_before_a_tool_call_is_whole_when_the_call_starts(gateway: Harness) -> None:
    """A model that says something, then calls a tool: the stream helper's ``content.done``
    fires when the call starts, and has the whole text (sekisho held its end back until the
    answer's last chunk, and the event said less than the model had written)."""
    import json

    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, object], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"

    said = "Let me look that up for you in the weather service first. " * 8  # past the look-behind
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": " " + w}) for w in said.split()]
    call = {"index": 0, "id": "call_a", "type": "function"}
    events.append(
        chunk({"tool_calls": [{**call, "function": {"name": "get_time", "arguments": ""}}]})
    )
    events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
               for p in ('{"time', 'zone": "Asia/', 'Tokyo"}')]  # fmt: skip
    events.append(chunk({}, "tool_calls"))
    for eid in gateway.sims:
        gateway.fault(eid, mode="sse", body="".join(events) + "data: [DONE]\n\n", count=1)
    with client(gateway).chat.completions.stream(
        model="gpt-4o", messages=[{"role": "user", "content": "time?"}], tools=TOOLS
    ) as stream:
        done = [
            e for e in stream if e.type in ("content.done", "tool_calls.function.arguments.done")
        ]
    assert [e.type for e in done] == ["content.done", "tool_calls.function.arguments.done"]
    assert done[0].content == " " + " ".join(said.split())  # type: ignore[union-attr]
    assert done[1].parsed_arguments == GetTime(timezone="Asia/Tokyo")  # type: ignore[union-attr]


def test_streamed_logprobs_come_with_the_text_they_spell(gateway: Harness) -> None:
    """A tenant with an output rule holds streamed text back to inspect it: the tokens' logprobs
    come with their text once it is released (every chunk's were withheld), so the stream
    helper's logprobs events and final completion have what an unstreamed answer has."""
    c = client(gateway)
    asked = [{"role": "user", "content": "spell it out"}]
    whole = c.chat.completions.create(model="gpt-4o", messages=asked, logprobs=True,
                                      top_logprobs=2, n=2)  # fmt: skip
    with c.chat.completions.stream(
        model="gpt-4o", messages=asked, logprobs=True, top_logprobs=2, n=2
    ) as stream:
        deltas = [e for e in stream if e.type == "logprobs.content.delta"]
        final = stream.get_final_completion()
    assert deltas
    for streamed, unstreamed in zip(final.choices, whole.choices, strict=True):
        assert streamed.logprobs is not None and streamed.logprobs.content
        assert unstreamed.logprobs is not None and unstreamed.logprobs.content
        assert [(t.token, t.logprob, len(t.top_logprobs)) for t in streamed.logprobs.content] == [
            (t.token, t.logprob, len(t.top_logprobs)) for t in unstreamed.logprobs.content
        ]
        assert "".join(t.token for t in streamed.logprobs.content) == streamed.message.content


def test_a_tool_loop_through_the_simulators_ends_with_an_answer(gateway: Harness) -> None:
    """An application's tool loop (the Node SDK's runTools, an agent's runner) sends the tools'
    results back and waits for an answer in words. The simulators called every tool again,
    whatever the results, so the loop ran until the SDK's limit (runTools: ten rounds) and ended
    with no answer; now a request whose last item is a tool's result is answered, in chat
    (plain and streamed) and the Responses API (a continued conversation too)."""
    c = client(gateway)
    asked = [{"role": "user", "content": ASKED}]
    first = c.chat.completions.create(model="gpt-4o", messages=asked, tools=TOOLS)
    calls = first.choices[0].message.tool_calls or []
    assert len(calls) == 2
    results = [{"role": "tool", "tool_call_id": call.id, "content": "sunny"} for call in calls]
    history = [*asked, first.choices[0].message.model_dump(exclude_none=True), *results]
    answer = c.chat.completions.create(model="gpt-4o", messages=history, tools=TOOLS)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].message.content
    with c.chat.completions.stream(model="gpt-4o", messages=history, tools=TOOLS) as s:
        streamed = s.get_final_completion()
    assert (
        streamed.choices[0].finish_reason == "stop" and not streamed.choices[0].message.tool_calls
    )
    # A model told it must call a tool still does.
    forced = c.chat.completions.create(
        model="gpt-4o", messages=history, tools=TOOLS, tool_choice="required"
    )
    assert forced.choices[0].finish_reason == "tool_calls"

    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    r1 = c.responses.create(model="gpt-4o", input=ASKED, tools=[tool])  # type: ignore[list-item]
    [call] = [i for i in r1.output if i.type == "function_call"]
    r2 = c.responses.create(
        model="gpt-4o", previous_response_id=r1.id, tools=[tool],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )  # fmt: skip
    assert [i.type for i in r2.output] == ["message"] and r2.output_text
