"""Responses API conversations kept in the tenant's home region (会話履歴の国内保管).

A tenant that does not let the provider keep responses (no ``store`` in its provider features)
gets response ids of sekisho's own (``resp_sk…``); a later request's ``previous_response_id``
naming one is continued from the tenant's home-region store: the earlier turn's input and
output are read back, their pseudonyms restored, and sent upstream as this request's first
input items, with ``store: false``. The whole conversation is then inspected and decided on
afresh, as any request is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sekisho._output import json_string_escape
from sekisho.api.schema import ResponsesRequest
from sekisho.call import Call, TenantView
from sekisho.classify import Pseudonymiser
from sekisho.errors import InvalidRequest, quoted_id
from sekisho.store import KeptExchange, Stores


class TurnNotKept(Exception):
    """A ``resp_sk…`` id that names no usable turn; the message says why."""


@dataclass(frozen=True, slots=True)
class KeptTurn:
    """A Responses turn as the tenant's store keeps it, its pseudonyms restored."""

    exchange: KeptExchange
    prompt: dict[str, Any]  # {"instructions": ..., "input": ...} as sent upstream
    output: list[Any]  # the output items as the client got them


# Whether a request was made by the caller now asking for its turn (recorder.made_by, with the
# caller's lineage bound): a kept conversation is its caller's, not every key's of the tenant.
Owned = Callable[[str], Awaitable[bool]]


async def kept_turn(
    stores: Stores | None, tenant: TenantView, response: str, owned: Owned | None = None
) -> KeptTurn:
    """The turn behind one of sekisho's response ids, from the tenant's home-region store.
    Raises ``TurnNotKept`` for an id that is not one of sekisho's, not this tenant's, not made
    by this caller (``owned``; the same answer as an unknown id, so ids cannot be probed), kept
    without its content, expired, restricted (利用停止), or a request of another API."""
    request_id = request_of(response)
    kept = None
    if request_id is not None and stores is not None:
        kept = await stores.for_tenant(tenant.name, tenant.home_region).kept(request_id)
    if kept is None or (owned is not None and request_id and not await owned(request_id)):
        raise TurnNotKept("sekisho keeps no such response for this tenant")
    if kept.mode != "full":
        raise TurnNotKept(
            f"its turn was kept without its content (retention mode {kept.mode!r}, as the "
            "tenant's retention policy says for its level)"
        )
    if not kept.usable or kept.prompt is None:
        raise TurnNotKept("its turn has expired or is restricted (利用停止)")
    try:
        prompt = reidentified(kept.prompt, kept.pseudonym_map)
        output = reidentified(kept.output, kept.pseudonym_map) if kept.output else []
    except orjson.JSONDecodeError:  # a chat or completions exchange keeps plain texts
        prompt = output = None
    if not isinstance(prompt, dict) or "input" not in prompt or not isinstance(output, list):
        raise TurnNotKept("sekisho keeps no such response for this tenant")
    return KeptTurn(kept, prompt, output)


async def continue_conversation(
    stores: Stores | None, call: Call, tenant: TenantView, owned: Owned | None = None
) -> None:
    """A Responses request that continues an earlier one (``previous_response_id``), for a
    tenant that keeps its conversations itself rather than at the provider: the earlier
    turn's input and output come back from the tenant's home-region store and go upstream
    as this request's first input items. All of it is inspected and decided on afresh."""
    previous = call.body["previous_response_id"]
    try:
        turn = await kept_turn(stores, tenant, str(previous), owned)
    except TurnNotKept as exc:
        raise InvalidRequest(
            f"Cannot continue from previous_response_id {quoted_id(str(previous))}: {exc}. "
            "Send the whole conversation as input instead.",
            param="previous_response_id",
            code="previous_response_not_found",
        ) from None
    body = call.body
    body["input"] = (
        as_input_items(turn.prompt.get("input"))
        + output_as_input(turn.output)
        + as_input_items(body.get("input"))
    )
    del body["previous_response_id"]
    req = ResponsesRequest(body, call.model, call.stream)
    call.texts, call.opaque = req.parts()
    call.uninspected = req.uninspected()


def response_object(response: str, turn: KeptTurn) -> dict[str, Any]:
    """A kept turn as the Responses API's response object (``GET /v1/responses/{id}``): its
    output as the client got it, its instructions, model, status and usage."""
    ex = turn.exchange
    cut = any(isinstance(i, dict) and i.get("status") == "incomplete" for i in turn.output)
    status = "completed" if ex.status == 200 else "failed"
    if status == "completed" and cut:
        status = "incomplete"
    return {
        "id": response,
        "object": "response",
        "created_at": ex.created_at // 1000,
        "status": status,
        "error": None
        if ex.status == 200
        else {"code": "server_error", "message": f"The request ended with HTTP {ex.status}."},
        "incomplete_details": {"reason": "content_filter"} if status == "incomplete" else None,
        "instructions": turn.prompt.get("instructions"),
        "model": ex.model,
        "output": turn.output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "temperature": None,
        "top_p": None,
        "metadata": {},
        "store": True,  # kept, by sekisho, in the tenant's home region
        "usage": {
            "input_tokens": ex.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": ex.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": ex.prompt_tokens + ex.completion_tokens,
        },
    }


def input_items(response: str, turn: KeptTurn) -> list[dict[str, Any]]:
    """The turn's input as the Responses API lists it: items, oldest first, each with an id
    (a message's string content as one text part)."""
    items: list[dict[str, Any]] = []
    base = response.removeprefix(_RESPONSE_PREFIX)
    for i, raw in enumerate(as_input_items(turn.prompt.get("input"))):
        if not isinstance(raw, dict):
            continue
        item = dict(raw)
        if "role" in item and "type" not in item:
            item["type"] = "message"
        content = item.get("content")
        if item.get("type") == "message" and isinstance(content, str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": content}]
        if not isinstance(item.get("id"), str):
            prefix = "msg" if item.get("type") == "message" else "item"
            item["id"] = f"{prefix}_sk{base}_{i}"
        items.append(item)
    return items


def keeps_conversations(tenant: TenantView) -> bool:
    """A tenant whose Responses conversations are kept by sekisho (its home-region store), not
    by the provider (which is sent ``store: false``)."""
    return "store" not in tenant.provider_features


_RESPONSE_PREFIX = "resp_sk"


def response_id(request_id: str) -> str:
    """The id a client sees for a response sekisho keeps: its request id, recognisably."""
    return _RESPONSE_PREFIX + request_id.removeprefix("req_")


def request_of(response: str) -> str | None:
    if not response.startswith(_RESPONSE_PREFIX) or len(response) > 200:
        return None
    return "req_" + response[len(_RESPONSE_PREFIX) :]


def reidentified(raw: bytes, mapping: Mapping[str, str] | None) -> Any:
    """Stored JSON with its placeholders restored, string by string: a string that is itself
    JSON text (a tool call's arguments, a tool's JSON output) gets each value escaped for a
    JSON string, so that a value with a quote or a backslash keeps it valid."""
    value = orjson.loads(raw)
    if not mapping:
        return value
    return _restore(value, Pseudonymiser(mapping))


def _restore(value: Any, pseudo: Pseudonymiser) -> Any:
    if isinstance(value, str):
        if "<" not in value and "＜" not in value:
            return value
        return pseudo.reidentify(value, json_string_escape if _is_json_text(value) else None)
    if isinstance(value, list):
        return [_restore(v, pseudo) for v in value]
    if isinstance(value, dict):
        return {k: _restore(v, pseudo) for k, v in value.items()}
    return value


def _is_json_text(text: str) -> bool:
    if not text.lstrip().startswith(("{", "[")):
        return False
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def as_input_items(value: Any) -> list[Any]:
    """A Responses ``input`` as a list of items (a string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return list(value) if isinstance(value, list) else []


def output_as_input(output: Any) -> list[Any]:
    """An earlier answer's output items as input items: its messages and tool calls (ids and
    statuses dropped: the provider keeps nothing to refer to; reasoning is not carried)."""
    items: list[Any] = []
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            parts = [
                {"type": "output_text", "text": p["text"]}
                for p in item.get("content") or ()
                if isinstance(p, dict) and isinstance(p.get("text"), str)
            ]
            items.append({"type": "message", "role": "assistant", "content": parts})
        elif kind == "function_call":
            keep = ("call_id", "name", "arguments")
            items.append({"type": "function_call", **{k: item.get(k) for k in keep}})
        elif kind == "custom_tool_call":
            keep = ("call_id", "name", "input")
            items.append({"type": "custom_tool_call", **{k: item.get(k) for k in keep}})
    return items


_ECHOED = ("instructions", "user", "safety_identifier")


def echo_as_sent(response: Any, call: Call) -> None:
    """The request's own fields a Responses answer echoes, as the client sent them: its
    ``previous_response_id`` (the upstream got the provider's, or none when sekisho continued
    the conversation itself), and its instructions, metadata and user with pseudonyms put
    back (a redaction stays: the upstream never saw what it hid)."""
    if not isinstance(response, dict):
        return
    if call.previous_response_id is not None:
        response["previous_response_id"] = call.previous_response_id
    pseudo = call.pseudonymiser
    if pseudo is None:
        return
    for key in _ECHOED:
        value = response.get(key)
        if isinstance(value, str):
            response[key] = pseudo.reidentify(value)
    metadata = response.get("metadata")
    if isinstance(metadata, dict):
        response["metadata"] = {
            k: pseudo.reidentify(v) if isinstance(v, str) else v for k, v in metadata.items()
        }
