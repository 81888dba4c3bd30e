"""Just enough ASGI: read a bounded body, send JSON, send an OpenAI-shaped error, stream SSE.

sekisho's hot path is a handful of routes, so it speaks ASGI directly instead of through a
framework: every step of a request can be read and stepped through here.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson

from sekisho._ids import time_ordered_id
from sekisho.errors import (
    InvalidRequest,
    RequestTimeout,
    RequestTooLarge,
    SekishoError,
    UnsupportedMediaType,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Seconds a client has for a request's headers, and again for its body
# (server.read_timeout_seconds).
READ_TIMEOUT = 30.0
# Seconds writing to a client may make no progress (its connection's buffers stay full)
# before the connection is ended (server.write_timeout_seconds).
WRITE_TIMEOUT = 60.0
# Largest request line and headers accepted (server.max_header_bytes).
MAX_HEADER_BYTES = 65536
# Where the gateway's lifespan leaves those settings for the HTTP protocol (api/protocol.py).
READ_TIMEOUT_STATE = "sekisho.read_timeout"
WRITE_TIMEOUT_STATE = "sekisho.write_timeout"
MAX_HEADER_STATE = "sekisho.max_header_bytes"
HEAD_REFUSED_STATE = "sekisho.head_refused"  # a callable(reason) that counts a refused head

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
JSON = b"application/json"


def header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


def request_id(scope: Scope) -> str:
    """The client's x-request-id when it is sane, else a new one."""
    given = header(scope, b"x-request-id")
    if given and _REQUEST_ID.match(given):
        return given
    return new_request_id()


def new_request_id() -> str:
    return time_ordered_id("req_")


async def read_body(
    scope: Scope, receive: Receive, limit: int, timeout: float = READ_TIMEOUT
) -> bytes:
    """The request body, at most ``limit`` bytes, all of it within ``timeout`` seconds (a body
    already received costs no timer); raise RequestTooLarge, RequestTimeout or ClientGone."""
    encoding = header(scope, b"content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        # A compressed body would be read as broken JSON ("not valid UTF-8"), or, inflated,
        # could pass the size limit many times over: say what is wrong instead.
        raise UnsupportedMediaType(
            f"Request bodies are read as they are sent: Content-Encoding {encoding[:40]!r} "
            "is not supported. Send the JSON uncompressed.",
            headers={"accept-encoding": "identity"},  # the codings accepted (RFC 9110 §15.5.16)
        )
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(
            f"The request body is {int(declared)} bytes; this gateway accepts at most {limit} "
            "(server.max_body_bytes)."
        )
    chunks: list[bytes] = []
    size = _take(await receive(), chunks, 0, limit)
    if size < 0:
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    try:
        async with asyncio.timeout(timeout):
            while size >= 0:
                size = _take(await receive(), chunks, size, limit)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {timeout:g} s "
            "(server.read_timeout_seconds); the connection is closed.",
            headers={"connection": "close"},
        ) from None
    return b"".join(chunks)


def _take(msg: Message, chunks: list[bytes], size: int, limit: int) -> int:
    """Add one receive() message's body to ``chunks``; the size so far, or -1 at the end."""
    if msg["type"] == "http.disconnect":
        raise ClientGone()
    chunk = msg.get("body", b"")
    if chunk:
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(
                f"The request body exceeds {limit} bytes (server.max_body_bytes)."
            )
        chunks.append(chunk)
    return size if msg.get("more_body", False) else -1


class ClientAddress:
    """Who sent a request, for the log: the connection's peer, or, when the peer is one of the
    ``trusted`` proxies, the nearest address in X-Forwarded-For that is not (a client cannot
    forge its way past a proxy that appends what it saw)."""

    def __init__(self, trusted: Sequence[str] = ()) -> None:
        self._trusted = [ipaddress.ip_network(t, strict=False) for t in trusted]

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def of(self, scope: Scope) -> str | None:
        peer = scope.get("client")
        host: str | None = str(peer[0]) if peer else None
        if host is None or not self._trusted or not self._is_trusted(host):
            return host
        forwarded = header(scope, b"x-forwarded-for")
        if not forwarded:
            return host
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop[:64]
        return hops[0][:64] if hops else host


def query(scope: Scope) -> dict[str, str]:
    from urllib.parse import parse_qsl

    raw = scope.get("query_string", b"").decode("latin-1")
    return dict(parse_qsl(raw))


_MAX_INDEX = 2**63 - 1  # a log index or size: what SQLite and PostgreSQL store


def _index(value: str | None) -> int | None:
    """A non-negative ASCII integer a database can hold, or None."""
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 19:
        return None
    number = int(value)
    return number if number <= _MAX_INDEX else None


def int_param(query: dict[str, str], name: str) -> int:
    number = _index(query.get(name))
    if number is None:
        raise InvalidRequest(
            f"Query parameter '{name}' must be a non-negative integer (at most {_MAX_INDEX}).",
            param=name,
        )
    return number


def int_segment(path: str, prefix: str) -> int:
    value = path[len(prefix) :]
    number = _index(value)
    if number is None:
        raise InvalidRequest(
            f"'{value[:40]}' is not a log index (a non-negative integer, at most {_MAX_INDEX})."
        )
    return number


class ClientGone(Exception):
    """The client disconnected before we answered."""


class ClientStalled(ClientGone):
    """The client stopped reading the answer: nothing written to it drained for
    ``server.write_timeout_seconds``, and its connection was ended (api/protocol.py)."""


def _headers(
    rid: str, extra: list[tuple[str, str]] | None, ctype: bytes
) -> list[tuple[bytes, bytes]]:
    h = [(b"content-type", ctype), (b"x-request-id", rid.encode())]
    if extra:
        h.extend((k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in extra)
    return h


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    rid: str,
    extra: list[tuple[str, str]] | None = None,
    ctype: bytes = JSON,
) -> None:
    headers = _headers(rid, extra, ctype)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, obj: Any, rid: str, extra: list[tuple[str, str]] | None = None
) -> None:
    await send_bytes(send, status, orjson.dumps(obj), rid, extra)


# The code of the error the current request was answered with (set by send_error): the
# gateway's log line names it whichever handler answered.
answered_error: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sekisho_answered_error", default=None
)


# The longest Retry-After the OpenAI SDKs wait out before retrying by themselves (the Python
# SDK's limit; the Node SDK sleeps for any Retry-After, however long).
SDK_RETRY_WAIT = 120


async def send_error(send: Send, exc: SekishoError, rid: str) -> None:
    answered_error.set(exc.code)
    extra = list(exc.headers.items())
    if _waits_past_retries(exc.headers):
        # A longer wait is the application's to decide on: a client that retries by itself
        # would sit silently through it, twice (a provider's quota may ask for an hour).
        extra.append(("x-should-retry", "false"))
    await send_bytes(send, exc.status, orjson.dumps(exc.body()), rid, extra)


def _waits_past_retries(headers: dict[str, str]) -> bool:
    """Whether an error asks for a wait longer than the SDKs wait out, and says nothing itself
    of retrying."""
    lowered = {k.lower(): v for k, v in headers.items()}
    wait = lowered.get("retry-after", "")
    return "x-should-retry" not in lowered and wait.isdigit() and int(wait) > SDK_RETRY_WAIT


async def start_stream(send: Send, rid: str, extra: list[tuple[str, str]]) -> None:
    headers = _headers(rid, extra, b"text/event-stream; charset=utf-8")
    headers.append((b"cache-control", b"no-cache"))
    headers.append((b"x-accel-buffering", b"no"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
