"""The upstream HTTP/1.1 client, against tiny servers on 127.0.0.1 that answer exact bytes."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loops import both_loops, event_loop_policy  # noqa: F401  (a fixture)
from proxy_server import ConnectProxy
from sekisho.providers import h1
from sekisho.providers.base import (
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from sekisho.providers.h1 import H1Client, H1Response

Handler = Callable[["Upstream", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
FAST = {"connect": 2.0, "first_byte": 2.0, "total": 5.0}


class Upstream:
    """A server whose handler sees each accepted connection and its number (1, 2, ...)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.requests: list[bytes] = []
        self.request_seen = asyncio.Event()
        self.eof_seen = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Upstream:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/v1/chat/completions", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            await self.handler(self, reader, writer, self.accepted)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request, or None when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.eof_seen.set()
            return None
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        body = await reader.readexactly(int(m.group(1))) if m else b""
        self.requests.append(head + body)
        self.request_seen.set()
        return head + body

    async def wait_eof(self, reader: asyncio.StreamReader) -> None:
        await reader.read()
        self.eof_seen.set()

    async def close(self) -> None:
        for w in self.writers:
            w.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def answering(*responses: bytes, then: str = "wait") -> Handler:
    """Answer each request on a connection with the next response; then wait for the client to
    close (``then="wait"``) or close at once (``then="close"``)."""

    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        for response in responses:
            if await up.read_request(reader) is None:
                return
            writer.write(response)
            await writer.drain()
        if then == "wait":
            await up.wait_eof(reader)

    return handler


def always(response: bytes) -> Handler:
    """Answer every request on every connection with ``response``, keeping connections open."""

    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while await up.read_request(reader) is not None:
            writer.write(response)
            await writer.drain()

    return handler


async def silent(
    up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
) -> None:
    """Read the request, never answer."""
    await up.read_request(reader)
    await up.wait_eof(reader)


pytestmark = both_loops  # every socket test runs on asyncio's loop and on uvloop


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    started: list[Upstream] = []

    async def start(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> Upstream:
        up = await Upstream(handler).start(ssl_context)
        started.append(up)
        return up

    yield start
    for up in started:
        await up.close()


@pytest.fixture
async def client() -> AsyncIterator[H1Client]:
    c = H1Client()
    yield c
    await c.close()


async def post(
    c: H1Client, url: str, body: bytes = b"{}", **kw: float
) -> tuple[int, dict[str, str], H1Response]:
    t = {**FAST, **kw}
    return await c.post(
        url,
        body,
        {"Content-Type": "application/json"},
        connect=t["connect"],
        first_byte=t["first_byte"],
        total=t["total"],
        endpoint_id="ep-test",
    )


async def fetch(c: H1Client, url: str, **kw: float) -> bytes:
    status, _, resp = await post(c, url, b"{}", **kw)
    assert status == 200
    return await resp.read()


# -- the request on the wire ------------------------------------------------------------------


async def test_request_is_post_with_host_length_and_the_headers_verbatim(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(answering(OK))
    status, headers, resp = await client.post(
        up.url("/openai/deployments/d/chat/completions?api-version=2024-10-21"),
        b'{"a":1}',
        {"Content-Type": "application/json", "api-key": "k-1"},
        connect=2,
        first_byte=2,
        total=5,
        endpoint_id="ep",
    )
    assert await resp.read() == b'{"ok":true}'
    assert status == 200
    assert headers == {"content-type": "application/json", "content-length": "11"}
    assert up.requests == [
        b"POST /openai/deployments/d/chat/completions?api-version=2024-10-21 HTTP/1.1\r\n"
        b"Host: 127.0.0.1:" + str(up.port).encode() + b"\r\n"
        b"Content-Length: 7\r\n"
        b"Content-Type: application/json\r\n"
        b"api-key: k-1\r\n"
        b"\r\n"
        b'{"a":1}'
    ]


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb"])
async def test_header_value_with_cr_or_lf_is_refused_before_connecting(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client, value: str
) -> None:
    up = await serve(answering(OK))
    with pytest.raises(ValueError, match="'x-custom' has a CR or LF"):
        await client.post(
            up.url(), b"{}", {"x-custom": value}, connect=1, first_byte=1, total=1, endpoint_id="e"
        )
    await asyncio.sleep(0.02)
    assert up.accepted == 0


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "bad name", "x\r\ny"])
async def test_framing_headers_and_invalid_names_are_refused(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client, name: str
) -> None:
    up = await serve(answering(OK))
    with pytest.raises(ValueError):
        await client.post(
            up.url(), b"{}", {name: "1"}, connect=1, first_byte=1, total=1, endpoint_id="e"
        )
    assert up.accepted == 0


# -- response bodies ---------------------------------------------------------------------------


async def test_content_length_body(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(answering(OK))
    assert await fetch(client, up.url()) == b'{"ok":true}'


async def test_a_body_over_the_cap_is_refused_not_buffered(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h1, "MAX_BODY", 1000)
    big = b"x" * 5000
    up = await serve(always(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + big))
    _, _, resp = await post(client, up.url())
    with pytest.raises(UpstreamProtocolError, match="larger than 1000 bytes"):
        await resp.read()
    assert resp.buffered == 0  # nothing of it is kept
    monkeypatch.setattr(h1, "MAX_BODY", 5000)  # exactly at the cap is fine
    assert await fetch(client, up.url()) == big


async def test_response_headers_over_the_cap_are_refused_not_buffered(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httptools joins a header's pieces by copying and bounds nothing: an upstream sending an
    endless header would grow the gateway's memory until the total timeout."""
    monkeypatch.setattr(h1, "MAX_HEAD", 4096)
    endless = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 20_000
    up = await serve(always(endless))
    with pytest.raises(UpstreamProtocolError, match="response headers larger than 4096 bytes"):
        await post(client, up.url(), total=30)
    # Many headers count as much as one long one (300 KB: more than one read brings).
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 5000) for i in range(60))
    up = await serve(always(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + many + b"\r\n{}"))
    with pytest.raises(UpstreamProtocolError, match="response headers larger"):
        await post(client, up.url())
    # Under the cap, the same head is read.
    monkeypatch.setattr(h1, "MAX_HEAD", 512 * 1024)
    assert await fetch(client, up.url()) == b"{}"


async def test_chunked_body_is_reassembled(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n,\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    up = await serve(always(chunked))
    assert await fetch(client, up.url()) == b"hello, world"
    assert await fetch(client, up.url()) == b"hello, world"
    assert up.accepted == 1  # a chunked body ends cleanly: the connection is reused


async def test_trailers_are_not_merged_into_the_headers(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    """A trailer x-request-id made the upstream request id 'HEADER-ID, TRAILER-ID' (ledger,
    log, client header); RFC 9110 §6.5.1: trailers are not header fields."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Request-Id: HEADER-ID\r\n\r\n"
        b"2\r\n{}\r\n0\r\nX-Request-Id: TRAILER-ID\r\nX-Other: t\r\n\r\n"
    )
    up = await serve(always(chunked))
    status, headers, resp = await post(client, up.url())
    assert status == 200 and await resp.read() == b"{}"
    for seen in (headers, resp.headers):
        assert seen["x-request-id"] == "HEADER-ID" and "x-other" not in seen


async def test_body_until_eof_is_read_and_the_connection_not_reused(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(
        answering(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil EOF", then="close")
    )
    assert await fetch(client, up.url()) == b"until EOF"
    assert await fetch(client, up.url()) == b"until EOF"
    assert up.accepted == 2


async def test_interim_100_continue_is_skipped(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(
        always(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK)
    )
    status, headers, resp = await post(client, up.url())
    assert (status, await resp.read()) == (200, b'{"ok":true}')
    assert "link" not in headers
    assert await fetch(client, up.url()) == b'{"ok":true}'
    assert up.accepted == 1


async def test_error_status_is_returned_with_its_body_and_headers(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    body = b'{"error":"slow down"}'
    up = await serve(
        always(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
    )
    status, headers, resp = await post(client, up.url())
    assert (status, headers["retry-after"], await resp.read()) == (429, "3", body)


async def test_read_with_a_limit_returns_at_most_that_and_drops_the_connection(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    async def big(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000)
        await writer.drain()
        await up.wait_eof(reader)

    up = await serve(big)
    status, _, resp = await post(client, up.url())
    assert status == 500
    assert await resp.read(64 * 1024) == b"x" * (64 * 1024)
    await asyncio.wait_for(up.eof_seen.wait(), 2)


# -- keep-alive and the pool -------------------------------------------------------------------


async def test_keep_alive_connection_is_reused(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(always(OK))
    for _ in range(5):
        assert await fetch(client, up.url()) == b'{"ok":true}'
    assert (up.accepted, len(up.requests)) == (1, 5)


async def test_a_connection_past_its_lifetime_is_replaced_even_when_never_idle(
    serve: Callable[..., Awaitable[Upstream]],
) -> None:
    """An endpoint that moves (DNS failover, a balancer's new addresses) gets the traffic once
    old connections age out: busy ones are never idle long enough to expire."""
    c = H1Client(max_lifetime=0.3)
    try:
        up = await serve(always(OK))
        for _ in range(3):  # back to back: one connection, within its lifetime
            assert await fetch(c, up.url()) == b'{"ok":true}'
        assert up.accepted == 1
        await asyncio.sleep(0.35)
        assert await fetch(c, up.url()) == b'{"ok":true}'  # the old one was closed, not reused
        assert (up.accepted, len(up.requests)) == (2, 4)
        # Aged out while busy too: released past its lifetime, it is closed at once.
        deadline = asyncio.get_running_loop().time() + 0.5
        while asyncio.get_running_loop().time() < deadline:
            assert await fetch(c, up.url()) == b'{"ok":true}'
        assert up.accepted >= 3
    finally:
        await c.close()


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_connection_the_server_will_close_is_not_reused(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client, response: bytes
) -> None:
    up = await serve(always(response))  # the server would even keep it open: we must not
    assert await fetch(client, up.url()) == b"hi"
    assert await fetch(client, up.url()) == b"hi"
    assert up.accepted == 2


async def test_a_connection_answered_before_its_request_was_sent_is_not_reused(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    """A server that answers before reading the request body (an early 401 or 413) and keeps
    the connection reads the rest of that body as the next request: the next caller on the
    connection got the server's answer to someone else's prompt (here a 400 quoting it)."""

    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        if n > 1:
            await always(OK)(up, reader, writer, n)
            return
        await reader.readuntil(b"\r\n\r\n")  # the head only: the body is never read
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
        await writer.drain()
        await asyncio.sleep(0.2)
        echo = b"bad request line: " + (await reader.read(200)).split(b"\r\n")[0]
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(echo), echo)
        )
        await up.wait_eof(reader)

    up = await serve(handler)
    prompt = b'{"content":"' + b"tenant A's secret " * 2_000_000 + b'"}'  # more than sockets buffer
    status, _, resp = await post(client, up.url(), prompt, first_byte=5, total=10)
    assert (status, await resp.read()) == (200, b"early")
    status, _, resp = await post(client, up.url(), b'{"content":"tenant B"}')
    assert (status, await resp.read()) == (200, b'{"ok":true}')
    assert up.accepted == 2


@pytest.mark.parametrize("status", [401, 413, 429, 503])
async def test_a_connection_is_not_reused_after_an_error_answer(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client, status: int
) -> None:
    """An error may come before the server read the request (a proxy's early 401 or 413): a
    body small enough to be all sent sat unread, was read as the next request, and the next
    caller on the connection got the answer to it. Whether it was read cannot be known."""

    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        if n > 1:
            await always(OK)(up, reader, writer, n)
            return
        await reader.readuntil(b"\r\n\r\n")  # the head only: the body is never read
        writer.write(b"HTTP/1.1 %d No\r\nContent-Length: 0\r\n\r\n" % status)
        await asyncio.sleep(0.2)
        echo = b"bad request line: " + (await reader.read(200)).split(b"\r\n")[0]
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(echo) + echo)
        await up.wait_eof(reader)

    up = await serve(handler)
    got, _, resp = await post(client, up.url(), b'{"content":"tenant A\'s secret"}')
    assert (got, await resp.read()) == (status, b"")
    assert await fetch(client, up.url()) == b'{"ok":true}'
    assert up.accepted == 2


async def test_http_1_0_with_keep_alive_is_reused(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(
        always(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi")
    )
    assert await fetch(client, up.url()) == b"hi"
    assert await fetch(client, up.url()) == b"hi"
    assert up.accepted == 1


async def test_idle_connection_closed_by_the_server_is_discarded(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(answering(OK, then="close"))  # answers, then closes while we are idle
    assert await fetch(client, up.url()) == b'{"ok":true}'
    await asyncio.sleep(0.05)
    assert await fetch(client, up.url()) == b'{"ok":true}'
    assert (up.accepted, len(up.requests)) == (2, 2)  # the dead one was never written to


async def test_reused_connection_closed_before_answering_is_retried_once_on_a_fresh_one(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        writer.write(OK)
        if n == 1:  # the keep-alive race: the second request meets a closing connection
            await up.read_request(reader)
            return
        await up.wait_eof(reader)

    up = await serve(handler)
    assert await fetch(client, up.url()) == b'{"ok":true}'
    assert await fetch(client, up.url()) == b'{"ok":true}'
    assert (up.accepted, len(up.requests)) == (2, 3)


async def test_the_retry_happens_only_once(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        if n == 1:
            writer.write(OK)
            await up.read_request(reader)

    up = await serve(handler)
    assert await fetch(client, up.url()) == b'{"ok":true}'
    with pytest.raises(UpstreamConnectError, match=r"ep-test: .*without answering"):
        await fetch(client, up.url())
    assert (up.accepted, len(up.requests)) == (2, 3)


async def test_fresh_connection_closed_before_answering_is_not_retried(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(answering(then="close"))
    with pytest.raises(UpstreamConnectError, match="closed the connection without answering"):
        await fetch(client, up.url())
    await asyncio.sleep(0.02)
    assert up.accepted == 1


async def test_no_retry_once_response_bytes_arrived(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(answering(OK, b"HTTP/1.1 200 OK\r\nContent-Le", then="close"))
    assert await fetch(client, up.url()) == b'{"ok":true}'
    with pytest.raises(UpstreamProtocolError, match="before the response headers were complete"):
        await fetch(client, up.url())
    await asyncio.sleep(0.02)
    assert (up.accepted, len(up.requests)) == (1, 2)


async def test_pool_limit_makes_the_next_request_wait_for_a_free_connection(
    serve: Callable[..., Awaitable[Upstream]],
) -> None:
    release = asyncio.Event()

    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while await up.read_request(reader) is not None:
            await release.wait()
            writer.write(OK)

    up = await serve(handler)
    c = H1Client(limit_per_host=2)
    try:
        tasks = [asyncio.create_task(fetch(c, up.url())) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert (up.accepted, len(up.requests)) == (2, 2)  # the third waits in the client
        release.set()
        assert await asyncio.gather(*tasks) == [b'{"ok":true}'] * 3
        assert (up.accepted, len(up.requests)) == (2, 3)
    finally:
        await c.close()


async def test_pool_waiters_are_served_in_arrival_order(
    serve: Callable[..., Awaitable[Upstream]],
) -> None:
    up = await serve(always(OK))
    c = H1Client(limit_per_host=1)
    try:
        tasks = []
        for i in range(4):
            tasks.append(asyncio.create_task(post(c, up.url(), str(i).encode())))
            await asyncio.sleep(0)
        for t in tasks:
            _, _, resp = await t
            await resp.read()
        assert [r[-1:] for r in up.requests] == [b"0", b"1", b"2", b"3"]
        assert up.accepted == 1
    finally:
        await c.close()


async def test_pool_wait_counts_against_the_connect_timeout(
    serve: Callable[..., Awaitable[Upstream]],
) -> None:
    up = await serve(silent)
    c = H1Client(limit_per_host=1)
    try:
        busy = asyncio.create_task(post(c, up.url()))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamTimeoutError, match=r"no free connection .* within 0.1 s"):
            await post(c, up.url(), connect=0.1)
        busy.cancel()
    finally:
        await c.close()


async def test_idle_connection_past_the_keepalive_timeout_is_not_reused(
    serve: Callable[..., Awaitable[Upstream]],
) -> None:
    up = await serve(always(OK))
    c = H1Client(keepalive_timeout=0.05)
    try:
        assert await fetch(c, up.url()) == b'{"ok":true}'
        await asyncio.sleep(0.1)
        assert await fetch(c, up.url()) == b'{"ok":true}'
        assert up.accepted == 2
    finally:
        await c.close()


async def test_an_idle_connection_is_closed_after_the_keepalive_time_by_itself(
    serve: Callable[..., Awaitable[Upstream]],
) -> None:
    """Idle connections were only found stale when next taken: after a burst, hundreds of
    sockets stayed open (the gateway's and the provider's) until the provider closed them."""
    up = await serve(always(OK))
    c = H1Client(keepalive_timeout=1.0)
    try:
        assert await fetch(c, up.url()) == b'{"ok":true}'
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(up.eof_seen.wait(), 5)  # the client closed it, unasked
        assert asyncio.get_running_loop().time() - started >= 0.9
    finally:
        await c.close()


async def test_no_content_response_has_an_empty_body_and_keeps_the_connection(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(always(b"HTTP/1.1 204 No Content\r\n\r\n"))
    for _ in range(2):
        status, _, resp = await post(client, up.url())
        assert (status, await resp.read()) == (204, b"")
    assert up.accepted == 1


@pytest.mark.parametrize("status", [204, 304])
@pytest.mark.parametrize("framing", ["Content-Length: 38", "Transfer-Encoding: chunked"])
async def test_a_bodyless_status_that_announces_a_body_drops_the_connection(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client, status: int, framing: str
) -> None:
    """A 204 or 304 has no body whatever its headers say: a server that announces one and
    sends it a moment later had its "body" read as the answer to the next request on the
    connection (here a whole response, read as another caller's answer)."""
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"

    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        if n == 1:
            await up.read_request(reader)
            writer.write(b"HTTP/1.1 %d Nothing\r\n%s\r\n\r\n" % (status, framing.encode()))
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(smuggled)
        await always(OK)(up, reader, writer, n)

    up = await serve(handler)
    got, _, resp = await post(client, up.url())
    assert (got, await resp.read()) == (status, b"")
    assert await fetch(client, up.url()) == b'{"ok":true}'
    assert up.accepted == 2


async def test_closing_a_response_before_its_body_arrived_drops_the_connection(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await up.wait_eof(reader)

    up = await serve(handler)
    _, _, resp = await post(client, up.url())
    resp.close()
    await asyncio.wait_for(up.eof_seen.wait(), 2)
    with pytest.raises(UpstreamProtocolError, match="closed before it was read"):
        await resp.read()


async def test_body_arriving_after_the_headers_is_awaited(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while await up.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n")
            await asyncio.sleep(0.05)
            writer.write(b"hello")
            await asyncio.sleep(0.05)
            writer.write(b" world")

    up = await serve(handler)
    assert await fetch(client, up.url()) == b"hello world"
    assert await fetch(client, up.url()) == b"hello world"
    assert up.accepted == 1


async def test_failed_and_cancelled_requests_give_their_pool_slot_back(
    serve: Callable[..., Awaitable[Upstream]],
) -> None:
    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while (request := await up.read_request(reader)) is not None:
            if request.endswith(b"garbage"):
                writer.write(b"garbage\r\n\r\n")
            elif request.endswith(b"silent"):
                continue
            else:
                writer.write(OK)

    up = await serve(handler)
    c = H1Client(limit_per_host=1)
    try:
        with pytest.raises(UpstreamProtocolError):
            await post(c, up.url(), b"garbage")
        with pytest.raises(UpstreamTimeoutError):
            await post(c, up.url(), b"silent", first_byte=0.05)
        hung = asyncio.create_task(post(c, up.url(), b"silent"))
        waiting = asyncio.create_task(post(c, up.url(), b"ok"))
        await asyncio.sleep(0.05)
        waiting.cancel()  # cancelled while waiting for the pool
        hung.cancel()  # cancelled while waiting for headers
        for task in (hung, waiting):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await asyncio.wait_for(fetch(c, up.url(), connect=0.5), 2) == b'{"ok":true}'
        assert await asyncio.wait_for(fetch(c, up.url(), connect=0.5), 2) == b'{"ok":true}'
    finally:
        await c.close()


async def test_a_connection_handed_to_a_waiter_cancelled_meanwhile_goes_back_to_the_pool(
    serve: Callable[..., Awaitable[Upstream]],
) -> None:
    up = await serve(always(OK))
    c = H1Client(limit_per_host=1)
    try:
        waiter: asyncio.Task[bytes] | None = None

        async def first() -> bytes:
            data = await fetch(c, up.url())
            # The connection was just handed to the waiter; it has not run yet.
            assert waiter is not None
            waiter.cancel()
            return data

        task = asyncio.create_task(first())
        await asyncio.sleep(0)
        waiter = asyncio.create_task(fetch(c, up.url()))
        assert await task == b'{"ok":true}'
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await asyncio.wait_for(fetch(c, up.url(), connect=0.5), 2) == b'{"ok":true}'
        assert (up.accepted, len(up.requests)) == (1, 2)
    finally:
        await c.close()


async def test_close_closes_pooled_connections(
    serve: Callable[..., Awaitable[Upstream]],
) -> None:
    up = await serve(always(OK))
    c = H1Client()
    assert await fetch(c, up.url()) == b'{"ok":true}'
    await c.close()
    await asyncio.wait_for(up.eof_seen.wait(), 2)
    with pytest.raises(RuntimeError, match="closed"):
        await fetch(c, up.url())


# -- streaming and backpressure ----------------------------------------------------------------


async def test_sse_lines_are_yielded_as_they_arrive(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    first_seen = asyncio.Event()

    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"d\r\ndata: one\r\n\r\n\r\n"
        )
        await first_seen.wait()  # the second event is sent only once the first was read
        writer.write(b"b\r\ndata: two\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
        await up.wait_eof(reader)

    up = await serve(handler)
    _, headers, resp = await post(client, up.url())
    assert headers["content-type"] == "text/event-stream"
    lines = []

    async def consume() -> None:
        async for line in resp.lines():
            lines.append(line)
            first_seen.set()

    await asyncio.wait_for(consume(), 2)
    assert lines == [b"data: one", b"", b"data: two", b"", b"data: [DONE]", b""]


async def test_a_slow_stream_reader_keeps_buffered_data_bounded(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    line = b"data: " + b"x" * 1018 + b"\n"  # 1 KiB lines, 10 MiB in all
    count = 10 * 1024

    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        size = len(line) * count
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(size).encode() + b"\r\n\r\n")
        for _ in range(count // 256):
            writer.write(line * 256)
            await writer.drain()
        await up.wait_eof(reader)

    up = await serve(handler)
    _, _, resp = await post(client, up.url(), first_byte=5, total=20)
    seen = most = 0
    async for got in resp.lines():
        assert got == line[:-1]
        seen += 1
        most = max(most, resp.buffered)
        if seen % 64 == 0:
            await asyncio.sleep(0.001)  # the reader is slower than loopback by far
    assert seen == count
    assert most < 1024 * 1024, f"{most} bytes buffered: reading did not pause"


async def test_stream_reader_that_stops_early_closes_the_connection(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nline1\n\r\n")
        await up.wait_eof(reader)

    up = await serve(handler)
    _, _, resp = await post(client, up.url())
    async for _ in resp.lines():
        break
    resp.close()
    await asyncio.wait_for(up.eof_seen.wait(), 2)


async def test_the_end_of_the_exchange_is_told_before_the_body_is_read(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    """``on_end`` fires when the server has sent the whole body, read or not (the endpoint's
    max_concurrency slot is free then, however slowly the gateway's client reads), or when the
    exchange fails (here: the total timeout while nobody reads)."""
    body = b"data: x\n\n"

    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while await up.read_request(reader) is not None:
            if len(up.requests) == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
                await asyncio.sleep(0.1)
                writer.write(body)
            else:  # headers and a first event, then never the rest
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n" + body)

    up = await serve(handler)
    _, _, resp = await post(client, up.url())
    ended = asyncio.Event()
    resp.on_end(ended.set)
    assert not ended.is_set()
    await asyncio.wait_for(ended.wait(), 2)  # nothing read yet
    assert [line async for line in resp.lines()] == [b"data: x", b""]
    late: list[int] = []
    resp.on_end(lambda: late.append(1))  # asked once it is over: told at once
    assert late == [1]

    _, _, stalled = await post(client, up.url(), first_byte=5, total=0.3)
    ended.clear()
    stalled.on_end(ended.set)
    await asyncio.wait_for(ended.wait(), 2)  # the total timeout, with nobody reading
    with pytest.raises(UpstreamTimeoutError):
        async for _ in stalled.lines():
            pass


# -- failures ----------------------------------------------------------------------------------


async def test_refused_connection_is_a_connect_error(client: H1Client) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(
            UpstreamConnectError, match=rf"ep-test: cannot connect to 127\.0\.0\.1:{port}"
        ):
            await fetch(client, f"http://127.0.0.1:{port}/v1")


async def test_garbage_response_is_a_protocol_error(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
    with pytest.raises(UpstreamProtocolError, match="ep-test: malformed HTTP response"):
        await fetch(client, up.url())


async def test_bad_chunk_encoding_is_a_protocol_error(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(
        answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
    )
    status, _, resp = await post(client, up.url())
    assert status == 200
    with pytest.raises(UpstreamProtocolError, match="malformed HTTP response"):
        await resp.read()


async def test_body_cut_short_is_a_protocol_error(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", then="close"))
    _, _, resp = await post(client, up.url())
    with pytest.raises(UpstreamProtocolError, match="closed in the middle of the response body"):
        await resp.read()


async def test_unasked_protocol_switch_is_a_protocol_error(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(
        answering(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
    )
    with pytest.raises(UpstreamProtocolError, match="switched protocols"):
        await fetch(client, up.url())


# -- timeouts ----------------------------------------------------------------------------------


async def test_connect_timeout_when_the_server_never_accepts(client: H1Client) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(3):  # fill the accept queue: further SYNs are dropped
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        try:
            with pytest.raises(UpstreamTimeoutError, match=r"no connection to .* within 0.2 s"):
                await fetch(client, f"http://127.0.0.1:{port}/v1", connect=0.2)
        finally:
            for s in fillers:
                s.close()


async def test_first_byte_timeout_when_the_server_never_answers(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(silent)
    with pytest.raises(UpstreamTimeoutError, match=r"no response headers within 0\.2 s"):
        await fetch(client, up.url(), first_byte=0.2)
    await asyncio.wait_for(up.eof_seen.wait(), 2)  # and the connection is not kept


async def test_first_byte_timeout_also_bounds_a_stall_mid_body(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart")
        await up.wait_eof(reader)

    up = await serve(handler)
    status, _, resp = await post(client, up.url(), first_byte=0.2)
    assert status == 200
    with pytest.raises(UpstreamTimeoutError, match=r"stalled: no data for 0.2 s"):
        await resp.read()


async def test_total_timeout_bounds_a_body_that_trickles(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(100):  # never stalls for first_byte, never finishes
            writer.write(b"6\r\ndata:\n\r\n")
            await asyncio.sleep(0.03)

    up = await serve(handler)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    _, _, resp = await post(client, up.url(), first_byte=0.2, total=0.4)
    with pytest.raises(UpstreamTimeoutError, match=r"no complete response within 0.4 s"):
        async for _ in resp.lines():
            pass
    assert 0.35 < loop.time() - t0 < 1.0


# -- cancellation ------------------------------------------------------------------------------


async def test_cancelled_caller_closes_the_connection(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(silent)
    task = asyncio.create_task(post(client, up.url()))
    await asyncio.wait_for(up.request_seen.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(up.eof_seen.wait(), 2)


async def test_cancelled_stream_reader_closes_the_connection(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    async def handler(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nline1\n\r\n")
        await up.wait_eof(reader)

    up = await serve(handler)
    _, _, resp = await post(client, up.url())
    got = asyncio.Event()

    async def consume() -> None:
        async for _ in resp.lines():
            got.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(up.eof_seen.wait(), 2)


# -- https -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """A server-side TLS context presenting the test certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certificate)
    return ctx


async def test_https_with_a_trusted_certificate_and_sni(
    serve: Callable[..., Awaitable[Upstream]], certificate: tuple[Path, Path]
) -> None:
    cert_path, _ = certificate
    server_ctx = server_tls(certificate)
    names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)
    up = await serve(always(OK), server_ctx)
    trust = ssl.create_default_context(cafile=str(cert_path))
    c = H1Client(ssl_context=trust)
    try:
        url = f"https://localhost:{up.port}/v1/chat/completions"
        assert await fetch(c, url) == b'{"ok":true}'
        assert await fetch(c, url) == b'{"ok":true}'
        assert names == ["localhost"]  # one handshake, with SNI
        assert up.requests[0].split(b"\r\n")[1] == b"Host: localhost:" + str(up.port).encode()
    finally:
        await c.close()


async def test_https_with_an_untrusted_certificate_is_a_connect_error(
    serve: Callable[..., Awaitable[Upstream]], certificate: tuple[Path, Path]
) -> None:
    up = await serve(always(OK), server_tls(certificate))
    c = H1Client()  # the system trust store does not know our certificate
    try:
        with pytest.raises(UpstreamConnectError, match="certificate verify failed"):
            await fetch(c, f"https://localhost:{up.port}/v1")
    finally:
        await c.close()


async def test_tls_handshake_that_never_completes_is_a_connect_timeout(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(answering())  # plain TCP that never says a TLS word
    with pytest.raises(UpstreamTimeoutError, match=r"no connection to .* within 0.2 s"):
        await fetch(client, up.url(scheme="https"), connect=0.2)


# -- through an egress proxy -------------------------------------------------------------------


async def test_https_through_a_connect_proxy_is_tls_end_to_end_and_kept_alive(
    serve: Callable[..., Awaitable[Upstream]], certificate: tuple[Path, Path]
) -> None:
    cert_path, _ = certificate
    up = await serve(always(OK), server_tls(certificate))
    proxy = await ConnectProxy().start()
    c = H1Client(ssl_context=ssl.create_default_context(cafile=str(cert_path)))
    via = f"http://user:p%40ss@127.0.0.1:{proxy.port}"
    try:
        url = f"https://localhost:{up.port}/v1/chat/completions"
        for _ in range(2):
            status, _, resp = await c.post(
                url, b"{}", {}, connect=2, first_byte=2, total=5, proxy=via
            )
            assert status == 200 and await resp.read() == b'{"ok":true}'
        # one tunnel, reused; the origin saw the request as if direct (origin-form, its Host)
        assert len(proxy.connects) == 1
        assert proxy.connects[0].startswith(f"CONNECT localhost:{up.port} HTTP/1.1".encode())
        assert up.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert b"Proxy-Authorization" not in up.requests[0]  # the credential stays at the proxy
    finally:
        await c.close()
        await proxy.close()


async def test_a_proxy_that_refuses_the_tunnel_is_a_connect_error_naming_it(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    up = await serve(always(OK))
    proxy = await ConnectProxy().start()
    try:
        with pytest.raises(UpstreamConnectError, match=r"proxy 127\.0\.0\.1:\d+ refused .* 407"):
            await client.post(
                up.url(scheme="https"), b"{}", {}, connect=2, first_byte=2, total=5,
                proxy=f"http://wrong:creds@127.0.0.1:{proxy.port}",
            )  # fmt: skip
    finally:
        await proxy.close()


async def test_plain_http_through_a_proxy_sends_the_absolute_url_and_the_credential(
    serve: Callable[..., Awaitable[Upstream]], client: H1Client
) -> None:
    proxy = await serve(always(OK))  # an HTTP proxy answers for the origin
    status, _, resp = await client.post(
        "http://models.internal:8000/v1/chat/completions?x=1", b"{}", {"X-A": "b"},
        connect=2, first_byte=2, total=5, proxy=f"http://u:pw@127.0.0.1:{proxy.port}",
    )  # fmt: skip
    assert status == 200 and await resp.read() == b'{"ok":true}'
    head = proxy.requests[0].split(b"\r\n")
    assert head[0] == b"POST http://models.internal:8000/v1/chat/completions?x=1 HTTP/1.1"
    assert head[1] == b"Host: models.internal:8000"
    assert b"Proxy-Authorization: Basic dTpwdw==" in head  # u:pw


@pytest.mark.parametrize(
    "bad", ["https://proxy:3128", "socks5://proxy:1080", "http://proxy:3128/path", "http://:3128"]
)
async def test_a_proxy_url_that_is_not_an_http_proxy_is_refused(client: H1Client, bad: str) -> None:
    with pytest.raises(ValueError, match="proxy"):
        await client.post("https://example.jp/v1", b"{}", {}, connect=1, first_byte=1, total=1,
                          proxy=bad)  # fmt: skip


# -- the parser, whatever the packet boundaries ------------------------------------------------

bodies = st.binary(min_size=0, max_size=2000)


def framed(body: bytes, chunked: bool, sizes: list[int], interim: bool) -> bytes:
    head = b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b""
    if not chunked:
        return head + b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    out = [head + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    i = 0
    for size in sizes:
        if i >= len(body):
            break
        piece = body[i : i + max(1, size)]
        out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        i += len(piece)
    if i < len(body):
        out.append(b"%x\r\n%s\r\n" % (len(body) - i, body[i:]))
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    return [p for p in pieces if p]  # a socket never delivers empty reads


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def feed(response: bytes, pieces: list[bytes], sse: bool) -> tuple[list[bytes], bool]:
    """Drive one exchange on a client connection (the only test that reaches inside: packet
    boundaries cannot be forced through a real socket), the response arriving in ``pieces``
    while a reader consumes what has arrived so far."""
    from sekisho.providers import h1

    loop = asyncio.get_running_loop()
    pool = h1._Pool("upstream", 80, None, 1, 30.0)
    conn = h1._Connection(pool, loop)
    pool.size = 1
    conn.connection_made(FakeTransport())
    conn._state = h1._BUSY
    resp = conn.send(b"", "ep", 5.0, 5.0, loop.time() + 5)
    got: list[bytes] = []

    async def reader() -> None:
        if sse:
            async for line in resp.lines():
                got.append(line)
        else:
            got.append(await resp.read())

    task = asyncio.create_task(reader())
    for piece in pieces:
        conn.data_received(piece)
        for _ in range(3):  # let the reader take what arrived before the next piece
            await asyncio.sleep(0)
    await task
    assert resp.status == 200
    return got, pool.idle == [conn]


T = TypeVar("T")


def run(policy: asyncio.AbstractEventLoopPolicy, coro: Coroutine[object, object, T]) -> T:
    loop = policy.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=bodies,
    chunked=st.booleans(),
    sizes=st.lists(st.integers(1, 300), max_size=20),
    interim=st.booleans(),
    cuts=st.lists(st.integers(0, 5000), max_size=30),
)
def test_any_split_of_a_valid_response_gives_the_same_body(
    event_loop_policy: asyncio.AbstractEventLoopPolicy,  # noqa: F811  (the fixture)
    body: bytes,
    chunked: bool,
    sizes: list[int],
    interim: bool,
    cuts: list[int],
) -> None:
    response = framed(body, chunked, sizes, interim)
    got, reusable = run(event_loop_policy, feed(response, split(response, cuts), sse=False))
    assert got == [body]
    assert reusable


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))),
    end=st.sampled_from([b"\n", b"\r\n", b"\r"]),  # SSE's three line ends
    sizes=st.lists(st.integers(1, 300), max_size=20),
    cuts=st.lists(st.integers(0, 5000), max_size=30),
)
def test_any_split_of_a_stream_gives_the_same_lines(
    event_loop_policy: asyncio.AbstractEventLoopPolicy,  # noqa: F811  (the fixture)
    lines: list[bytes],
    end: bytes,
    sizes: list[int],
    cuts: list[int],
) -> None:
    body = b"".join(line + end for line in lines)
    response = framed(body, True, sizes, False)
    got, reusable = run(event_loop_policy, feed(response, split(response, cuts), sse=True))
    assert got == lines
    assert reusable
