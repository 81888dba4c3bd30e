"""Parse and check OpenAI request bodies.

Checks what sekisho relies on and what would only fail later upstream with a worse message:
types, ranges, required fields. Unknown fields pass through untouched, because the OpenAI API
grows and clients that use a new field must keep working. Every error names the parameter
(``messages[2].content``) the way OpenAI's own errors do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from sekisho.errors import InvalidRequest
from sekisho.types import (
    UNINSPECTED_AUDIO,
    UNINSPECTED_CONTENT,
    UNINSPECTED_FILE,
    UNINSPECTED_IMAGE,
    UNINSPECTED_TOKENS,
)

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(slots=True)
class ChatRequest:
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool

    def texts(self) -> list[str]:
        """Every piece of text the upstream would see, for inspection."""
        return [c[k] for c, k in text_slots("chat", self.body)]

    def parts(self) -> tuple[list[str], list[str]]:
        """The texts (``texts()``) and the strings scanned but not rewritten (``inspected``)."""
        slots, opaque = inspected("chat", self.body)
        return [c[k] for c, k in slots], opaque

    def uninspected(self) -> dict[str, int]:
        """Content parts sekisho cannot read (images, audio, files), counted by finding type."""
        return _uninspected_parts(self.body["messages"])


@dataclass(slots=True)
class EmbeddingsRequest:
    body: dict[str, Any]
    model: str

    def texts(self) -> list[str]:
        return [c[k] for c, k in text_slots("embeddings", self.body)]

    def parts(self) -> tuple[list[str], list[str]]:
        """The texts (``texts()``) and the strings scanned but not rewritten (``inspected``)."""
        slots, opaque = inspected("embeddings", self.body)
        return [c[k] for c, k in slots], opaque

    def uninspected(self) -> dict[str, int]:
        """Inputs given as token ids: the upstream reads them as text, sekisho cannot."""
        return _token_ids(self.body["input"])


@dataclass(slots=True)
class CompletionsRequest:
    """A legacy completions request (``POST /v1/completions``): code completion, fill in the
    middle."""

    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool

    def texts(self) -> list[str]:
        return [c[k] for c, k in text_slots("completions", self.body)]

    def parts(self) -> tuple[list[str], list[str]]:
        """The texts (``texts()``) and the strings scanned but not rewritten (``inspected``)."""
        slots, opaque = inspected("completions", self.body)
        return [c[k] for c, k in slots], opaque

    def uninspected(self) -> dict[str, int]:
        """A prompt given as token ids: the upstream reads it as text, sekisho cannot."""
        return _token_ids(self.body["prompt"])


@dataclass(slots=True)
class ResponsesRequest:
    """A request to OpenAI's Responses API (``POST /v1/responses``)."""

    body: dict[str, Any]
    model: str
    stream: bool

    def texts(self) -> list[str]:
        return [c[k] for c, k in text_slots("responses", self.body)]

    def parts(self) -> tuple[list[str], list[str]]:
        """The texts (``texts()``) and the strings scanned but not rewritten (``inspected``)."""
        slots, opaque = inspected("responses", self.body)
        return [c[k] for c, k in slots], opaque

    def uninspected(self) -> dict[str, int]:
        """Images, audio and files in the input, and input items that are not text (a
        computer's screenshot, a hosted tool's results): counted, never read."""
        inp = self.body.get("input")
        holders: list[dict[str, Any]] = []  # what holds content parts, as messages hold them
        other = 0
        for item in inp if isinstance(inp, list) else ():
            kind = _item_type(item)
            if kind == "message":
                holders.append(item)
            elif kind in ("function_call_output", "custom_tool_call_output"):
                holders.append({"content": item.get("output")})
            elif kind not in _TEXT_ITEMS:
                other += 1
        prompt = self.body.get("prompt")
        variables = prompt.get("variables") if isinstance(prompt, dict) else None
        if isinstance(variables, dict):
            holders.append({"content": [v for v in variables.values() if isinstance(v, dict)]})
        counts = _uninspected_parts(holders)
        if other:
            counts[UNINSPECTED_CONTENT] = counts.get(UNINSPECTED_CONTENT, 0) + other
        return counts


def _token_ids(value: str | list[Any]) -> dict[str, int]:
    """A parsed text-or-tokens value (``_text_or_tokens``) given as token ids, counted."""
    if isinstance(value, str) or isinstance(value[0], str):
        return {}
    return {UNINSPECTED_TOKENS: len(value) if isinstance(value[0], list) else 1}


def load_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON ({exc.args[0] if exc.args else 'parse error'}). "
            "Send a JSON object with Content-Type: application/json."
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {_type_name(body)}.")
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH:  # only then can it be that deep
        depth = nesting_depth(body)
        if depth > MAX_DEPTH:
            raise InvalidRequest(
                f"The request body nests objects and arrays {depth} levels deep; at most "
                f"{MAX_DEPTH} are accepted (OpenAI's structured outputs allow 10)."
            )
    return body


# orjson reads 1,024 levels but writes only 255: a body deeper than that could be parsed and
# then not sent on. Far above any real tool or response schema.
MAX_DEPTH = 128


def nesting_depth(node: Any) -> int:
    """How many objects and arrays deep ``node`` goes (iteratively)."""
    deepest = 0
    stack = [(node, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return deepest


def parse_chat(raw: bytes) -> ChatRequest:
    body = load_json(raw)
    model = _model(body)
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise InvalidRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            param="messages",
        )
    for i, m in enumerate(messages):
        _message(m, f"messages[{i}]")
    stream = _optional(body, "stream", bool, "a boolean") or False
    include_usage = _stream_options(body, stream)
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0)
    _number(body, "presence_penalty", -2.0, 2.0)
    _number(body, "frequency_penalty", -2.0, 2.0)
    _integer(body, "n", 1, 128)
    _integer(body, "max_tokens", 1, None)
    _integer(body, "max_completion_tokens", 1, None)
    _integer(body, "top_logprobs", 0, 20)
    _integer(body, "seed", None, None)
    _optional(body, "logprobs", bool, "a boolean")
    _optional(body, "parallel_tool_calls", bool, "a boolean")
    _optional(body, "user", str, "a string")
    _optional(body, "logit_bias", dict, "an object")
    _optional(body, "metadata", dict, "an object")
    _stop(body)
    _tools(body, nested=True)
    tc = body.get("tool_choice")
    if tc is not None and not isinstance(tc, str | dict):
        raise _type_error("tool_choice", "a string or an object", tc)
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict):
            raise _type_error("response_format", "an object", rf)
        if not isinstance(rf.get("type"), str):
            raise InvalidRequest(
                "Missing required parameter: 'response_format.type'.",
                param="response_format.type",
            )
    return ChatRequest(body, model, stream, include_usage)


def parse_completions(raw: bytes) -> CompletionsRequest:
    body = load_json(raw)
    model = _model(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt")
    _text_or_tokens(prompt, "prompt")
    _optional(body, "suffix", str, "a string")
    _optional(body, "echo", bool, "a boolean")
    stream = _optional(body, "stream", bool, "a boolean") or False
    include_usage = _stream_options(body, stream)
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0)
    _number(body, "presence_penalty", -2.0, 2.0)
    _number(body, "frequency_penalty", -2.0, 2.0)
    _integer(body, "n", 1, 128)
    _integer(body, "best_of", 1, 128)
    _integer(body, "max_tokens", 1, None)
    _integer(body, "logprobs", 0, 5)
    _integer(body, "seed", None, None)
    _optional(body, "user", str, "a string")
    _optional(body, "logit_bias", dict, "an object")
    _stop(body)
    return CompletionsRequest(body, model, stream, include_usage)


def _text_or_tokens(value: Any, param: str) -> None:
    """A string, or a non-empty array of strings, of token ids or of token id arrays."""
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _type_error(param, "a string or an array", value)
    if not value:
        raise InvalidRequest(f"Invalid '{param}': empty array.", param=param)
    if not (
        all(isinstance(x, str) for x in value)
        or all(isinstance(x, int) and not isinstance(x, bool) for x in value)
        or all(
            isinstance(x, list)
            and x
            and all(isinstance(y, int) and not isinstance(y, bool) for y in x)
            for x in value
        )
    ):
        raise _type_error(
            param, "a string, an array of strings, or an array of token arrays", value
        )


def _stream_options(body: dict[str, Any], stream: bool) -> bool:
    """``stream_options`` checked; whether the client asked for usage on its stream."""
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise _type_error("stream_options", "an object", opts)
    if not stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    iu = opts.get("include_usage")
    if iu is not None and not isinstance(iu, bool):
        raise _type_error("stream_options.include_usage", "a boolean", iu)
    return bool(iu)


def _stop(body: dict[str, Any]) -> None:
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str):
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _type_error("stop", "a string or an array of strings", stop)
        if len(stop) > 4:
            raise InvalidRequest("Invalid 'stop': at most 4 sequences.", param="stop")


def parse_embeddings(raw: bytes) -> EmbeddingsRequest:
    body = load_json(raw)
    model = _model(body)
    inp = body.get("input")
    if inp is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    _text_or_tokens(inp, "input")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise InvalidRequest(
            f"Invalid 'encoding_format': {fmt!r}; expected 'float' or 'base64'.",
            param="encoding_format",
        )
    _integer(body, "dimensions", 1, None)
    _optional(body, "user", str, "a string")
    return EmbeddingsRequest(body, model)


_INPUT_ROLES = frozenset({"user", "assistant", "system", "developer"})
# Input items whose every text sekisho reads (``text_slots``); any other item type (a
# reference to an item the provider keeps, a hosted tool's call or results, a computer's
# screenshot) counts as uninspected content, for the policy to decide (fail closed).
_TEXT_ITEMS = frozenset(
    {
        "message",
        "function_call",
        "function_call_output",
        "custom_tool_call",
        "custom_tool_call_output",
        "reasoning",
    }
)


def _item_type(item: dict[str, Any]) -> str:
    """An input item's type; an item with a role and no type is a message (EasyInputMessage)."""
    kind = item.get("type")
    return kind if isinstance(kind, str) else "message"


def parse_responses(raw: bytes) -> ResponsesRequest:
    body = load_json(raw)
    model = _model(body)
    inp = body.get("input")
    if inp is None:
        given = ("previous_response_id", "conversation", "prompt")
        if not any(body.get(k) is not None for k in given):
            raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    elif isinstance(inp, list):
        for i, item in enumerate(inp):
            _input_item(item, f"input[{i}]")
    elif not isinstance(inp, str):
        raise _type_error("input", "a string or an array of input items", inp)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _type_error("instructions", "a string", instructions)
    stream = _optional(body, "stream", bool, "a boolean") or False
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0)
    _integer(body, "max_output_tokens", 1, None)
    _integer(body, "max_tool_calls", 1, None)
    _integer(body, "top_logprobs", 0, 20)
    _optional(body, "store", bool, "a boolean")
    _optional(body, "background", bool, "a boolean")
    _optional(body, "parallel_tool_calls", bool, "a boolean")
    _optional(body, "previous_response_id", str, "a string")
    _optional(body, "user", str, "a string")
    _optional(body, "safety_identifier", str, "a string")
    _optional(body, "metadata", dict, "an object")
    _optional(body, "text", dict, "an object")
    _optional(body, "reasoning", dict, "an object")
    _optional(body, "prompt", dict, "an object")
    include = body.get("include")
    if include is not None and (
        not isinstance(include, list) or not all(isinstance(x, str) for x in include)
    ):
        raise _type_error("include", "an array of strings", include)
    truncation = body.get("truncation")
    if truncation is not None and truncation not in ("auto", "disabled"):
        raise InvalidRequest(
            f"Invalid 'truncation': {truncation!r}; expected 'auto' or 'disabled'.",
            param="truncation",
        )
    _tools(body, nested=False)
    tc = body.get("tool_choice")
    if tc is not None and not isinstance(tc, str | dict):
        raise _type_error("tool_choice", "a string or an object", tc)
    if "stream_options" in body and not stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    return ResponsesRequest(body, model, stream)


def _tools(body: dict[str, Any], *, nested: bool) -> None:
    """``tools``: an array of objects with a type; a function tool names its function with a
    string, in an object under ``function`` (chat) or beside its type (``nested=False``:
    Responses), as OpenAI requires (a string ``function`` was forwarded, to be refused there,
    and a simulator never answered it)."""
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _type_error("tools", "an array", tools)
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise _type_error(f"tools[{i}]", "an object", t)
        if not isinstance(t.get("type"), str):
            raise InvalidRequest(
                f"Missing required parameter: 'tools[{i}].type'.", param=f"tools[{i}].type"
            )
        if t["type"] != "function":
            continue
        where, fn = f"tools[{i}]", t
        inner = t.get("function")
        if inner is not None and not isinstance(inner, dict):
            raise _type_error(f"tools[{i}].function", "an object", inner)
        if nested:
            if inner is None:
                raise InvalidRequest(
                    f"Missing required parameter: 'tools[{i}].function'.",
                    param=f"tools[{i}].function",
                )
            where, fn = f"tools[{i}].function", inner
        elif "name" not in t and inner is not None:
            continue  # chat's shape sent to Responses: for the endpoint to take or refuse
        name = fn.get("name")
        if name is None:
            raise InvalidRequest(
                f"Missing required parameter: '{where}.name'.", param=f"{where}.name"
            )
        if not isinstance(name, str):
            raise _type_error(f"{where}.name", "a string", name)


def _input_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise _type_error(where, "an object", item)
    kind = item.get("type")
    if kind is not None and not isinstance(kind, str):
        raise _type_error(f"{where}.type", "a string", kind)
    kind = _item_type(item)
    if kind == "message":
        role = item.get("role")
        if role is None:
            raise InvalidRequest(
                f"Missing required parameter: '{where}.role'.", param=f"{where}.role"
            )
        if not isinstance(role, str):
            raise _type_error(f"{where}.role", "a string", role)
        if role not in _INPUT_ROLES:
            raise InvalidRequest(
                f"Invalid value for '{where}.role': {role!r}. Supported values are: 'user', "
                "'assistant', 'system' and 'developer'.",
                param=f"{where}.role",
            )
        if "content" not in item:
            raise InvalidRequest(
                f"Missing required parameter: '{where}.content'.", param=f"{where}.content"
            )
        _parts(item.get("content"), f"{where}.content")
    elif kind in ("function_call", "custom_tool_call"):
        key = "arguments" if kind == "function_call" else "input"
        if not isinstance(item.get(key), str):
            raise _type_error(f"{where}.{key}", "a string", item.get(key))
    elif kind in ("function_call_output", "custom_tool_call_output"):
        out = item.get("output")
        if isinstance(out, list):
            _parts(out, f"{where}.output")
        elif not isinstance(out, str):
            raise _type_error(f"{where}.output", "a string or an array of content parts", out)


def _parts(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _type_error(where, "a string or an array of content parts", content)
    for j, part in enumerate(content):
        p = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise _type_error(p, "an object", part)
        ptype = part.get("type")
        if not isinstance(ptype, str):
            raise InvalidRequest(f"Missing required parameter: '{p}.type'.", param=f"{p}.type")
        if ptype in ("input_text", "output_text", "text") and not isinstance(part.get("text"), str):
            raise _type_error(f"{p}.text", "a string", part.get("text"))


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    if not isinstance(model, str):
        raise _type_error("model", "a string", model)
    if not model:
        raise InvalidRequest("Invalid 'model': empty string.", param="model")
    return model


def _message(m: Any, where: str) -> None:
    if not isinstance(m, dict):
        raise _type_error(where, "an object", m)
    role = m.get("role")
    if role is None:
        raise InvalidRequest(f"Missing required parameter: '{where}.role'.", param=f"{where}.role")
    if not isinstance(role, str):
        raise _type_error(f"{where}.role", "a string", role)
    if role not in _ROLES:
        raise InvalidRequest(
            f"Invalid value for '{where}.role': {role!r}. Supported values are: "
            "'system', 'developer', 'user', 'assistant', 'tool' and 'function'.",
            param=f"{where}.role",
        )
    content = m.get("content")
    if content is None:
        if role in ("user", "system", "developer") or (
            role == "assistant" and not m.get("tool_calls") and not m.get("function_call")
        ):
            if "content" not in m:
                raise InvalidRequest(
                    f"Missing required parameter: '{where}.content'.", param=f"{where}.content"
                )
            if role != "assistant":
                raise _type_error(f"{where}.content", "a string or an array of content parts", None)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            p = f"{where}.content[{j}]"
            if not isinstance(part, dict):
                raise _type_error(p, "an object", part)
            ptype = part.get("type")
            if not isinstance(ptype, str):
                raise InvalidRequest(f"Missing required parameter: '{p}.type'.", param=f"{p}.type")
            if ptype == "text" and not isinstance(part.get("text"), str):
                raise _type_error(f"{p}.text", "a string", part.get("text"))
    elif not isinstance(content, str):
        raise _type_error(f"{where}.content", "a string or an array of content parts", content)
    calls = m.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise _type_error(f"{where}.tool_calls", "an array", calls)
        for j, c in enumerate(calls):
            if not isinstance(c, dict):
                raise _type_error(f"{where}.tool_calls[{j}]", "an object", c)
    if role == "tool" and not isinstance(m.get("tool_call_id"), str):
        raise InvalidRequest(
            f"Missing required parameter: '{where}.tool_call_id'.", param=f"{where}.tool_call_id"
        )


# Content part types the upstream reads as something other than text, and the finding type
# each counts as. A type not listed here and not text is UNINSPECTED_CONTENT.
_UNINSPECTED_PARTS = {
    "image_url": UNINSPECTED_IMAGE,
    "input_image": UNINSPECTED_IMAGE,
    "input_audio": UNINSPECTED_AUDIO,
    "file": UNINSPECTED_FILE,
    "input_file": UNINSPECTED_FILE,
}
_TEXT_PARTS = frozenset({"text", "input_text", "output_text", "refusal"})


def _uninspected_parts(messages: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in messages:
        c = m.get("content")
        if isinstance(c, list):
            for part in c:
                ptype = part.get("type") if isinstance(part, dict) else None
                ptype = ptype if isinstance(ptype, str) else ""  # a list is not hashable
                if ptype not in _TEXT_PARTS or not isinstance(part.get("text", ""), str):
                    kind = _UNINSPECTED_PARTS.get(ptype, UNINSPECTED_CONTENT)
                    counts[kind] = counts.get(kind, 0) + 1
    return counts


def text_slots(kind: str, body: dict[str, Any]) -> list[tuple[Any, Any]]:
    """Where every text the upstream would read sits in a parsed body, as ``(container, key)``
    pairs with ``container[key]`` a string: what the classifier scans, and exactly what
    redaction and pseudonymisation rewrite (one list for both, so they cannot drift apart).

    Chat: each message's content (strings, text and refusal parts) and participant ``name``,
    the arguments of earlier tool and function calls, a predicted output, the tool and function
    definitions (descriptions, and every value in their parameter schemas: descriptions, enums,
    defaults, examples), a structured-output schema, ``metadata`` values, ``stop`` sequences
    and ``user`` (often an e-mail or a person's id). Embeddings: the text inputs and ``user``.
    Every kind: every string of any other top-level field, except identifiers and enumerations
    (``_other_slots``). Token ids, images, audio and files are counted by ``uninspected()``.

    Left out because rewriting them would break the request, and they are identifiers rather
    than prose: tool and schema names (``^[a-zA-Z0-9_-]+$`` upstream), JSON Schema keywords
    (``type``, ``format``, ``pattern``, ``$ref``, ``required``) and object keys.
    """
    return inspected(kind, body)[0]


def _known_slots(kind: str, body: dict[str, Any], slots: list[tuple[Any, Any]]) -> None:
    if kind == "responses":
        _responses_slots(body, slots)
        return
    if kind == "completions":
        prompt = body["prompt"]
        if isinstance(prompt, str):
            slots.append((body, "prompt"))
        else:
            slots.extend((prompt, i) for i, x in enumerate(prompt) if isinstance(x, str))
        if isinstance(body.get("suffix"), str):
            slots.append((body, "suffix"))
        _stop_slots(body, slots)
        if isinstance(body.get("user"), str):
            slots.append((body, "user"))
        return
    if kind == "embeddings":
        inp = body["input"]
        if isinstance(inp, str):
            slots.append((body, "input"))
        else:
            slots.extend((inp, i) for i, x in enumerate(inp) if isinstance(x, str))
    else:
        for m in body["messages"]:
            if isinstance(m.get("name"), str):
                slots.append((m, "name"))
            _content_slots(m, slots)
            for call in m.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    slots.append((fn, "arguments"))
            fc = m.get("function_call")
            if isinstance(fc, dict) and isinstance(fc.get("arguments"), str):
                slots.append((fc, "arguments"))
        prediction = body.get("prediction")
        if isinstance(prediction, dict):
            _content_slots(prediction, slots)
        for key in ("tools", "functions"):
            defs = body.get(key)
            if isinstance(defs, list):
                _schema_slots(defs, slots)
        rf = body.get("response_format")
        if isinstance(rf, dict):
            _schema_slots(rf.get("json_schema"), slots)
        meta = body.get("metadata")
        if isinstance(meta, dict):
            slots.extend((meta, k) for k, v in meta.items() if isinstance(v, str))
        _stop_slots(body, slots)
    if isinstance(body.get("user"), str):
        slots.append((body, "user"))


# Top-level fields whose strings are identifiers or enumerations the upstream parses (a model,
# an earlier response's id, a tool to call, a service tier): never text for the model to read,
# and rewriting one (a detector's false positive) would break the request. Scanned, not
# rewritten (see ``inspected``).
_NOT_TEXT_FIELDS = frozenset(
    {
        "model",
        "tool_choice",
        "function_call",
        "previous_response_id",
        "conversation",
        "include",
        "modalities",
        "audio",
        "reasoning_effort",
        "reasoning",
        "service_tier",
        "verbosity",
        "encoding_format",
        "truncation",
        "prompt_cache_retention",
        "stream_options",
        "background",
        "store",
    }
)
# Keys whose string values the upstream parses as identifiers, names or syntax anywhere in a
# request: an item's or a call's id, a tool's name, a URL it fetches, JSON Schema syntax.
# Scanned, not rewritten.
_SYNTAX_KEYS = frozenset(
    {"id", "call_id", "tool_call_id", "item_id", "file_id", "name", "url", "file_url"}
    | {"format", "pattern", "$ref", "$id", "$schema", "$anchor", "$dynamicRef", "required"}
    | {"syntax", "contentEncoding", "contentMediaType", "version", "server_url", "server_label"}
    # An image's or audio's URL (a chat part's ``image_url.url``, a Responses ``input_image``'s
    # ``image_url``): the upstream fetches it, with whatever its path and query carry. A
    # ``data:`` URL is the payload itself and is not read (``_place``).
    | {"image_url", "audio_url"}
)
# Keys whose string values are validated enumerations (a role, a part's type, an image's
# detail): neither scanned nor rewritten.
_ENUM_KEYS = frozenset({"type", "role", "detail", "status", "voice", "object"})
# Payloads sekisho cannot read (images, audio and files as base64, a provider's encrypted
# reasoning): counted as uninspected content where they are content, never scanned (a base64
# image is megabytes of letters), never rewritten.
_PAYLOAD_KEYS = frozenset({"data", "file_data", "encrypted_content"})
# The API's own vocabulary: keys no one chooses. Every other key (a metadata key, a JSON
# Schema property name, a field this gateway does not know yet) is scanned, not rewritten.
_API_KEYS = frozenset(
    {
        "model", "messages", "role", "content", "name", "tool_calls", "id", "type", "function",
        "arguments", "tool_call_id", "refusal", "audio", "text", "image_url", "url", "detail",
        "input_audio", "data", "format", "file", "file_data", "file_id", "filename", "prediction",
        "tools", "parameters", "description", "strict", "functions", "function_call",
        "response_format", "json_schema", "schema", "metadata", "stop", "user", "temperature",
        "top_p", "n", "stream", "stream_options", "include_usage", "max_tokens",
        "max_completion_tokens", "presence_penalty", "frequency_penalty", "logit_bias",
        "logprobs", "top_logprobs", "seed", "service_tier", "parallel_tool_calls", "tool_choice",
        "reasoning_effort", "modalities", "voice", "store", "web_search_options",
        "user_location", "approximate", "city", "country", "region", "timezone",
        "search_context_size", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
        "verbosity", "reasoning_content", "reasoning", "custom", "input", "annotations",
        "instructions", "previous_response_id", "conversation", "include", "background",
        "max_output_tokens", "max_tool_calls", "truncation", "prompt", "variables", "version",
        "call_id", "output", "status", "summary", "encrypted_content", "effort", "item_id",
        "file_url", "encoding_format", "dimensions", "suffix", "echo", "best_of", "grammar",
        "properties", "items", "required", "enum", "const", "default", "examples", "title",
        "additionalProperties", "anyOf", "oneOf", "allOf", "not", "$defs", "definitions", "$ref",
        "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "pattern",
        "nullable", "patternProperties", "prefixItems", "uniqueItems", "multipleOf",
        "exclusiveMinimum", "exclusiveMaximum", "minProperties", "maxProperties", "$schema",
        "$id", "$comment", "readOnly", "writeOnly", "deprecated", "server_label", "server_url",
        "allowed_tools", "require_approval", "headers", "container", "environment",
        "display_width", "display_height", "vector_store_ids", "filters", "ranking_options",
    }
)  # fmt: skip


# A JSON escape: an escaped backslash (kept, so the "u" after it is not read as an escape),
# a surrogate pair, or one \uXXXX.
JSON_ESCAPE = re.compile(
    r"\\\\|\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})"
)


def unescaped(match: re.Match[str]) -> str:
    high, low, single = match.groups()
    if high is not None:
        return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00))
    if single is None:
        return match.group()  # an escaped backslash
    code = int(single, 16)
    # Quotes, backslashes, controls and lone surrogates must stay escaped in a JSON string.
    if code < 0x20 or code in (0x22, 0x5C) or 0xD800 <= code <= 0xDFFF:
        return match.group()
    return chr(code)


def unescape_json_text(text: str) -> str:
    """JSON text with its ``\\uXXXX`` escapes written as the characters they stand for: the
    same JSON value, in characters the classifier reads. Python's ``json.dumps`` escapes every
    non-ASCII character by default, so a tool's result that names 山田太郎 arrives as
    ``\\u5c71\\u7530...``; read as it is, the name would reach the upstream unseen. Text that is
    not JSON is returned as it is (there ``\\u5c71`` is what the writer typed).

    JSON is what Python's ``json`` reads, not only what a strict parser accepts: ``json.dumps``
    also writes NaN and Infinity (a float column's missing value) and a lone surrogate's escape
    (a file name decoded with surrogateescape), and logs are written one document a line.
    Refused as not JSON, such a text went upstream with every name in it still escaped."""
    if "\\u" not in text or not text.lstrip().startswith(("{", "[", '"')):
        return text
    if _is_json(text) or all(_is_json(line) for line in text.splitlines() if line.strip()):
        return JSON_ESCAPE.sub(unescaped, text)
    return text


def _is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            json.loads(text)
        except (ValueError, RecursionError):  # not JSON; nested past the parser's depth
            return False
    return True


def unescape_json_texts(kind: str, body: dict[str, Any]) -> None:
    """Every text of ``text_slots`` that is JSON with ``\\u`` escapes, unescaped in place
    (``unescape_json_text``), before the request is inspected: what is scanned, rewritten and
    sent upstream is then the same text, with nothing hidden behind an escape."""
    for container, key in text_slots(kind, body):
        container[key] = unescape_json_text(container[key])


def inspected(kind: str, body: dict[str, Any]) -> tuple[list[tuple[Any, Any]], list[str]]:
    """``text_slots`` and, besides them, the strings the upstream receives that sekisho scans
    but cannot rewrite without breaking the request: identifiers, names and URLs
    (``_SYNTAX_KEYS``), the strings of ``_NOT_TEXT_FIELDS``, and every key not in the API's
    vocabulary (metadata keys, schema property names). Everything else, at any depth, that
    ``text_slots``' readers of known shapes did not take (an assistant's earlier reasoning, a
    custom tool call's input, a field this gateway does not know yet) becomes a slot too: what
    the upstream receives is either scanned and rewritten, or scanned, or a payload counted as
    uninspected (fail closed)."""
    slots: list[tuple[Any, Any]] = []
    _known_slots(kind, body, slots)
    taken = {(id(container), key) for container, key in slots}
    opaque: list[str] = []
    stack: list[tuple[Any, bool]] = []
    for key, value in body.items():
        if key not in _API_KEYS:
            opaque.append(key)
        if key == "model":
            continue  # a name from the catalogue, or the request was refused already
        if isinstance(value, str):
            if key in _NOT_TEXT_FIELDS or key in _SYNTAX_KEYS:
                opaque.append(value)
            elif (id(body), key) not in taken and key not in _ENUM_KEYS | _PAYLOAD_KEYS:
                slots.append((body, key))
        elif isinstance(value, dict | list):
            stack.append((value, key in _NOT_TEXT_FIELDS))
    while stack:
        node, syntax = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in _API_KEYS:
                    opaque.append(key)
                if isinstance(value, str):
                    _place(node, key, value, syntax or key in _SYNTAX_KEYS, taken, slots, opaque)
                elif isinstance(value, dict | list) and key not in _PAYLOAD_KEYS:
                    stack.append((value, syntax or key in _SYNTAX_KEYS))
        else:
            for i, value in enumerate(node):
                if isinstance(value, str):
                    _place(node, i, value, syntax, taken, slots, opaque)
                elif isinstance(value, dict | list):
                    stack.append((value, syntax))
    return slots, opaque


def _place(
    node: Any,
    key: Any,
    value: str,
    syntax: bool,
    taken: set[tuple[int, Any]],
    slots: list[tuple[Any, Any]],
    opaque: list[str],
) -> None:
    if (id(node), key) in taken or key in _ENUM_KEYS or key in _PAYLOAD_KEYS:
        return
    if value.startswith("data:"):  # a data URL: an image, audio or file as base64
        return
    if syntax:
        opaque.append(value)
    else:
        slots.append((node, key))


def _stop_slots(body: dict[str, Any], slots: list[tuple[Any, Any]]) -> None:
    stop = body.get("stop")
    if isinstance(stop, str):
        slots.append((body, "stop"))
    elif isinstance(stop, list):
        slots.extend((stop, i) for i, x in enumerate(stop) if isinstance(x, str))


def _responses_slots(body: dict[str, Any], slots: list[tuple[Any, Any]]) -> None:
    """Responses API: ``instructions``; the input (a string, or items: messages' text parts,
    earlier function and custom tool calls' arguments and their outputs, earlier reasoning's
    summaries); tool definitions; the structured-output schema (``text.format``); a stored
    prompt's variables; ``metadata`` values; ``user`` and ``safety_identifier``."""
    if isinstance(body.get("instructions"), str):
        slots.append((body, "instructions"))
    inp = body.get("input")
    if isinstance(inp, str):
        slots.append((body, "input"))
    elif isinstance(inp, list):
        for item in inp:
            if not isinstance(item, dict):
                continue
            kind = _item_type(item)
            if kind == "message":
                _content_slots(item, slots)
            elif kind == "function_call" and isinstance(item.get("arguments"), str):
                slots.append((item, "arguments"))
            elif kind == "custom_tool_call" and isinstance(item.get("input"), str):
                slots.append((item, "input"))
            elif kind in ("function_call_output", "custom_tool_call_output"):
                out = item.get("output")
                if isinstance(out, str):
                    slots.append((item, "output"))
                elif isinstance(out, list):
                    _content_slots({"content": out}, slots)
            elif kind == "reasoning":
                for key in ("summary", "content"):
                    parts = item.get(key)  # any other shape: read by ``inspected``'s walk
                    for part in parts if isinstance(parts, list) else ():
                        if isinstance(part, dict) and isinstance(part.get("text"), str):
                            slots.append((part, "text"))
    tools = body.get("tools")
    if isinstance(tools, list):
        _schema_slots(tools, slots)
    text = body.get("text")
    if isinstance(text, dict):
        _schema_slots(text.get("format"), slots)
    prompt = body.get("prompt")
    if isinstance(prompt, dict):
        variables = prompt.get("variables")
        if isinstance(variables, dict):  # strings, or input_text parts (images: uninspected)
            for k, v in variables.items():
                if isinstance(v, str):
                    slots.append((variables, k))
                elif isinstance(v, dict) and isinstance(v.get("text"), str):
                    slots.append((v, "text"))
    meta = body.get("metadata")
    if isinstance(meta, dict):
        slots.extend((meta, k) for k, v in meta.items() if isinstance(v, str))
    for key in ("user", "safety_identifier"):
        if isinstance(body.get(key), str):
            slots.append((body, key))


# Keys whose string values are identifiers or JSON Schema syntax, not text for the model to read:
# rewriting them would make the request invalid. A dict under one of them (a property that
# happens to be called "name") is still walked.
_SCHEMA_SYNTAX = frozenset(
    {
        "name",
        "type",
        "format",
        "pattern",
        "$ref",
        "$id",
        "$schema",
        "$anchor",
        "$dynamicRef",
        "required",
        "syntax",
        "contentEncoding",
        "contentMediaType",
    }
)


def _schema_slots(node: Any, slots: list[tuple[Any, Any]]) -> None:
    """Every string value in a tool definition or a JSON Schema, but syntax (``_SCHEMA_SYNTAX``),
    in a fixed order. Iterative: a schema nested as deep as JSON allows (orjson: 1,024 levels)
    must not exhaust Python's recursion limit."""
    stack: list[Any] = [node]
    while stack:
        item = stack.pop()
        nested: list[Any] = []
        if isinstance(item, dict):
            for k, v in item.items():
                if isinstance(v, str):
                    if k not in _SCHEMA_SYNTAX:
                        slots.append((item, k))
                elif isinstance(v, dict) or (isinstance(v, list) and k not in _SCHEMA_SYNTAX):
                    nested.append(v)
        elif isinstance(item, list):
            for i, v in enumerate(item):
                if isinstance(v, str):
                    slots.append((item, i))
                elif isinstance(v, dict | list):
                    nested.append(v)
        stack.extend(reversed(nested))


def _content_slots(holder: dict[str, Any], slots: list[tuple[Any, Any]]) -> None:
    c = holder.get("content")
    if isinstance(c, str):
        slots.append((holder, "content"))
    elif isinstance(c, list):
        for part in c:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                slots.append((part, "text"))
            elif isinstance(part.get("refusal"), str):  # an assistant's earlier refusal
                slots.append((part, "refusal"))


def _optional(body: dict[str, Any], key: str, typ: type, what: str) -> Any:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, typ) or (typ is not bool and isinstance(v, bool)):
        raise _type_error(key, what, v)
    return v


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> None:
    v = body.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _type_error(key, "a number", v)
    if not lo <= v <= hi:
        raise InvalidRequest(
            f"Invalid '{key}': {v} is out of range; expected a value between {lo:g} and {hi:g}.",
            param=key,
        )


def _integer(body: dict[str, Any], key: str, lo: int | None, hi: int | None) -> None:
    v = body.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise _type_error(key, "an integer", v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise InvalidRequest(f"Invalid '{key}': {v}; expected an integer {bounds}.", param=key)


def _type_error(param: str, expected: str, got: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(got)}.",
        param=param,
    )


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a decimal"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__
