"""Agent workflows through sekisho with the official openai client, for a tenant that
pseudonymises personal data: multi-turn tool loops, the Responses API's function tools and kept
conversations, and structured outputs, with the values the model saw as placeholders."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from harness import Harness

EMAIL = "taro@example.co.jp"
OTHER = "hanako@example.co.jp"
CODENAME = 'Project "Falcon"'


class Lookup(BaseModel):
    query: str


TOOLS = [openai.pydantic_function_tool(Lookup, name="lookup")]


def tenant(
    output: dict[str, Any] | None = None, features: list[str] | None = None
) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        demo = raw["tenants"]["demo"]
        demo["policy"]["classification"] = {
            "actions": {"EMAIL": "pseudonymise", "CUSTOM": "pseudonymise"}
        }
        demo["detection"]["custom"] = [{"name": "codenames", "terms": [CODENAME]}]
        demo["detection"]["output"] = output or {"action": "none", "types": []}
        if features is not None:
            demo["provider_features"] = features

    return mutate


def client(h: Harness) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url, api_key=h.key(), max_retries=0)


def sent(h: Harness, endpoint: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(h.sims[endpoint].stats.bodies[-1])
    return body


def test_a_chat_tool_loop_keeps_one_placeholder_per_value_across_turns(
    gateways: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    """A tool loop through the stream helper: the call's arguments, split into 3-character
    pieces, parse with the real address; sent back as the assistant's call and the tool's
    result, the address is the same placeholder again, a new one the next; neither the
    upstream nor the log sees a value."""
    caplog.set_level(logging.DEBUG, logger="sekisho")
    h = gateways(tenant(), keep_bodies=True, chunk_chars=3)
    c = client(h)
    messages: list[Any] = [{"role": "user", "content": f"{EMAIL} の注文"}]
    with c.chat.completions.stream(model="gpt-4o", messages=messages, tools=TOOLS) as s:
        final = s.get_final_completion()
    call = (final.choices[0].message.tool_calls or [])[0]
    assert call.function.parsed_arguments == Lookup(query=f"{EMAIL} の注文")
    messages.append(final.choices[0].message.model_dump(exclude_none=True, exclude={"parsed"}))
    result = json.dumps({"owner": EMAIL, "cc": OTHER})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages, tools=TOOLS
    )
    body = sent(h, raw.headers["x-sekisho-endpoint"])
    text = json.dumps(body, ensure_ascii=False)
    assert EMAIL not in text and OTHER not in text
    assert body["messages"][0]["content"] == "<EMAIL_1> の注文"
    args = json.loads(body["messages"][1]["tool_calls"][0]["function"]["arguments"])
    assert args == {"query": "<EMAIL_1> の注文"}
    assert json.loads(body["messages"][2]["content"]) == {"owner": "<EMAIL_1>", "cc": "<EMAIL_2>"}
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "request" in logged and EMAIL not in logged and OTHER not in logged


@pytest.mark.parametrize("stream", [False, True])
def test_a_value_restored_into_structured_output_keeps_it_parseable(
    gateways: Callable[..., Harness], stream: bool
) -> None:
    """A structured output (response_format json_schema) is JSON: a restored value with a
    quote in it is escaped for its JSON string, so ``parse()`` and the stream helper still
    parse the answer (the value ended the string early and the SDK raised)."""
    h = gateways(tenant(), keep_bodies=True, chunk_chars=3)  # the placeholder split in pieces
    c = client(h)
    messages: Any = [{"role": "user", "content": f"{CODENAME} の進捗"}]
    if stream:
        with c.chat.completions.stream(
            model="gpt-4o", messages=messages, response_format=Lookup
        ) as s:
            parsed = s.get_final_completion().choices[0].message.parsed
    else:
        r = c.chat.completions.parse(model="gpt-4o", messages=messages, response_format=Lookup)
        parsed = r.choices[0].message.parsed
    assert parsed is not None and f"You said: {CODENAME} の進捗 (digest" in parsed.query
    upstream = b"".join(sim.stats.bodies[-1] for sim in h.sims.values() if sim.stats.bodies)
    assert b"<CUSTOM_1>" in upstream and b"Falcon" not in upstream


@pytest.mark.parametrize("stream", [False, True])
def test_a_value_restored_into_a_responses_structured_output_keeps_it_parseable(
    gateways: Callable[..., Harness], stream: bool
) -> None:
    h = gateways(tenant(), keep_bodies=True, chunk_chars=3)
    c = client(h)
    asked = f"{CODENAME} の進捗"
    if stream:
        with c.responses.stream(model="gpt-4o", input=asked, text_format=Lookup) as s:
            parsed = s.get_final_response().output_parsed
    else:
        parsed = c.responses.parse(model="gpt-4o", input=asked, text_format=Lookup).output_parsed
    assert parsed is not None and f"You said: {asked} (digest" in parsed.query
    # Prose is not JSON: the same value in a plain answer comes back as it was written.
    plain = c.responses.create(model="gpt-4o", input=asked).output_text
    assert f"You said: {asked} (digest" in plain


def test_a_responses_tool_loop_kept_by_sekisho_keeps_its_placeholders(
    gateways: Callable[..., Harness],
) -> None:
    """Function tools in a conversation sekisho keeps (previous_response_id): the streamed call
    reaches the client with the real address, the tool's output and the next question are
    pseudonymised with the first turn's placeholders, and the next call is restored."""
    h = gateways(tenant(), keep_bodies=True, chunk_chars=3)
    c = client(h)
    tools: Any = [{"type": "function", "name": "lookup", "parameters": Lookup.model_json_schema()}]
    with c.responses.stream(model="gpt-4o", input=f"{EMAIL} の注文", tools=tools) as s:
        first = s.get_final_response()
    calls = [i for i in first.output if i.type == "function_call"]
    assert json.loads(calls[0].arguments)["query"] == f"{EMAIL} の注文"
    raw = c.responses.with_raw_response.create(
        model="gpt-4o",
        previous_response_id=first.id,
        tools=tools,
        input=[
            {
                "type": "function_call_output",
                "call_id": calls[0].call_id,
                "output": json.dumps({"owner": EMAIL, "cc": OTHER}),
            },
            {"role": "user", "content": f"{OTHER} にも送って"},
        ],
    )
    body = sent(h, raw.headers["x-sekisho-endpoint"])
    assert EMAIL not in json.dumps(body) and OTHER not in json.dumps(body)
    items = body["input"]
    assert items[0]["content"] == "<EMAIL_1> の注文"
    assert json.loads(items[1]["arguments"])["query"] == "<EMAIL_1> の注文"
    assert json.loads(items[2]["output"]) == {"owner": "<EMAIL_1>", "cc": "<EMAIL_2>"}
    assert items[3]["content"] == "<EMAIL_2> にも送って"
    second = [i for i in raw.parse().output if i.type == "function_call"]
    assert json.loads(second[0].arguments)["query"] == f"{OTHER} にも送って"


NAME, ADDRESS, PROJECT = "山田太郎", "東京都千代田区丸の内1-1-1", "極光計画"
CALL = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_tool_result_written_by_json_dumps_is_read_past_its_escapes(
    gateways: Callable[..., Harness], api: str
) -> None:
    """Python's json.dumps writes every non-ASCII character as \\uXXXX by default, so a tool's
    result naming a person reached the upstream as escapes the classifier could not read. It is
    read, pseudonymised and sent as the characters: the same JSON to the model."""

    def mutate(raw: dict[str, Any]) -> None:
        tenant()(raw)
        actions = raw["tenants"]["demo"]["policy"]["classification"]["actions"]
        actions.update({"PERSON": "pseudonymise", "ADDRESS_JP": "pseudonymise"})
        raw["tenants"]["demo"]["detection"]["custom"] = [{"name": "p", "terms": [PROJECT]}]

    h = gateways(mutate, keep_bodies=True)
    c = client(h)
    result = json.dumps({"project": PROJECT, "owner": NAME, "addr": ADDRESS, "note": 'a "q" \\'})
    assert "\\u5c71" in result  # escaped, as json.dumps writes it
    if api == "chat":
        raw: Any = c.chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[
                {"role": "user", "content": "look it up"},
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "c1", "content": result},
            ],
        )
        out = sent(h, raw.headers["x-sekisho-endpoint"])["messages"][2]["content"]
    else:
        raw = c.responses.with_raw_response.create(
            model="gpt-4o",
            input=[
                {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": result},
            ],
        )
        out = sent(h, raw.headers["x-sekisho-endpoint"])["input"][1]["output"]
    assert json.loads(out) == {
        "project": "<CUSTOM_1>",
        "owner": "<PERSON_1>",
        "addr": "<ADDRESS_JP_1>",
        "note": 'a "q" \\',
    }
    assert raw.headers["x-sekisho-classification"] == "confidential"


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
))  # fmt: skip
def test_unescaping_json_text_keeps_its_value_and_leaves_no_readable_escape(value: Any) -> None:
    from sekisho.api.schema import unescape_json_text

    text = json.dumps(value)  # ensure_ascii: every non-ASCII character escaped
    got = unescape_json_text(text)
    assert json.loads(got) == value
    for ch in json.dumps(value, ensure_ascii=False):
        if ch.isprintable() and ch not in '"\\' and not 0xD800 <= ord(ch) <= 0xDFFF:
            assert ch in got
    assert unescape_json_text("\\u5c71 is not JSON") == "\\u5c71 is not JSON"


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_placeholder_a_go_server_escapes_in_tool_arguments_is_restored(
    gateways: Callable[..., Harness], api: str, stream: bool
) -> None:
    """Ollama (Go's encoding/json) writes the placeholder in a tool call's arguments as
    \\u003cEMAIL_1\\u003e: the tool got '<EMAIL_1>' where it needed the address."""
    h = gateways(tenant(), keep_bodies=True, chunk_chars=3, go_json=True)
    c = client(h)
    asked = f"{EMAIL} の注文"
    if api == "chat":
        messages: Any = [{"role": "user", "content": asked}]
        if stream:
            with c.chat.completions.stream(model="gpt-4o", messages=messages, tools=TOOLS) as s:
                message = s.get_final_completion().choices[0].message
        else:
            message = (
                c.chat.completions.parse(model="gpt-4o", messages=messages, tools=TOOLS)
                .choices[0]
                .message
            )
        args = (message.tool_calls or [])[0].function.arguments
    else:
        tools: Any = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
        if stream:
            with c.responses.stream(model="gpt-4o", input=asked, tools=tools) as rs:
                output = rs.get_final_response().output
        else:
            output = c.responses.create(model="gpt-4o", input=asked, tools=tools).output
        args = next(i.arguments for i in output if i.type == "function_call")
    assert json.loads(args)["query"] == asked


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("stream", [False, True])
def test_the_output_rule_reads_tool_arguments_a_server_wrote_with_ascii_escapes(
    gateways: Callable[..., Harness], api: str, stream: bool
) -> None:
    """A server that writes a call's arguments with json.dumps' defaults sends 山田太郎 as
    \\u5c71\\u7530...: the rule that masks PERSON read past it and the client's tool got the
    name. Read as characters, the name is masked, in pieces of 3 characters too."""

    def mutate(raw: dict[str, Any]) -> None:
        tenant({"action": "mask", "types": ["PERSON"]})(raw)

    h = gateways(mutate, keep_bodies=True, chunk_chars=3, ascii_json=True)
    c = client(h)
    asked = f"{NAME}様の注文"
    if api == "chat":
        messages: Any = [{"role": "user", "content": asked}]
        if stream:
            with c.chat.completions.stream(model="gpt-4o", messages=messages, tools=TOOLS) as s:
                message = s.get_final_completion().choices[0].message
        else:
            message = (
                c.chat.completions.parse(model="gpt-4o", messages=messages, tools=TOOLS)
                .choices[0]
                .message
            )
        args = (message.tool_calls or [])[0].function.arguments
    else:
        tools: Any = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
        if stream:
            with c.responses.stream(model="gpt-4o", input=asked, tools=tools) as rs:
                output = rs.get_final_response().output
        else:
            output = c.responses.create(model="gpt-4o", input=asked, tools=tools).output
        args = next(i.arguments for i in output if i.type == "function_call")
    assert json.loads(args)["query"] == "[PERSON]様の注文"


@given(value=st.text(), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_streamed_json_is_unescaped_as_it_is_whole(value: str, cuts: list[int]) -> None:
    from sekisho._output import JsonUnescaper, unescape_json_escapes

    text = json.dumps({"q": value, "k": ["\\", value + "\\"]})
    u, out, at = JsonUnescaper(), [], 0
    for n in sorted(set(cuts)):
        out.append(u.feed(text[at:n]))
        at = max(at, n)
    out.append(u.feed(text[at:]) + u.finish())
    assert "".join(out) == unescape_json_escapes(text)
    assert json.loads("".join(out)) == json.loads(text)


@pytest.mark.parametrize(
    "result",
    [
        # json.dumps writes a missing value of a float column (pandas, numpy) as NaN
        json.dumps({"owner": NAME, "score": float("nan"), "max": float("inf")}),
        # a file name decoded with surrogateescape, as os.listdir gives it for bytes not UTF-8
        json.dumps({"owner": NAME, "file": "report\udce9.csv"}),
        # log lines written as JSON, one a line (structlog, python-json-logger)
        json.dumps({"event": "login", "user": NAME}) + "\n" + json.dumps({"event": "logout"}),
    ],
    ids=["nan", "lone-surrogate", "json-lines"],
)
def test_json_python_writes_is_read_past_its_escapes_too(result: str) -> None:
    """What Python's json module writes and reads back, but a strict parser refuses (NaN and
    Infinity, a lone surrogate's escape, one document a line), was left escaped whole: the
    name in it reached the upstream, which reads \\uXXXX, unseen by the classifier."""
    from sekisho.api.schema import unescape_json_text

    assert "\\u5c71" in result
    got = unescape_json_text(result)
    assert NAME in got
    # The same values, line by line (NaN compared as json.dumps writes it).
    assert [json.dumps(json.loads(line)) for line in got.splitlines()] == [
        json.dumps(json.loads(line)) for line in result.splitlines()
    ]
