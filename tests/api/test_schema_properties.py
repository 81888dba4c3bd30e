"""Property-based tests and a short fuzz run of the request parser: whatever bytes arrive, the
parser either returns a request or raises InvalidRequest naming the problem — never anything
else, and never changes what it passes through."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sekisho.api.schema import (
    parse_chat,
    parse_completions,
    parse_embeddings,
    parse_responses,
)
from sekisho.errors import InvalidRequest

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

text_part = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=50)})
message = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "developer"]), "content": st.text(max_size=80)}
    ),
    st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(text_part, max_size=3)}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.text(max_size=40)}),
    st.fixed_dictionaries(
        {
            "role": st.just("tool"),
            "content": st.text(max_size=40),
            "tool_call_id": st.text(min_size=1, max_size=10),
        }
    ),
)
valid_chat = st.fixed_dictionaries(
    {
        "model": st.text(min_size=1, max_size=30),
        "messages": st.lists(message, min_size=1, max_size=5),
    },
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "n": st.integers(1, 128),
        "max_tokens": st.integers(1, 10**6),
        "stop": st.lists(st.text(max_size=5), max_size=4),
        "seed": st.integers(-(2**31), 2**31),
        "user": st.text(max_size=10),
        "x_vendor_extension": json_values,
    },
)


@settings(max_examples=200, deadline=None)
@given(valid_chat, st.booleans())
def test_valid_chat_requests_parse_and_pass_through_unchanged(
    body: dict[str, Any], stream: bool
) -> None:
    body = {**body, "stream": stream}
    req = parse_chat(orjson.dumps(body))
    assert req.body == body
    assert req.model == body["model"]
    assert req.stream is stream
    for m in body["messages"]:
        if isinstance(m["content"], str):
            assert m["content"] in req.texts()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_value_parses_or_is_a_clear_invalid_request(value: Any) -> None:
    raw = orjson.dumps(value)
    for parse in (parse_chat, parse_embeddings, parse_responses, parse_completions):
        try:
            parse(raw)
        except InvalidRequest as exc:
            assert exc.status == 400
            assert exc.message and exc.message[0].isupper()


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "model",
                "messages",
                "temperature",
                "n",
                "stream",
                "stream_options",
                "stop",
                "tools",
                "tool_choice",
                "response_format",
                "max_tokens",
                "top_p",
            ]
        ),
        json_values,
        max_size=8,
    )
)
def test_chat_fields_of_any_type_never_crash_the_parser(body: dict[str, Any]) -> None:
    try:
        parse_chat(orjson.dumps(body))
    except InvalidRequest as exc:
        assert exc.param is None or isinstance(exc.param, str)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_raw_bytes_never_crash_the_parser(raw: bytes) -> None:
    for parse in (parse_chat, parse_embeddings, parse_responses, parse_completions):
        with contextlib.suppress(InvalidRequest):
            parse(raw)


@settings(max_examples=200, deadline=None)
@given(valid_chat, st.data())
def test_one_corrupted_field_is_named_in_the_error(
    body: dict[str, Any], data: st.DataObject
) -> None:
    field = data.draw(st.sampled_from(["temperature", "n", "max_tokens", "top_p"]))
    bad = data.draw(
        st.one_of(
            st.text(max_size=3),
            st.lists(st.integers(-1000, 1000), max_size=2),
            st.just(-5),
            st.just(10**9 + 0.5),
        )
    )
    body = {**body, field: bad}
    try:
        parse_chat(orjson.dumps(body))
    except InvalidRequest as exc:
        assert exc.param == field
        assert field in exc.message
    else:  # only an in-range integer for max_tokens can be valid here
        assert field == "max_tokens" and isinstance(bad, int) and bad >= 1


# -- what is scanned is exactly what is rewritten ----------------------------------------------

rich_message = st.one_of(
    message,
    st.fixed_dictionaries(
        {
            "role": st.just("assistant"),
            "content": st.lists(
                st.one_of(
                    text_part,
                    st.fixed_dictionaries(
                        {"type": st.just("refusal"), "refusal": st.text(max_size=20)}
                    ),
                ),
                max_size=2,
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("assistant"),
            "content": st.none(),
            "tool_calls": st.lists(
                st.fixed_dictionaries(
                    {
                        "id": st.text(min_size=1, max_size=5),
                        "type": st.just("function"),
                        "function": st.fixed_dictionaries(
                            {"name": st.just("lookup"), "arguments": st.text(max_size=30)}
                        ),
                    }
                ),
                min_size=1,
                max_size=2,
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("user"),
            "name": st.text(min_size=1, max_size=8),
            "content": st.lists(
                st.one_of(
                    text_part,
                    st.fixed_dictionaries(
                        {"type": st.just("image_url"), "image_url": st.just({"url": "x"})}
                    ),
                ),
                max_size=3,
            ),
        }
    ),
)
# JSON Schemas as tools and structured outputs carry them: syntax sekisho must leave alone, and
# descriptions, enums, defaults and examples the model reads.
json_schema = st.recursive(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["string", "integer"])},
        optional={
            "description": st.text(max_size=15),
            "enum": st.lists(st.text(max_size=8), max_size=3),
            "default": st.text(max_size=8),
            "pattern": st.just("^[a-z]+$"),
            "format": st.just("email"),
        },
    ),
    lambda inner: st.fixed_dictionaries(
        {
            "type": st.just("object"),
            "properties": st.dictionaries(
                st.sampled_from(["name", "type", "email", "required", "note"]), inner, max_size=3
            ),
            "required": st.lists(st.sampled_from(["name", "email"]), max_size=2),
        },
        optional={"description": st.text(max_size=10), "examples": st.lists(inner, max_size=1)},
    ),
    max_leaves=4,
)
rich_chat = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.lists(rich_message, min_size=1, max_size=5)},
    optional={
        "user": st.text(max_size=10),
        "prediction": st.fixed_dictionaries(
            {"type": st.just("content"), "content": st.text(max_size=20)}
        ),
        "tools": st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.just("function"),
                    "function": st.fixed_dictionaries(
                        {"name": st.just("lookup"), "parameters": json_schema},
                        optional={"description": st.text(max_size=20)},
                    ),
                }
            ),
            max_size=2,
        ),
        "response_format": st.fixed_dictionaries(
            {
                "type": st.just("json_schema"),
                "json_schema": st.fixed_dictionaries(
                    {"name": st.just("answer"), "schema": json_schema},
                    optional={"description": st.text(max_size=10), "strict": st.booleans()},
                ),
            }
        ),
        "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=3),
        "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=4)),
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(rich_chat)
def test_redaction_rewrites_exactly_the_texts_the_classifier_scanned(body: dict[str, Any]) -> None:
    from sekisho._output import rewrite_texts

    req = parse_chat(orjson.dumps(body))
    scanned = req.texts()
    seen: list[str] = []

    def rewrite(text: str) -> str:
        seen.append(text)
        return "\x00rewritten"

    out = rewrite_texts("chat", req.body, rewrite)
    assert seen == scanned  # the same texts, in the same order
    # ...and nothing of what was scanned is left anywhere in the body that goes upstream.
    left: list[str] = []

    def strings(node: Any) -> None:
        if isinstance(node, str):
            left.append(node)
        elif isinstance(node, list):
            for x in node:
                strings(x)
        elif isinstance(node, dict):
            for x in node.values():
                strings(x)

    strings(out)
    assert left.count("\x00rewritten") == len(scanned)
    if "user" in body:
        assert out["user"] == "\x00rewritten"
    # What the model reads in a tool definition is scanned; what the upstream parses as syntax
    # (names, JSON Schema keywords, required property lists) is kept as it was.
    for t in out.get("tools", []):
        fn = t["function"]
        assert fn["name"] == "lookup" and t["type"] == "function"
        if "description" in fn:
            assert fn["description"] == "\x00rewritten"
        _assert_schema_syntax_kept(fn["parameters"])
    if "response_format" in out:
        js = out["response_format"]["json_schema"]
        assert js["name"] == "answer"
        _assert_schema_syntax_kept(js["schema"])
    for v in out.get("metadata", {}).values():
        assert v == "\x00rewritten"


def _assert_schema_syntax_kept(schema: dict[str, Any]) -> None:
    assert schema["type"] in ("string", "integer", "object")
    assert schema.get("pattern", "^[a-z]+$") == "^[a-z]+$"
    assert schema.get("format", "email") == "email"
    assert all(r in ("name", "email") for r in schema.get("required", []))
    for v in schema.get("enum", []):
        assert v == "\x00rewritten"
    if "description" in schema:
        assert schema["description"] == "\x00rewritten"
    for sub in list(schema.get("properties", {}).values()) + schema.get("examples", []):
        _assert_schema_syntax_kept(sub)


def test_a_deeply_nested_tool_schema_is_scanned_and_a_too_deep_body_a_clear_400() -> None:
    """Tool schemas are walked without recursion; a body deeper than orjson can write back
    (255 levels) would have been parsed and then failed on its way upstream as a 500."""
    from sekisho._output import rewrite_texts

    schema: dict[str, Any] = {"type": "string", "description": "mail taro@example.co.jp"}
    for _ in range(60):  # 125 levels in all
        schema = {"type": "object", "properties": {"x": schema}}
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
    }
    req = parse_chat(orjson.dumps(body))
    assert "mail taro@example.co.jp" in req.texts()
    out = rewrite_texts("chat", req.body, lambda t: t.replace("taro@example.co.jp", "[EMAIL]"))
    assert b"taro@example.co.jp" not in orjson.dumps(out)

    deep = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"x":' + b"[" * 500
    with pytest.raises(InvalidRequest, match="nests objects and arrays 501 levels deep"):
        parse_chat(deep + b"]" * 500 + b"}")


nested_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(nested_json)
def test_pseudonymising_a_json_value_rewrites_each_string_and_keeps_its_shape(value: Any) -> None:
    from sekisho._output import pseudonymise_obj
    from sekisho.classify import Finding, Pseudonymiser

    def find(text: str) -> list[Finding]:
        return [Finding("PERSON", 0, len(text), 1.0)] if text else []

    def expected(node: Any, p: Pseudonymiser) -> Any:  # the obvious recursive definition
        if isinstance(node, str):
            return p.pseudonymise(node, find(node)) if node else node
        if isinstance(node, list):
            return [expected(x, p) for x in node]
        if isinstance(node, dict):
            return {k: expected(v, p) for k, v in node.items()}
        return node

    got = pseudonymise_obj(value, find, Pseudonymiser())
    want = expected(value, Pseudonymiser())
    assert orjson.dumps(got) == orjson.dumps(want)  # same shape, strings, placeholder order


def test_pseudonymising_a_deep_value_does_not_hit_the_recursion_limit() -> None:
    from sekisho._output import pseudonymise_obj
    from sekisho.classify import Pseudonymiser

    deep: Any = "leaf"
    for _ in range(1000):
        deep = {"k": [deep]}
    out = pseudonymise_obj(deep, lambda t: [], Pseudonymiser())
    for _ in range(1000):  # the same shape all the way down (== itself would recurse)
        assert isinstance(out, dict) and list(out) == ["k"] and len(out["k"]) == 1
        out = out["k"][0]
    assert out == "leaf"


def test_an_upstream_answer_too_deep_to_write_back_is_a_protocol_error_not_a_500() -> None:
    from sekisho._upstream import parse_answer
    from sekisho.providers import UpstreamProtocolError

    deep = b'{"choices":' + b"[" * 300 + b"]" * 300 + b"}"
    with pytest.raises(UpstreamProtocolError, match="nested over 128 deep"):
        parse_answer(deep, "ep")
    wide = b'{"choices":[' + b",".join([b'{"index":0}'] * 500) + b"]}"  # many, but shallow
    assert len(parse_answer(wide, "ep")["choices"]) == 500


# -- the Responses API ------------------------------------------------------------------------

input_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("input_text"), "text": st.text(max_size=20)}),
    st.fixed_dictionaries({"type": st.just("input_image"), "image_url": st.just("data:x")}),
)
input_item = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "developer"]),
            "content": st.one_of(st.text(max_size=20), st.lists(input_part, max_size=3)),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("message"),
            "role": st.just("assistant"),
            "content": st.lists(
                st.fixed_dictionaries(
                    {"type": st.just("output_text"), "text": st.text(max_size=20)}
                ),
                max_size=2,
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("function_call"),
            "call_id": st.just("c1"),
            "name": st.just("lookup"),
            "arguments": st.text(max_size=20),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("function_call_output"),
            "call_id": st.just("c1"),
            "output": st.one_of(st.text(max_size=20), st.lists(input_part, max_size=2)),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("reasoning"),
            "id": st.just("rs_1"),
            "summary": st.lists(
                st.fixed_dictionaries(
                    {"type": st.just("summary_text"), "text": st.text(max_size=15)}
                ),
                max_size=2,
            ),
        }
    ),
)
rich_responses = st.fixed_dictionaries(
    {
        "model": st.just("m"),
        "input": st.one_of(st.text(max_size=20), st.lists(input_item, max_size=5)),
    },
    optional={
        "instructions": st.text(max_size=20),
        "user": st.text(max_size=10),
        "safety_identifier": st.text(max_size=10),
        "tools": st.lists(
            st.fixed_dictionaries(
                {"type": st.just("function"), "name": st.just("lookup"), "parameters": json_schema},
                optional={"description": st.text(max_size=20)},
            ),
            max_size=2,
        ),
        "text": st.fixed_dictionaries(
            {
                "format": st.fixed_dictionaries(
                    {
                        "type": st.just("json_schema"),
                        "name": st.just("answer"),
                        "schema": json_schema,
                    }
                )
            }
        ),
        "prompt": st.fixed_dictionaries(
            {
                "id": st.just("pmpt_1"),
                "variables": st.dictionaries(
                    st.sampled_from(["name", "type", "city"]), st.text(max_size=10), max_size=3
                ),
            }
        ),
        "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=3),
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(rich_responses)
def test_responses_redaction_rewrites_exactly_the_texts_the_classifier_scanned(
    body: dict[str, Any],
) -> None:
    from sekisho._output import rewrite_texts

    req = parse_responses(orjson.dumps(body))
    scanned = req.texts()
    seen: list[str] = []

    def rewrite(text: str) -> str:
        seen.append(text)
        return "\x00rewritten"

    out = rewrite_texts("responses", req.body, rewrite)
    assert seen == scanned
    left: list[str] = []
    stack: list[Any] = [out]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            left.append(node)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
    assert left.count("\x00rewritten") == len(scanned)
    # Every text a model reads was scanned: no user text is left as it came.
    if isinstance(body["input"], str):
        assert out["input"] == "\x00rewritten"
    for key in ("instructions", "user", "safety_identifier"):
        if key in body:
            assert out[key] == "\x00rewritten"
    for item in out["input"] if isinstance(out["input"], list) else ():
        if item.get("type") == "function_call":
            assert item["arguments"] == "\x00rewritten"
            assert item["name"] == "lookup" and item["call_id"] == "c1"
        if isinstance(item.get("content"), str):
            assert item["content"] == "\x00rewritten"
        parts = item.get("content") if isinstance(item.get("content"), list) else []
        for part in parts:
            if "text" in part:
                assert part["text"] == "\x00rewritten"
    for v in out.get("prompt", {}).get("variables", {}).values():
        assert v == "\x00rewritten"
    for t in out.get("tools", []):
        assert t["name"] == "lookup" and t["type"] == "function"
        _assert_schema_syntax_kept(t["parameters"])
    if "text" in out:
        assert out["text"]["format"]["name"] == "answer"
        _assert_schema_syntax_kept(out["text"]["format"]["schema"])
    # images are counted, never read
    items = body["input"] if isinstance(body["input"], list) else []
    images = sum(
        1
        for item in items
        for part in (item.get("content") or item.get("output") or ())
        if isinstance(part, dict) and part.get("type") == "input_image"
    )
    assert req.uninspected().get("UNINSPECTED_IMAGE", 0) == images


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "model",
                "input",
                "instructions",
                "stream",
                "tools",
                "tool_choice",
                "text",
                "store",
                "max_output_tokens",
                "metadata",
                "prompt",
                "include",
                "truncation",
                "background",
            ]
        ),
        json_values,
        max_size=8,
    )
)
def test_responses_fields_of_any_type_never_crash_the_parser(body: dict[str, Any]) -> None:
    try:
        req = parse_responses(orjson.dumps(body))
    except InvalidRequest as exc:
        assert exc.param is None or isinstance(exc.param, str)
    else:
        req.texts()
        req.uninspected()


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "model",
                "prompt",
                "suffix",
                "stream",
                "stream_options",
                "echo",
                "logprobs",
                "stop",
                "max_tokens",
                "n",
                "best_of",
                "user",
            ]
        ),
        json_values,
        max_size=8,
    )
)
def test_completions_fields_of_any_type_never_crash_the_parser(body: dict[str, Any]) -> None:
    from sekisho._output import rewrite_texts

    try:
        req = parse_completions(orjson.dumps(body))
    except InvalidRequest as exc:
        assert exc.param is None or isinstance(exc.param, str)
        return
    scanned = req.texts()
    req.uninspected()
    seen: list[str] = []
    rewrite_texts("completions", req.body, lambda t: seen.append(t) or t)
    assert seen == scanned
    prompt = body["prompt"]
    if isinstance(prompt, str):
        assert prompt in scanned
    elif all(isinstance(x, str) for x in prompt):
        assert all(x in scanned for x in prompt)
    else:
        assert req.uninspected() == {
            "UNINSPECTED_TOKENS": len(prompt) if isinstance(prompt[0], list) else 1
        }


# -- any JSON value in any field, at any depth -------------------------------------------------

# A request of each kind with every field the parser and the inspection read, at every depth.
FULL_REQUESTS: dict[str, dict[str, Any]] = {
    "chat": {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief", "name": "ops"},
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                         {"type": "image_url", "image_url": {"url": "http://x"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}],
             "function_call": {"name": "f", "arguments": "{}"}},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "description": "d",
                                                     "parameters": {"type": "object"}}}],
        "functions": [{"name": "g", "parameters": {}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}}},
        "prediction": {"type": "content", "content": "x"},
        "stream_options": {"include_usage": True},
        "stream": True,
        "stop": ["a"],
        "metadata": {"k": "v"},
        "logit_bias": {"1": 1},
        "user": "u",
    },
    "responses": {
        "model": "m",
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": "hi"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "t"}, {"type": "input_image", "image_url": "x"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": [
                {"type": "input_text", "text": "o"}]},
            {"type": "custom_tool_call", "call_id": "d", "name": "g", "input": "x"},
            {"type": "custom_tool_call_output", "call_id": "d", "output": "y"},
            {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": "s"}],
             "content": [{"type": "reasoning_text", "text": "r"}]},
            {"type": "item_reference", "id": "msg_1"},
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "text": {"format": {"type": "json_schema", "name": "a", "schema": {}}},
        "prompt": {"id": "p", "variables": {"a": "b", "c": {"type": "input_text", "text": "d"}}},
        "include": ["reasoning.encrypted_content"],
        "metadata": {"k": "v"},
        "reasoning": {"effort": "low"},
        "truncation": "auto",
        "user": "u",
    },
    "completions": {"model": "m", "prompt": ["a", "b"], "suffix": "s", "stop": "x", "user": "u"},
    "embeddings": {"model": "m", "input": ["a", "b"], "user": "u"},
}  # fmt: skip
PARSERS = {
    "chat": parse_chat,
    "responses": parse_responses,
    "completions": parse_completions,
    "embeddings": parse_embeddings,
}
# Keys the parser or the inspection read wherever they are: added where they were not.
READ_KEYS = ["role", "content", "type", "text", "name", "function", "arguments", "output",
             "summary", "tool_calls", "variables", "format", "json_schema", "refusal",
             "input"]  # fmt: skip


def _places(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value inside ``node`` (object members and array elements)."""
    out: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        out.append((*path, k))
        if isinstance(v, dict | list) and v:
            out.extend(_places(v, (*path, k)))
    return out


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(FULL_REQUESTS)), st.data())
def test_any_json_value_in_any_field_at_any_depth_is_read_or_a_clear_400(
    kind: str, data: st.DataObject
) -> None:
    """A role given as ["user"] or {} was a 500 (unhashable type), as was a reasoning
    summary given as a number or a stored prompt's variable whose type was a list: whatever
    one field holds, the request parses and is inspected, or it is a 400 naming the field."""
    import copy

    from sekisho._output import rewrite_texts

    body = copy.deepcopy(FULL_REQUESTS[kind])
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from(_places(body)))
        holder = body
        for k in path[:-1]:
            holder = holder[k]
        key = path[-1]
        if isinstance(holder, dict) and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(READ_KEYS))  # a field put where it was not
        holder[key] = data.draw(json_values)
    try:
        req = PARSERS[kind](orjson.dumps(body))
    except InvalidRequest as exc:
        assert exc.status == 400 and (exc.param is None or isinstance(exc.param, str))
        return
    texts, _opaque = req.parts()
    req.uninspected()
    seen: list[str] = []
    rewrite_texts(kind, req.body, lambda t: seen.append(t) or t)
    assert seen == texts


_TYPES = st.from_regex(r"[A-Z][A-Z0-9_]{0,12}", fullmatch=True)


@given(
    provider_id=st.text(min_size=1, max_size=60).filter(lambda s: "\x00" not in s),
    endpoint_id=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    numbered=st.dictionaries(_TYPES, st.integers(1, 999_999), max_size=5),
)
def test_a_provider_kept_id_gives_back_what_it_was_made_of(
    provider_id: str, endpoint_id: str, numbered: dict[str, int]
) -> None:
    """The response id of a conversation kept at a provider carries its endpoint, its seal,
    the provider's own id (dots and all) and the placeholder numbers used so far."""
    from sekisho._provider_state import unwrap, wrap

    made = wrap(provider_id, endpoint_id, "c2VhbHNlYWxzZWFs", numbered)
    assert unwrap(made) == (endpoint_id, "c2VhbHNlYWxzZWFs", provider_id, numbered)


def test_an_id_marked_with_every_finding_type_at_its_most_is_still_read() -> None:
    """A conversation that pseudonymised every type a million times over still continues:
    its id, marks and all, is within what is read."""
    from sekisho._provider_state import unwrap, wrap
    from sekisho.classify.findings import TYPES

    numbered = {t: 999_999 for t in TYPES}
    made = wrap("resp_" + "x" * 120, "endpoint-" + "y" * 60, "c2VhbHNlYWxzZWFs", numbered)
    assert unwrap(made) is not None


@given(st.text(max_size=80))
def test_any_string_as_previous_response_id_is_read_or_refused_never_an_error(text: str) -> None:
    from sekisho._provider_state import unwrap

    got = unwrap("resp_sx" + text)
    assert got is None or (len(got) == 4 and all(isinstance(n, int) for n in got[3].values()))
