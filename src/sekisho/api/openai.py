"""OpenAI-compatible routes: chat completions, the Responses API and legacy completions (each
with SSE streaming), embeddings, models."""

from __future__ import annotations

import time
from typing import Any, Protocol
from urllib.parse import unquote

from sekisho.api import http
from sekisho.api.schema import parse_chat, parse_completions, parse_embeddings, parse_responses
from sekisho.call import Call, Kind, Reply, StreamReply
from sekisho.errors import AuthenticationFailed, NotFound
from sekisho.identity import KeyStore, Principal
from sekisho.pipeline import Pipeline
from sekisho.routing import Catalogue, Route


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
    call = Call(
        request_id=rid,
        principal=principal,
        kind=kind,
        model=req.model,
        body=req.body,
        texts=req.texts(),
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
    value = http.header(scope, b"x-sekisho-classification")
    if value is None:
        return None
    return unquote(value) if "%" in value else value


def list_models(
    catalogue: Catalogue, principal: Principal, allowed: frozenset[str] | None
) -> dict[str, Any]:
    """Only what the caller may use: the key's model list and the tenant's model allow list."""
    data = []
    for name in catalogue.model_names:
        if principal.models is not None and name not in principal.models:
            continue
        if allowed is not None and name not in allowed:
            continue
        routes = catalogue.routes(name)
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
