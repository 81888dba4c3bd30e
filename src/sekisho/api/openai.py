"""OpenAI-compatible routes: chat completions, the Responses API and legacy completions (each
with SSE streaming), embeddings, models."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import unquote

from sekisho._conversations import (
    Owned,
    TurnNotKept,
    input_items,
    keeps_conversations,
    kept_turn,
    request_of,
    response_object,
)
from sekisho.api import http
from sekisho.api.schema import (
    parse_chat,
    parse_completions,
    parse_embeddings,
    parse_responses,
    unescape_json_texts,
)
from sekisho.call import Call, Kind, Reply, StreamReply, TenantView
from sekisho.errors import (
    AuthenticationFailed,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    quoted_id,
)
from sekisho.identity import KeyStore, Principal
from sekisho.pipeline import Pipeline
from sekisho.routing import Catalogue, Route
from sekisho.store import Stores


def authenticate(scope: http.Scope, keys: KeyStore) -> Principal:
    auth = http.header(scope, b"authorization")
    token = None
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            token = value.strip()
    if token is None:
        token = http.header(scope, b"api-key")
    if not token:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-sekisho-...'."
        )
    return keys.authenticate(token)


class _Parsed(Protocol):
    """What every request parser returns (``api.schema``)."""

    body: dict[str, Any]
    model: str

    def texts(self) -> list[str]: ...

    def parts(self) -> tuple[list[str], list[str]]: ...

    def uninspected(self) -> dict[str, int]: ...


async def _run(
    pipeline: Pipeline,
    principal: Principal,
    rid: str,
    scope: http.Scope,
    kind: Kind,
    req: _Parsed,
    *,
    stream: bool = False,
    include_usage: bool = False,
) -> Reply | StreamReply:
    # A tool's JSON result with its non-ASCII escaped (json.dumps' default) is read, and
    # sent, as the characters it stands for.
    unescape_json_texts(kind, req.body)
    texts, opaque = req.parts()
    call = Call(
        request_id=rid,
        principal=principal,
        kind=kind,
        model=req.model,
        body=req.body,
        texts=texts,
        opaque=opaque,
        uninspected=req.uninspected(),
        stream=stream,
        include_usage=include_usage,
        declared_classification=_declared(scope),
    )
    return await pipeline.run(call)


async def chat_completions(
    pipeline: Pipeline, principal: Principal, rid: str, raw: bytes, scope: http.Scope
) -> Reply | StreamReply:
    req = parse_chat(raw)
    return await _run(
        pipeline, principal, rid, scope, "chat", req,
        stream=req.stream, include_usage=req.include_usage,
    )  # fmt: skip


async def responses(
    pipeline: Pipeline, principal: Principal, rid: str, raw: bytes, scope: http.Scope
) -> Reply | StreamReply:
    req = parse_responses(raw)
    # A Responses stream always ends with its usage: nothing to drop for the client.
    return await _run(
        pipeline, principal, rid, scope, "responses", req,
        stream=req.stream, include_usage=req.stream,
    )  # fmt: skip


async def completions(
    pipeline: Pipeline, principal: Principal, rid: str, raw: bytes, scope: http.Scope
) -> Reply | StreamReply:
    req = parse_completions(raw)
    return await _run(
        pipeline, principal, rid, scope, "completions", req,
        stream=req.stream, include_usage=req.include_usage,
    )  # fmt: skip


async def embeddings(
    pipeline: Pipeline, principal: Principal, rid: str, raw: bytes, scope: http.Scope
) -> Reply | StreamReply:
    return await _run(pipeline, principal, rid, scope, "embeddings", parse_embeddings(raw))


def _declared(scope: http.Scope) -> str | None:
    """The declared classification header; non-ASCII names such as 機密性3 arrive
    percent-encoded (HTTP header values are ASCII)."""
    values = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-sekisho-classification"]
    if not values:
        return None
    # Sent twice, it is one list (RFC 9110 §5.3): "public, restricted" is no level, so the
    # request is restricted (fail closed), never the first line's level alone.
    value = ", ".join(values)
    return unquote(value) if "%" in value else value


def list_models(
    catalogue: Catalogue,
    principal: Principal,
    allowed: frozenset[str] | None,
    usable: Callable[[str, tuple[Route, ...]], bool] | None = None,
) -> dict[str, Any]:
    """Only what the caller may use: the key's model list, the tenant's model allow list, and
    (``usable``) models the tenant's policy lets a plain request reach at all."""
    data = []
    for name in catalogue.model_names:
        if principal.models is not None and name not in principal.models:
            continue
        if allowed is not None and name not in allowed:
            continue
        routes = catalogue.routes(name)
        if usable is not None and not usable(name, routes):
            continue
        data.append(
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "sekisho",
                "sekisho": {
                    "kind": routes[0].model.kind,
                    "apis": _apis(routes),
                    "endpoints": [r.endpoint.id for r in routes],
                    "jurisdictions": sorted(
                        {
                            f"{r.endpoint.jurisdiction.country}/{r.endpoint.jurisdiction.region}"
                            for r in routes
                        }
                    ),
                },
            }
        )
    return {"object": "list", "data": data}


def _apis(routes: tuple[Route, ...]) -> list[str]:
    """The APIs the model can be called through here: those some endpoint serving it speaks."""
    if routes[0].model.kind == "embedding":
        return ["embeddings"]
    apis = ["chat.completions"]
    if any(r.endpoint.responses_api for r in routes):
        apis.append("responses")
    if any(r.endpoint.completions_api for r in routes):
        apis.append("completions")
    return apis


def get_model(listing: dict[str, Any], model: str) -> dict[str, Any]:
    for m in listing["data"]:
        if m["id"] == model:
            return dict(m)
    raise NotFound(
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def now() -> float:
    return time.perf_counter()


class Audit(Protocol):
    async def admin(
        self, actor: str, action: str, target: str, details: dict[str, object]
    ) -> None: ...


_RESPONSES = "/v1/responses/"


async def kept_response(
    stores: Stores | None,
    tenant: TenantView,
    principal: Principal,
    audit: Audit,
    method: str,
    path: str,
    query: dict[str, str],
    rid: str,
    owned: Owned | None = None,
) -> dict[str, Any]:
    """``GET /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items`` for the responses
    sekisho keeps in the tenant's home region (``resp_sk…``). Each read is a ledger entry
    (who read which response) before anything is returned; ``DELETE`` is refused, because
    how long an exchange is kept is the tenant's retention policy, not the application's."""
    response, _, rest = path[len(_RESPONSES) :].partition("/")
    response = unquote(response)
    if rest not in ("", "input_items", "cancel") or (method == "POST" and rest != "cancel"):
        # e.g. POST /v1/responses/input_tokens (the SDK's responses.input_tokens.count) or
        # /v1/responses/compact: not a response's id, and not an API sekisho serves.
        raise NotFound(
            f"sekisho does not serve {method} {path[:120]!r}. It serves POST /v1/responses, "
            "and GET /v1/responses/{id} and /v1/responses/{id}/input_items for the responses "
            "it keeps.",
            code="unknown_url",
        )
    if rest == "cancel":
        raise InvalidRequest(
            "Only background responses can be cancelled, and sekisho does not run background "
            "responses (a provider would keep them).",
            code="provider_feature_not_allowed",
        )
    deleting = method == "DELETE" and rest == ""
    if method != "GET" and not deleting:
        allow = ("GET", "DELETE") if rest == "" else ("GET",)
        raise MethodNotAllowed(f"{path} accepts {' or '.join(allow)}, not {method}.", allow=allow)
    if not keeps_conversations(tenant) or request_of(response) is None:
        where = (
            "tenant {name!r} lets its providers keep responses (provider_features: [store]), "
            "and responses kept at a provider are not fetched through sekisho"
            if not keeps_conversations(tenant)
            else "it is not an id of a response sekisho keeps (resp_sk…)"
        ).format(name=tenant.name)
        raise NotFound(f"No response {quoted_id(response)}: {where}.", code="response_not_found")
    try:
        turn = await kept_turn(stores, tenant, response, owned)
    except TurnNotKept as exc:
        raise NotFound(
            f"No response {quoted_id(response)}: {exc}.", code="response_not_found"
        ) from None
    if deleting:  # one that exists and is the caller's (else 404, as for GET)
        raise PermissionDenied(
            f"Response {quoted_id(response)} is kept by tenant {tenant.name!r}'s retention policy "
            "in its home-region store, for as long as that policy says; an application cannot "
            "delete it. An operator can restrict its use (利用停止) or erase a data subject's "
            "records (sekisho subject restrict / sekisho subject delete).",
            code="retention_policy",
        )
    if not rest and query.get("stream", "false") != "false":
        # The SDK's responses.retrieve(id, stream=True): it reads an event stream, and read a
        # JSON answer as one without a single event, silently.
        raise InvalidRequest(
            f"Response {quoted_id(response)} cannot be streamed: 'stream' resumes the stream of "
            "a background response, and sekisho runs no background responses (every response "
            "it keeps is complete). Retrieve it without 'stream'.",
            param="stream",
        )
    what = "responses.input_items" if rest else "responses.retrieve"
    await audit.admin(principal.actor, what, response, {"request_id": rid, "tenant": tenant.name})
    if not rest:
        return response_object(response, turn)
    return list_page(input_items(response, turn), query)


def list_page(items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    """One page of a list, as the OpenAI API pages: ``order`` (desc by default), ``limit``
    (1-100, 20 by default), ``after`` (the items following that id) or ``before`` (the items
    just preceding it), in that order."""
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Query parameter 'order' must be 'asc' or 'desc'.", param="order")
    limit = http.int_param(query, "limit") if "limit" in query else 20
    if not 1 <= limit <= 100:
        raise InvalidRequest("Query parameter 'limit' must be from 1 to 100.", param="limit")
    ordered = items if order == "asc" else items[::-1]
    ids = [i["id"] for i in ordered]
    for cursor in ("after", "before"):
        if cursor in query and query[cursor] not in ids:
            raise InvalidRequest(f"No item {query[cursor][:80]!r} to list {cursor}.", param=cursor)
    if "after" in query:
        ordered = ordered[ids.index(query["after"]) + 1 :]
        page, more = ordered[:limit], len(ordered) > limit
    elif "before" in query:
        ordered = ordered[: ids.index(query["before"])]
        page, more = ordered[-limit:], len(ordered) > limit
    else:
        page, more = ordered[:limit], len(ordered) > limit
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": more,
    }
