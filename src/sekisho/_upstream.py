"""Dispatch plumbing: how the pipeline reads an upstream answer before committing to it.

A route counts as answered only when its body parsed (non-streaming) or its first event arrived
(streaming); until then nothing has reached the client, so the pipeline may still fail over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from sekisho.api.schema import MAX_DEPTH, nesting_depth
from sekisho.errors import SekishoError
from sekisho.providers import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamStatusError,
)
from sekisho.routing.health import EndpointHealth


class Primed:
    """A streaming response whose first line has already been read, so a stream that dies
    before its first event still counts as a failed attempt (and fails over)."""

    def __init__(self, inner: UpstreamResponse, first: list[bytes]) -> None:
        self._inner = inner
        self._first = first
        self.status = inner.status
        self.headers = inner.headers

    @classmethod
    async def prime(cls, inner: UpstreamResponse, endpoint_id: str) -> Primed:
        it = inner.lines()
        first: list[bytes] = []
        try:
            async for line in it:
                first.append(line)
                if line.startswith(b"data:"):
                    break
        except UpstreamError:
            inner.close()
            raise
        except asyncio.CancelledError:
            inner.close()
            raise
        if not first or not first[-1].startswith(b"data:"):
            inner.close()
            raise UpstreamProtocolError(endpoint_id, "stream ended before its first event")
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


class Released:
    """Give the endpoint's slot back exactly once, when the response is done."""

    def __init__(self, inner: UpstreamResponse, state: EndpointHealth) -> None:
        self._inner = inner
        self._state = state
        self._open = True
        self.status = inner.status
        self.headers = inner.headers

    def _done(self) -> None:
        if self._open:
            self._open = False
            self._state.release()

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


def parse_answer(raw: bytes, endpoint_id: str, kind: str | None = None) -> dict[str, Any]:
    """The endpoint's JSON answer; with ``kind``, it must be that API's answer (fail closed:
    output inspection reads only where that API puts its texts)."""
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
    return data


def client_error_from(exc: UpstreamStatusError) -> SekishoError:
    """A 4xx from upstream is about the request: pass its message on, in OpenAI's shape, with
    the ``type``, ``param`` and ``code`` the endpoint gave (the SDKs and clients read them:
    ``param`` names the field to fix). Servers that answer errors in other shapes are read
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
            message = f"The endpoint rejected the request: {text[:2000]}"
        if isinstance(err, dict):
            given = err.get("code")
            code = given if isinstance(given, str) and given else code
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
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def count(v: Any) -> int:
    """A token count as an upstream reported it; anything but an integer counts as 0."""
    return v if isinstance(v, int) and not isinstance(v, bool) else 0
