"""Dispatch plumbing: how the pipeline reads an upstream answer before committing to it.

A route counts as answered only when its body parsed (non-streaming) or its first event arrived
(streaming); until then nothing has reached the client, so the pipeline may still fail over.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Collection
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from sekisho.api.schema import MAX_DEPTH, nesting_depth
from sekisho.classify import Scanner, redact
from sekisho.errors import SekishoError
from sekisho.providers import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamStatusError,
)
from sekisho.routing.health import EndpointHealth

_BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark


class Primed:
    """A streaming response whose first line has already been read, so a stream that dies
    before its first event still counts as a failed attempt (and fails over)."""

    def __init__(self, inner: UpstreamResponse, first: list[bytes]) -> None:
        self._inner = inner
        self._first = first
        self.status = inner.status
        self.headers = inner.headers

    @classmethod
    async def prime(
        cls,
        inner: UpstreamResponse,
        endpoint_id: str,
        kind: str,
        scanner: Scanner,
        spoken: bool = False,
        secrets: Collection[str] = (),
    ) -> Primed:
        it = inner.lines()
        first: list[bytes] = []
        parts: list[bytes] = []
        start = True
        try:
            async for line in it:
                if start:
                    start = False
                    if line.startswith(_BOM):  # SSE lets a stream begin with one: not data
                        line = line[3:]
                if line.startswith(b"data:"):
                    whole = joined(parts, line[5:].strip())
                    if whole is None:
                        continue  # the event goes on in its next data: line
                    if b"\n" in whole:  # joined: one line again, as the relay passes it on
                        with contextlib.suppress(orjson.JSONDecodeError):
                            whole = orjson.dumps(orjson.loads(whole))
                    first.append(b"data: " + whole)
                    break
                # Comments, event: and id: lines are not kept: the relay reads none of them,
                # and an endpoint may send them without end before its first event.
        except UpstreamError:
            inner.close()
            raise
        except asyncio.CancelledError:
            inner.close()
            raise
        if not first:
            inner.close()
            raise UpstreamProtocolError(endpoint_id, "stream ended before its first event")
        unusable = _unusable_first_event(first[-1][5:].strip(), kind, scanner, spoken, secrets)
        if unusable is not None:  # nothing has reached the client: another endpoint may answer
            inner.close()
            why, said = unusable
            raise UpstreamProtocolError(endpoint_id, why, said)
        p = cls(inner, first)
        p._iter = it
        return p

    _iter: AsyncIterator[bytes]

    async def read(self) -> bytes:
        raise TypeError("a streaming response is read with lines()")

    async def lines(self) -> AsyncIterator[bytes]:
        for line in self._first:
            yield line
        async for line in self._iter:
            yield line

    def close(self) -> None:
        self._inner.close()

    def on_end(self, callback: Callable[[], None]) -> None:
        """``callback`` once the exchange with the endpoint is over (``H1Response.on_end``);
        never, for a response that cannot tell (it is then released by ``close``)."""
        on_end = getattr(self._inner, "on_end", None)
        if on_end is not None:
            on_end(callback)


def joined(parts: list[bytes], payload: bytes) -> bytes | None:
    """One event's data from its ``data:`` lines. SSE lets an event's data span several lines
    (joined with newlines; the OpenAI SDKs join them so): a JSON object that does not end on
    its first line is held in ``parts`` until a line completes it (up to 64 lines and 1 MiB),
    and None is returned meanwhile. The usual event, one line, costs two byte comparisons."""
    if not parts and (payload[:1] != b"{" or payload[-1:] == b"}"):
        return payload
    parts.append(payload)
    # Bounded: an endpoint cannot make sekisho hold or re-parse without end (past the bound
    # the lines so far are the event, and it is read as garbage).
    bounded = len(parts) < 64 and sum(map(len, parts)) < 1 << 20
    if payload[-1:] != b"}" and bounded:
        return None
    whole = b"\n".join(parts)
    if bounded:
        try:
            orjson.loads(whole)
        except orjson.JSONDecodeError:
            return None  # a nested object closed on this line, not the event's
    parts.clear()
    return whole


def _unusable_first_event(
    payload: bytes,
    kind: str,
    scanner: Scanner,
    spoken: bool = False,
    secrets: Collection[str] = (),
) -> tuple[str, str] | None:
    """Why a stream's first event cannot begin an answer (garbage, an error event, the end),
    and what the endpoint said about it (for the client only, see ``UpstreamError``), or None.
    Read before the stream is committed to, so such a stream fails over."""
    if payload == b"[DONE]":
        return "stream ended before its first event", ""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "first stream event is not JSON", ""
    if not isinstance(event, dict):
        return "first stream event is not an object", ""
    error = event.get("error")
    if error or event.get("type") == "error":
        found = error if isinstance(error, dict) else event
        message = found.get("message") if isinstance(found, dict) else None
        said = quote(str(message), scanner, secrets) if message else ""
        return "stream began with an error event", said
    # What the relay (``_streams``) refuses of any event, refused here of the first: found
    # there, it would break a stream that another endpoint could still have answered.
    choices = event.get("choices")
    if kind in ("chat", "completions"):
        if not isinstance(choices, list):
            if choices or not isinstance(event.get("usage"), dict):
                return f"first stream event without 'choices': not a {kind} stream", ""
        elif choices:
            why = choices_problem(choices, kind, "delta", spoken)
            if why is not None:
                return f"first stream event with {why}", ""
    if kind == "responses":
        if not isinstance(event.get("type"), str):
            return "first stream event is not a typed object", ""
        why = response_event_problem(event)
        if why is not None:
            return f"first stream event with {why}", ""
    return None


class Released:
    """Give the endpoint's slot back exactly once, when the response is done: when the
    exchange with the endpoint ends (its last byte arrived, or it failed or timed out), or
    when the response is closed, whichever comes first. A stream its client reads slowly
    does not keep the endpoint's slot once the endpoint has sent all of it."""

    def __init__(self, inner: UpstreamResponse, state: EndpointHealth, tenant: str) -> None:
        self._inner = inner
        self._state = state
        self._tenant = tenant
        self._open = True
        self.status = inner.status
        self.headers = inner.headers
        on_end = getattr(inner, "on_end", None)
        if on_end is not None:
            on_end(self._done)

    def _done(self) -> None:
        if self._open:
            self._open = False
            self._state.release(self._tenant)

    async def read(self) -> bytes:
        try:
            return await self._inner.read()
        finally:
            self._done()

    def lines(self) -> AsyncIterator[bytes]:
        return self._inner.lines()

    def close(self) -> None:
        self._done()
        self._inner.close()


# Where each API's answer keeps what it answers: an answer without it (a server mapping the
# path to another API, a proxy's own reply) would go to the client with nothing inspected.
_ANSWER_LISTS = {
    "chat": "choices",
    "completions": "choices",
    "responses": "output",
    "embeddings": "data",
}


def parse_answer(
    raw: bytes, endpoint_id: str, kind: str | None = None, spoken: bool = False
) -> dict[str, Any]:
    """The endpoint's JSON answer; with ``kind``, it must be that API's answer (fail closed:
    output inspection reads only where that API puts its texts). ``spoken``: the request asked
    for a spoken answer (a chat message may carry ``audio``)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(endpoint_id, "answered with a body that is not JSON") from None
    if not isinstance(data, dict) or (
        "error" in data
        and "choices" not in data
        and "data" not in data
        and data.get("object") != "response"  # a Responses API answer says "error": null
    ):
        raise UpstreamProtocolError(
            endpoint_id, "answered with JSON that is not an OpenAI response"
        )
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and nesting_depth(data) > MAX_DEPTH:
        # orjson could not write it back to the client (255 levels at most)
        raise UpstreamProtocolError(endpoint_id, f"answered with JSON nested over {MAX_DEPTH} deep")
    if kind is not None and not isinstance(data.get(_ANSWER_LISTS[kind]), list):
        raise UpstreamProtocolError(
            endpoint_id,
            f"answered without '{_ANSWER_LISTS[kind]}': not a {kind} answer "
            "(does it serve this API?)",
        )
    if kind in ("chat", "completions"):
        why = choices_problem(data["choices"], kind, "message", spoken)
        if why is not None:
            raise UpstreamProtocolError(endpoint_id, f"answered with {why}")
    elif kind == "responses":
        why = output_problem(data["output"])
        if why is not None:
            raise UpstreamProtocolError(endpoint_id, f"answered with {why}")
    return data


_TEXTS = ("content", "refusal", "reasoning", "reasoning_content")
# Where a choice keeps its text, by where this API and mode keep it: the other places.
_OTHER_SLOTS = {
    "text": ("message", "delta"),  # legacy completions, whole or streamed
    "message": ("delta", "text"),  # a whole chat answer
    "delta": ("message", "text"),  # a chat stream event
}


def choices_problem(choices: list[Any], kind: str, holder: str, spoken: bool = False) -> str | None:
    """What in an answer's (``holder`` "message") or a stream event's (``holder`` "delta")
    choices an OpenAI client could not parse and output inspection could not read, or None.
    Such an answer is not passed on (fail closed): its text would bypass the output rule. A
    spoken answer (``audio``) is one only when the request asked for it (``spoken``): the
    tenant's leave (``provider_features: [audio_output]``) is for requests that do."""
    others = _OTHER_SLOTS["text" if kind == "completions" else holder]
    for choice in choices:
        if not isinstance(choice, dict):
            return "a choice that is not an object"
        if not isinstance(choice.get("index", 0), int):
            return "a choice whose index is not an integer"
        for other in others:
            if choice.get(other) is not None:
                # text where this API keeps none (a chat-shaped stream on /v1/completions, a
                # whole message in a stream): inspection would not read it
                return f"a choice that carries '{other}' where a {kind} answer has none"
        if kind == "completions":
            if not _text_or_none(choice.get("text")):
                return "a choice whose text is not a string"
            continue
        msg = choice.get(holder)
        if msg is None and holder == "delta":
            continue  # a final event may carry only the finish reason
        if not isinstance(msg, dict):
            return f"a choice whose {holder} is not an object"
        for name in _TEXTS:
            value = msg.get(name)
            if value is not None and not isinstance(value, str):
                return f"{holder}.{name} that is not a string"
        calls = msg.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            return f"{holder}.tool_calls that is not a list"
        for call in calls or ():
            if not isinstance(call, dict):
                return "a tool call that is not an object"
            for part, field in (("function", "arguments"), ("custom", "input")):
                inner = call.get(part)
                if inner is not None and (
                    not isinstance(inner, dict) or not _text_or_none(inner.get(field))
                ):
                    return f"a tool call whose {part}.{field} is not a string"
        fc = msg.get("function_call")
        if fc is not None and (not isinstance(fc, dict) or not _text_or_none(fc.get("arguments"))):
            return f"{holder}.function_call whose arguments are not a string"
        notes = msg.get("annotations")
        if notes is not None and (
            not isinstance(notes, list) or not all(isinstance(n, dict) for n in notes)
        ):
            return f"{holder}.annotations that is not a list of objects"
        audio = msg.get("audio")
        if audio is not None:
            if not spoken:
                # audio sekisho cannot inspect, in answer to a request that did not ask for
                # it (and whose tenant may not allow it): never passed on
                return f"{holder}.audio, a spoken answer the request did not ask for"
            if not isinstance(audio, dict) or not _text_or_none(audio.get("transcript")):
                return f"{holder}.audio whose transcript is not a string"
    return None


# What holds a text in each kind of Responses output item, where it is not in a list of
# parts: it must be a string (or absent) for output inspection to read it.
_ITEM_TEXTS = {
    "function_call": "arguments",
    "custom_tool_call": "input",
    "code_interpreter_call": "code",
    "mcp_call": "arguments",
}
# Events carrying one text whole or in part, and the field that holds it.
_EVENT_TEXTS = {
    "response.output_text.delta": "delta",
    "response.refusal.delta": "delta",
    "response.reasoning_summary_text.delta": "delta",
    "response.reasoning_text.delta": "delta",
    "response.function_call_arguments.delta": "delta",
    "response.custom_tool_call_input.delta": "delta",
    "response.code_interpreter_call_code.delta": "delta",
    "response.mcp_call_arguments.delta": "delta",
    "response.output_text.done": "text",
    "response.refusal.done": "refusal",
    "response.reasoning_summary_text.done": "text",
    "response.reasoning_text.done": "text",
    "response.function_call_arguments.done": "arguments",
    "response.custom_tool_call_input.done": "input",
    "response.code_interpreter_call_code.done": "code",
    "response.mcp_call_arguments.done": "arguments",
}


def output_problem(output: Any) -> str | None:
    """What in a Responses answer's ``output`` an OpenAI client could not parse and output
    inspection could not read, or None: items that are not objects, or whose type is not a
    string; a message whose content is not a list of part objects (a string: the shape chat
    answers have, not this API's, refused as chat refuses a list), a part whose text is not
    a string; reasoning whose summary or content is not such a list; a tool call whose
    arguments are not a string. Such an answer is not passed on (fail closed)."""
    if not isinstance(output, list):
        return "'output' that is not a list"
    for item in output:
        why = item_problem(item)
        if why is not None:
            return why
    return None


def item_problem(item: Any) -> str | None:
    """``output_problem`` of one output item."""
    if not isinstance(item, dict):
        return "an output item that is not an object"
    kind = item.get("type")
    if kind is not None and not isinstance(kind, str):
        return "an output item whose type is not a string"
    lists = {"message": ("content",), "reasoning": ("summary", "content")}.get(kind or "", ())
    for name in lists:
        parts = item.get(name)
        if parts is None:
            continue
        if not isinstance(parts, list):
            return f"a {kind} item whose {name} is not a list"
        for part in parts:
            why = part_problem(part)
            if why is not None:
                return f"a {kind} item with {why}"
    field = _ITEM_TEXTS.get(kind or "")
    if field is not None and not _text_or_none(item.get(field)):
        return f"a {kind} item whose {field} is not a string"
    return None


def part_problem(part: Any) -> str | None:
    """What is wrong with a content (or summary) part of a Responses output item, or None."""
    if not isinstance(part, dict):
        return "a part that is not an object"
    for name in ("type", "text", "refusal"):
        if not _text_or_none(part.get(name)):
            return f"a part whose {name} is not a string"
    notes = part.get("annotations")
    if notes is not None and (
        not isinstance(notes, list) or not all(isinstance(n, dict) for n in notes)
    ):
        return "a part whose annotations are not a list of objects"
    return None


def response_event_problem(event: dict[str, Any]) -> str | None:
    """What in one Responses stream event output inspection could not read, or None: a
    response whose output ``output_problem`` refuses, an item or part that is malformed,
    a text (a delta, a done event's text) that is not a string, a citation that is not an
    object."""
    etype = event.get("type")
    field = _EVENT_TEXTS.get(etype) if isinstance(etype, str) else None
    if field is not None and not _text_or_none(event.get(field)):
        return f"a {etype} event whose {field} is not a string"
    if "response" in event and event["response"] is not None:
        response = event["response"]
        if not isinstance(response, dict):
            return "a response that is not an object"
        if response.get("output") is not None:
            return output_problem(response["output"])
    if "item" in event and event["item"] is not None:
        return item_problem(event["item"])
    if "part" in event and event["part"] is not None:
        return part_problem(event["part"])
    if etype == "response.output_text.annotation.added" and not isinstance(
        event.get("annotation"), dict | None
    ):
        return "a citation that is not an object"
    return None


def _text_or_none(value: Any) -> bool:
    """A string, or null (a delta that names a function before its arguments): no text that
    output inspection would have to read."""
    return value is None or isinstance(value, str)


def quote(text: str, scanner: Scanner, secrets: Collection[str] = ()) -> str:
    """What an endpoint wrote in an error, as its client may read it: cut to 1000 characters,
    every finding of the tenant's scanner masked, whatever the output rule says, and each of
    ``secrets`` (the endpoint's credentials, ``Transport.credentials``) masked as [SECRET].
    Servers echo the request in their errors ("invalid value '4111 1111 …'"), and proxies the
    headers they were sent; an error message is no answer the output rule would otherwise
    see. A text that cannot be inspected is withheld (fail closed)."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "[SECRET]")
    text = text[:1000]
    try:
        findings = scanner.scan(text)
    except Exception:
        return "(the endpoint's message is withheld: it could not be inspected)"
    return redact(text, findings) if findings else text


def quote_response_error(response: Any, scanner: Scanner, secrets: Collection[str] = ()) -> None:
    """A failed Responses API answer's ``error.message``, in place, as :func:`quote` says."""
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        error["message"] = quote(error["message"], scanner, secrets)


# An endpoint's error code as sekisho passes it on, and records it in the ledger and the log:
# a word (OpenAI's context_length_exceeded, Azure's DeploymentNotFound). Anything else is the
# endpoint's text, which may echo the request (a My Number, an e-mail address, the prompt):
# the ledger is kept for good, so such a code is upstream_rejected.
_CODE = re.compile(r"[A-Za-z_]{1,64}")


def client_error_from(
    exc: UpstreamStatusError, scanner: Scanner, secrets: Collection[str] = ()
) -> SekishoError:
    """A 4xx from upstream is about the request: pass its message on, in OpenAI's shape, with
    the ``type``, ``param`` and ``code`` the endpoint gave (the SDKs and clients read them:
    ``param`` names the field to fix; a ``code`` that is not a word is ``upstream_rejected``).
    Servers that answer errors in other shapes are read
    too: vLLM's older top-level ``{"object": "error", "message": ...}``, Ollama's and TGI's
    ``{"error": "..."}``, FastAPI's ``{"detail": ...}``."""
    message = f"The endpoint rejected the request (HTTP {exc.status})."
    code = "upstream_rejected"
    etype = "invalid_request_error"
    param: str | None = None
    try:
        body = orjson.loads(exc.body)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if not isinstance(err, dict) and isinstance(body.get("message"), str):
            err = body  # the error's fields at the top level
        text: Any = err.get("message") if isinstance(err, dict) else err
        if text is None:
            text = _detail_text(body.get("detail"))
        if isinstance(text, str) and text:
            message = f"The endpoint rejected the request: {quote(text, scanner, secrets)}"
        if isinstance(err, dict):
            given = err.get("code")
            code = given if isinstance(given, str) and _CODE.fullmatch(given) else code
            given = err.get("type")
            if isinstance(given, str) and given.endswith("_error"):
                etype = given
            given = err.get("param")
            param = given if isinstance(given, str) else None
    e = SekishoError(message, code=code, param=param)
    e.status = exc.status if 400 <= exc.status < 500 else 502
    e.type = etype
    return e


def _detail_text(detail: Any) -> str | None:
    """FastAPI's ``detail``: a string, or validation errors ``[{"loc": [...], "msg": ...}]``."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for d in detail[:5]:
            if isinstance(d, dict) and isinstance(d.get("msg"), str):
                loc = d.get("loc")
                where = ".".join(str(x) for x in loc) if isinstance(loc, list) else ""
                parts.append(f"{where}: {d['msg']}" if where else d["msg"])
        return "; ".join(parts) or None
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# More tokens than any model reads or writes in one request: a count past it is a bug or a
# lie (it would overflow the usage counters' 64-bit sums after a few billion requests).
MAX_TOKENS = 1_000_000_000


def count(v: Any) -> int:
    """A token count as an upstream reported it; anything but an integer from 0 to
    ``MAX_TOKENS`` counts as 0 (not reported: the request is charged an estimate)."""
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_TOKENS:
        return v
    return 0
