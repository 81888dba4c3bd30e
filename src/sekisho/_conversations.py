"""Responses API conversations kept in the tenant's home region (会話履歴の国内保管).

A tenant that does not let the provider keep responses (no ``store`` in its provider features)
gets response ids of sekisho's own (``resp_sk…``); a later request's ``previous_response_id``
naming one is continued from the tenant's home-region store: the earlier turn's input and
output are read back, their pseudonyms restored, and sent upstream as this request's first
input items, with ``store: false``. The whole conversation is then inspected and decided on
afresh, as any request is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sekisho._output import json_string_escape
from sekisho.api.schema import ResponsesRequest
from sekisho.call import Call, TenantView
from sekisho.classify import Pseudonymiser
from sekisho.errors import InvalidRequest
from sekisho.store import Stores


async def continue_conversation(stores: Stores | None, call: Call, tenant: TenantView) -> None:
    """A Responses request that continues an earlier one (``previous_response_id``), for a
    tenant that keeps its conversations itself rather than at the provider: the earlier
    turn's input and output come back from the tenant's home-region store and go upstream
    as this request's first input items. All of it is inspected and decided on afresh."""
    previous = call.body["previous_response_id"]
    request_id = request_of(previous)
    kept = None
    if request_id is not None and stores is not None:
        store = stores.for_tenant(tenant.name, tenant.home_region)
        kept = await store.kept(request_id)
    if kept is None or not kept.usable or kept.prompt is None:
        if kept is not None and kept.mode != "full":
            why = (
                "its turn was kept without its content (retention mode "
                f"{kept.mode!r}, as the tenant's retention policy says for its level)"
            )
        elif kept is not None:
            why = "its turn has expired or is restricted (利用停止)"
        else:
            why = "sekisho keeps no such response for this tenant"
        raise InvalidRequest(
            f"Cannot continue from previous_response_id {str(previous)[:80]!r}: {why}. "
            "Send the whole conversation as input instead.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    earlier = reidentified(kept.prompt, kept.pseudonym_map)
    answer = reidentified(kept.output, kept.pseudonym_map) if kept.output else []
    body = call.body
    body["input"] = (
        as_input_items(earlier.get("input") if isinstance(earlier, dict) else None)
        + output_as_input(answer)
        + as_input_items(body.get("input"))
    )
    del body["previous_response_id"]
    req = ResponsesRequest(body, call.model, call.stream)
    call.texts = req.texts()
    call.uninspected = req.uninspected()


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
    """Stored JSON with its placeholders restored (values escaped for JSON strings)."""
    text = raw.decode()
    if mapping:
        text = Pseudonymiser(mapping).reidentify(text, json_string_escape)
    return orjson.loads(text)


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
