"""A lean HTTP/1.1 client for upstream calls: POST only, pooled keep-alive, httptools parsing.

What it promises:

- One request per connection at a time; a connection is reused only after a success (2xx)
  was read completely, after the whole request was sent, and the server allowed keep-alive
  (an error may have come before the server read the request). Per (scheme, host, port) at
  most ``limit_per_host`` connections exist; further callers wait in FIFO order.
- A reused idle connection that fails before any response byte arrived (the server closed it
  while the request was on its way) is retried once on a fresh connection. Never after a
  response byte: the upstream may have acted on the request.
- Timeouts: ``connect`` covers pool wait, TCP connect and TLS; ``first_byte`` covers the wait
  for the response headers and every stall between body bytes; ``total`` the whole exchange.
- Every failure is an ``UpstreamError`` subclass naming the endpoint, as the aiohttp
  transport raises them; a cancelled caller closes the connection and the cancellation
  propagates.
- Response bodies are framed by Content-Length, chunked encoding or EOF (the connection then
  closes); interim 1xx answers are skipped. A 204 or 304 has no body; one whose headers
  announce one closes its connection (the announced bytes may still come). A body read line
  by line stops reading from the socket while more than 256 KiB wait unread.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

from sekisho.errors import hide_url_passwords
from sekisho.providers.base import (
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from sekisho.providers.connect import open_connection
from sekisho.providers.proxy import Proxy, TunnelSetup

# Reading pauses above this many unread body bytes and resumes at or below the low mark.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
# A whole (non-streamed) response body may not grow past this.
MAX_BODY = 64 * 1024 * 1024
# Largest response head (status line and headers) accepted from an upstream, and the most it
# may send before its final head (100 Continue and the like count too).
MAX_HEAD = 256 * 1024
# Seconds a connection is used at most. A busy connection is never idle long enough to expire,
# so without this it would stay on the address it was opened to for good: an endpoint that
# moves (DNS failover, a load balancer's changing addresses, blue/green) would never see the
# traffic move with it. Past this age a connection is closed when its exchange ends.
MAX_LIFETIME = 300.0
# One SSE line may not grow past this, so a server that never sends a newline cannot fill memory.
_MAX_LINE = 16 * 1024 * 1024
# Timers may fire up to a clock tick early; treat that as on time.
_EARLY = 0.001

_CONNECTING, _BUSY, _IDLE, _CLOSED = range(4)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PLAIN, _HOST, _FRAMING = range(3)


class _Stale(Exception):
    """A reused connection died before any response byte: safe to send once more, elsewhere."""


class _PoolWaitExpired(Exception):
    pass


class _ClientClosed(Exception):
    pass


class H1Response:
    """A response whose headers have arrived; its body is read with ``read()`` or ``lines()``."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_endpoint_id",
        "_error",
        "_on_end",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection, endpoint_id: str) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._conn: _Connection | None = conn  # None once the body is complete or failed
        self._endpoint_id = endpoint_id
        self._chunks: list[bytes] = []
        self._buffered = 0  # received and not yet handed to the reader
        self._done = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._on_end: Callable[[], None] | None = None

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the exchange with the server is over: the whole body has
        arrived (read or not), or the exchange failed (a timeout, the connection lost, the
        response closed). At once if it is over already."""
        if self._conn is None:
            callback()
        else:
            self._on_end = callback

    def _ended(self) -> None:
        callback = self._on_end
        if callback is not None:
            self._on_end = None
            callback()

    @property
    def buffered(self) -> int:
        """Body bytes received from the socket and not yet returned to the reader."""
        return self._buffered

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; with ``limit``, at most that many bytes (the rest is dropped and the
        connection closed, as it cannot be reused with an unread body). A whole body larger
        than ``MAX_BODY`` is refused (UpstreamProtocolError): a broken or hostile upstream
        cannot fill the gateway's memory within its total timeout."""
        if self._done and limit is None and self._buffered <= MAX_BODY:
            data = b"".join(self._chunks)  # the common case: the body came with the headers
            self._chunks.clear()
            self._buffered = 0
            return data
        out: list[bytes] = []
        size = 0
        while True:
            if self._chunks:
                out += self._chunks
                size += self._buffered
                self._chunks.clear()
                self._buffered = 0
                if limit is not None and size >= limit:
                    self.close()
                    return b"".join(out)[:limit]
                if limit is None and size > MAX_BODY:
                    self.close()
                    raise UpstreamProtocolError(
                        self._endpoint_id, f"response body larger than {MAX_BODY} bytes"
                    )
            if self._done:
                return b"".join(out)
            if self._error is not None:
                raise self._error
            await self._wait()

    async def lines(self) -> AsyncIterator[bytes]:
        """The body line by line, each without its line end: CRLF, LF or a lone CR, as SSE
        ends lines (the OpenAI SDKs read all three); a last unterminated line is yielded too.
        Stops reading the socket while the reader falls behind."""
        pending: list[bytes] = []  # the start of a line that has no line end yet
        pending_size = 0
        after_cr = False  # the last batch ended in CR: an LF that starts this one ends nothing
        try:
            while True:
                if self._chunks:
                    data = b"".join(self._chunks)
                    self._chunks.clear()
                    size = len(data)
                    if after_cr or b"\r" in data:
                        if after_cr and data[:1] == b"\n":
                            data = data[1:]  # the LF of a CRLF split between two batches
                        after_cr = data[-1:] == b"\r"
                        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                    parts = data.split(b"\n")
                    if len(parts) > 1:
                        if pending:
                            pending.append(parts[0])
                            parts[0] = b"".join(pending)
                            pending.clear()
                            pending_size = 0
                        last = parts.pop()
                        for line in parts:
                            yield line
                        if last:
                            pending.append(last)
                            pending_size = len(last)
                    else:
                        pending.append(data)
                        pending_size += len(data)
                        if pending_size > _MAX_LINE:
                            raise UpstreamProtocolError(
                                self._endpoint_id,
                                f"stream line longer than {_MAX_LINE} bytes without a newline",
                            )
                    self._buffered -= size
                    conn = self._conn
                    if conn is not None and conn._paused and self._buffered <= _LOW_WATER:
                        conn._resume()
                elif self._done:
                    tail = b"".join(pending)
                    if tail:
                        yield tail
                    return
                elif self._error is not None:
                    raise self._error
                else:
                    await self._wait()
        finally:
            # The reader stopped early (break, error, cancel): the rest of the body is unread.
            if not self._done:
                self.close()

    def close(self) -> None:
        """Drop the response. A body still arriving closes the connection (no reuse)."""
        conn = self._conn
        if conn is not None:
            conn._fail(
                UpstreamProtocolError(self._endpoint_id, "response closed before it was read")
            )
        self._chunks.clear()
        self._buffered = 0

    async def _wait(self) -> None:
        conn = self._conn
        if conn is None:
            return
        waiter = self._waiter = conn._loop.create_future()
        if conn._paused:
            conn._resume()
        try:
            await waiter
        except BaseException:  # cancelled: the caller is gone; the connection cannot be reused
            self._waiter = None
            self.close()
            raise

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one exchange at a time."""

    __slots__ = (
        "_born",
        "_complete",
        "_deadline",
        "_got_bytes",
        "_head_bytes",
        "_headers",
        "_idle_since",
        "_informational",
        "_keep_alive",
        "_last_rx",
        "_loop",
        "_parser",
        "_paused",
        "_pool",
        "_response",
        "_reused",
        "_stall",
        "_state",
        "_timer",
        "_total",
        "_unframed_body",
        "_until_eof",
        "transport",
    )

    def __init__(self, pool: _Pool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._state = _CONNECTING
        self._reused = False  # has completed an exchange before
        self._response: H1Response | None = None
        self._headers: dict[str, str] = {}
        self._complete = False
        self._keep_alive = False
        self._informational = False
        self._until_eof = False
        self._unframed_body = False  # a body announced where none may be (a 204's)
        self._got_bytes = False
        self._head_bytes = 0  # bytes of this exchange's response head so far
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._stall = 0.0
        self._total = 0.0
        self._deadline = 0.0
        self._last_rx = 0.0
        self._idle_since = 0.0
        self._born = loop.time()

    # -- the exchange -----------------------------------------------------------------------

    def send(
        self, data: bytes, endpoint_id: str, first_byte: float, total: float, deadline: float
    ) -> H1Response:
        resp = H1Response(self, endpoint_id)
        self._response = resp
        self._got_bytes = False
        self._head_bytes = 0
        self._until_eof = False
        self._unframed_body = False
        self._stall = first_byte
        self._total = total
        self._deadline = deadline
        now = self._loop.time()
        self._last_rx = now
        self._timer = self._loop.call_at(min(now + first_byte, deadline), self._on_timer)
        transport = self.transport
        if transport is None or transport.is_closing():
            self._fail(self._lost_error(resp, None))
        else:
            transport.write(data)
        return resp

    def _on_timer(self) -> None:
        self._timer = None
        resp = self._response
        if resp is None:
            return
        now = self._loop.time()
        exc: UpstreamError
        if now >= self._deadline - _EARLY:
            exc = UpstreamTimeoutError(
                resp._endpoint_id, f"no complete response within {self._total:g} s (total timeout)"
            )
        elif self._paused or now - self._last_rx < self._stall - _EARLY:
            # Data arrived since (or we paused reading ourselves): the stall clock restarts.
            since = now if self._paused else self._last_rx
            self._timer = self._loop.call_at(
                min(since + self._stall, self._deadline), self._on_timer
            )
            return
        elif resp.status == 0:
            exc = UpstreamTimeoutError(
                resp._endpoint_id,
                f"no response headers within {self._stall:g} s (first-byte timeout)",
            )
        else:
            exc = UpstreamTimeoutError(
                resp._endpoint_id,
                f"response stalled: no data for {self._stall:g} s (first-byte/read timeout)",
            )
        self._fail(exc)

    def _finish(self) -> None:
        """The response is complete: hand it over and return the connection if allowed."""
        resp = self._response
        assert resp is not None
        self._response = None
        self._complete = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        resp._conn = None
        resp._done = True
        resp._wake()
        resp._ended()
        self._reused = True
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size():
            # Answered before the request was all sent (an early 401 or 413): the server may
            # read the rest of the body as the next request and answer that to whoever sends
            # next. The rest is not sent, and the connection is not reused.
            self._keep_alive = False
            transport.abort()
        if (
            self._keep_alive
            # An answer that is not a success may have come before the server read the request
            # (a proxy's early 401, 413 or 429): the body left unread would be read as the next
            # request. Whether it was read cannot be known, so the connection is not reused.
            and resp.status < 300
            and self._state == _BUSY
            and transport is not None
            and not transport.is_closing()
        ):
            if self._paused:
                self._resume()
            self._pool.release(self)
        else:
            self.close()

    def _fail(self, exc: Exception) -> None:
        """End the exchange with ``exc`` and close the connection."""
        resp = self._response
        self._response = None
        if resp is not None:
            resp._conn = None
            resp._error = exc
            resp._wake()
            resp._ended()
        self.close()

    def _lost_error(self, resp: H1Response, exc: Exception | None) -> Exception:
        why = f" ({exc})" if exc is not None else ""
        if not self._got_bytes:
            if self._reused:
                return _Stale()
            if self._pool.ssl is not None and not why:
                # How a server refuses a missing or unknown client certificate under TLS 1.3:
                # its alert comes after the handshake, and the event loop reports plain EOF.
                why = (
                    " (over TLS this is how an endpoint refuses a missing or unaccepted client "
                    "certificate: check the endpoint's tls.client_cert)"
                )
            return UpstreamConnectError(
                resp._endpoint_id, f"the server closed the connection without answering{why}"
            )
        if resp.status == 0:
            return UpstreamProtocolError(
                resp._endpoint_id,
                f"the connection closed before the response headers were complete{why}",
            )
        return UpstreamProtocolError(
            resp._endpoint_id, f"the connection closed in the middle of the response body{why}"
        )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._state == _CLOSED:
            return
        was_idle = self._state == _IDLE
        self._state = _CLOSED
        self._pool.discard(self, was_idle)
        if self.transport is not None:
            self.transport.close()

    def usable(self, now: float) -> bool:
        transport = self.transport
        return (
            self._state == _IDLE
            and transport is not None
            and not transport.is_closing()
            and now - self._idle_since < self._pool.keepalive_timeout
            and now - self._born < self._pool.max_lifetime
        )

    def _resume(self) -> None:
        self._paused = False
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; both have its interface.
        self.transport = cast(asyncio.Transport, transport)
        if self._state == _CLOSED:  # the client was closed while this connection was opening
            transport.close()

    def data_received(self, data: bytes) -> None:
        resp = self._response
        if resp is None:  # bytes nobody asked for: the connection's framing is lost
            self.close()
            return
        self._last_rx = self._loop.time()
        self._got_bytes = True
        in_head = not resp.status
        if in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(
                UpstreamProtocolError(
                    resp._endpoint_id, "the server switched protocols (HTTP 101) unasked"
                )
            )
            return
        except httptools.HttpParserError as exc:
            if not self._complete:
                self._fail(
                    UpstreamProtocolError(resp._endpoint_id, f"malformed HTTP response: {exc}")
                )
                return
            self._keep_alive = False  # junk after a complete response: keep it, drop the socket
        if in_head and not resp.status and self._head_bytes > MAX_HEAD:
            # Still no final head: bounded here, as httptools bounds nothing.
            self._fail(
                UpstreamProtocolError(
                    resp._endpoint_id, f"response headers larger than {MAX_HEAD} bytes"
                )
            )
            return
        if self._complete:
            self._finish()
        elif resp._buffered > _HIGH_WATER and not self._paused:
            self._paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        resp = self._response
        if resp is not None:
            if self._until_eof and resp.status and exc is None:  # EOF ends this body
                self._keep_alive = False
                self._finish()
                return
            self._fail(self._lost_error(resp, exc))
            return
        self.close()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise ValueError("a second response nobody asked for")
        self._headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self._headers
        old = headers.get(key)
        headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: the final answer follows
            self._informational = True
            return
        resp = self._response
        assert resp is not None
        headers = self._headers
        resp.status = status
        resp.headers = headers
        # Fields after the body (a chunked message's trailers) are not headers (RFC 9110
        # §6.5.1): they go to a dict nobody reads, never into the response's.
        self._headers = {}
        if status == 204 or status == 304:
            self._until_eof = False
            # No body, whatever the headers say: one they announce may still come, and would
            # be read as the next request's answer. The connection is not reused.
            self._unframed_body = (
                "transfer-encoding" in headers or headers.get("content-length", "0") != "0"
            )
        else:
            te = headers.get("transfer-encoding")
            if te is not None:
                self._until_eof = not te.rstrip().lower().endswith("chunked")
            else:
                self._until_eof = "content-length" not in headers
        resp._wake()

    def on_body(self, body: bytes) -> None:
        resp = self._response
        assert resp is not None
        resp._chunks.append(body)
        resp._buffered += len(body)
        if resp._waiter is not None:
            resp._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive() and not self._unframed_body


class _Pool:
    """The connections to one (scheme, host, port)."""

    __slots__ = (
        "conns",
        "host",
        "idle",
        "keepalive_timeout",
        "limit",
        "max_lifetime",
        "port",
        "retired",
        "server_hostname",
        "size",
        "ssl",
        "tunnel",
        "waiters",
    )

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        limit: int,
        keepalive_timeout: float,
        tunnel: Proxy | None = None,
        max_lifetime: float = MAX_LIFETIME,
    ) -> None:
        self.host = host
        self.port = port
        self.tunnel = tunnel  # reach host:port through this proxy's CONNECT
        self.ssl = ssl_context
        self.server_hostname = host if ssl_context is not None else None
        self.limit = limit
        self.keepalive_timeout = keepalive_timeout
        self.max_lifetime = max_lifetime
        self.size = 0  # connections open or opening, including slots promised to waiters
        self.idle: list[_Connection] = []  # most recently used last
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self.conns: set[_Connection] = set()
        self.retired = False  # no new exchanges come; connections close once free

    async def acquire(
        self,
        loop: asyncio.AbstractEventLoop,
        deadline: float,
        connect: float,
        endpoint_id: str,
        fresh: bool,
    ) -> _Connection:
        if not fresh:
            idle = self.idle
            if idle:
                now = loop.time()
                while idle:
                    conn = idle.pop()
                    if conn.usable(now):
                        conn._state = _BUSY
                        return conn
                    conn._state = _BUSY  # already out of the idle list
                    conn.close()
        elif self.idle and self.size >= self.limit:
            # A retry wants a fresh connection; an idle one (likely as stale) makes room.
            conn = self.idle.pop()
            conn._state = _BUSY
            conn.close()
        if self.size < self.limit:
            self.size += 1
            return await self._open(loop, deadline, connect, endpoint_id)
        got = await self._wait(loop, deadline, connect, endpoint_id)
        if got is None:  # a slot, not a connection
            return await self._open(loop, deadline, connect, endpoint_id)
        return got

    async def _wait(
        self, loop: asyncio.AbstractEventLoop, deadline: float, connect: float, endpoint_id: str
    ) -> _Connection | None:
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            return await waiter
        except _PoolWaitExpired:
            raise UpstreamConnectTimeoutError(
                endpoint_id,
                f"no free connection to {self.host}:{self.port} within {connect:g} s: all "
                f"{self.limit} are busy (connect timeout; raise the per-host limit?)",
            ) from None
        except _ClientClosed:
            raise UpstreamConnectError(endpoint_id, "the HTTP client was closed") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())  # handed over just as we were cancelled
            raise
        finally:
            timer.cancel()

    def _give_back(self, got: _Connection | None) -> None:
        if got is None:
            self.size -= 1
            self._wake_one()
        else:
            self.release(got)

    async def _open(
        self, loop: asyncio.AbstractEventLoop, deadline: float, connect: float, endpoint_id: str
    ) -> _Connection:
        """A new connection; the caller has reserved its slot in ``size``."""
        conn = _Connection(self, loop)
        self.conns.add(conn)
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        expiry = _Expiry(task)
        timer = loop.call_at(deadline, expiry.fire)
        try:
            if self.tunnel is None:
                await open_connection(
                    loop,
                    lambda: conn,
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.server_hostname,
                )
            else:
                await self._open_tunnel(loop, conn, self.tunnel, endpoint_id)
        except asyncio.CancelledError:
            conn.close()
            if expiry.fired and task.uncancel() <= cancelling:
                raise UpstreamConnectTimeoutError(
                    endpoint_id,
                    f"no connection to {self.host}:{self.port} within {connect:g} s "
                    "(connect timeout)",
                ) from None
            raise
        except (OSError, ssl.CertificateError) as exc:
            conn.close()
            via = f" through the proxy {self.tunnel.display}" if self.tunnel else ""
            why = str(exc)
            if not why:  # e.g. ConnectionResetError(): a TLS alert the loop did not surface
                why = type(exc).__name__
                if self.ssl is not None:
                    why += (
                        " during the TLS handshake: the server may not accept the TLS versions "
                        "allowed (the endpoint's tls.min_version)"
                    )
            raise UpstreamConnectError(
                endpoint_id, f"cannot connect to {self.host}:{self.port}{via}: {why}"
            ) from None
        except BaseException:
            conn.close()
            raise
        finally:
            timer.cancel()
        if conn._state == _CLOSED:  # lost between connect and now
            raise UpstreamConnectError(
                endpoint_id, f"the connection to {self.host}:{self.port} closed at once"
            )
        conn._state = _BUSY
        return conn

    async def _open_tunnel(
        self, loop: asyncio.AbstractEventLoop, conn: _Connection, proxy: Proxy, endpoint_id: str
    ) -> None:
        """CONNECT through an HTTP proxy, then TLS (or plain HTTP) to the origin inside it."""
        authority = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        if proxy.authorization:
            head += f"Proxy-Authorization: {proxy.authorization}\r\n"
        tunnel = TunnelSetup(loop)
        transport, _ = await open_connection(loop, lambda: tunnel, proxy.host, proxy.port)
        try:
            transport.write((head + "\r\n").encode())
            status = await tunnel.status()
            if status != 200:
                raise UpstreamConnectError(
                    endpoint_id,
                    f"the proxy {proxy.display} refused a tunnel to {authority}: HTTP {status}",
                )
            if self.ssl is not None:
                tls = await loop.start_tls(
                    transport, conn, self.ssl, server_hostname=self.server_hostname
                )
                if tls is None:
                    raise UpstreamConnectError(endpoint_id, "TLS through the proxy failed")
                conn.connection_made(tls)
            else:
                transport.set_protocol(conn)
                conn.connection_made(transport)
        except BaseException:
            transport.close()
            raise

    def release(self, conn: _Connection) -> None:
        """A connection free for the next exchange: to the first waiter, else to the idle list;
        closed instead once it has lived ``max_lifetime`` (its slot goes to the next waiter)."""
        now = conn._loop.time()
        if now - conn._born >= self.max_lifetime:
            conn.close()
            return
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                conn._state = _BUSY
                waiter.set_result(conn)
                return
        if self.retired:
            conn.close()
            return
        conn._state = _IDLE
        conn._idle_since = now
        self.idle.append(conn)

    def sweep(self, now: float) -> None:
        """Close the connections idle for ``keepalive_timeout`` or more: after a burst they
        would otherwise hold their sockets (and the server's) until the server closes them."""
        limit = self.keepalive_timeout
        for conn in [c for c in self.idle if now - c._idle_since >= limit]:
            conn.close()

    def discard(self, conn: _Connection, was_idle: bool) -> None:
        """A connection closed: free its slot."""
        if was_idle:
            self.idle.remove(conn)
        self.conns.discard(conn)
        self.size -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        waiters = self.waiters
        while waiters and self.size < self.limit:
            waiter = waiters.popleft()
            if not waiter.done():
                self.size += 1
                waiter.set_result(None)
                return

    def retire(self) -> None:
        """Close the idle connections now, and every other one when its exchange ends (and no
        request is still waiting for it)."""
        self.retired = True
        for conn in list(self.idle):
            conn.close()

    def close(self) -> None:
        self.limit = 0  # no slot frees up for anyone from now on
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(_ClientClosed())
        self.waiters.clear()
        for conn in list(self.conns):
            resp = conn._response
            if resp is None:
                conn.close()
            else:
                conn._fail(UpstreamConnectError(resp._endpoint_id, "the HTTP client was closed"))


class _Expiry:
    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        self.task.cancel()


def _expire(waiter: asyncio.Future[_Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(_PoolWaitExpired())


class _Target:
    """What one URL resolves to: its pool and the fixed start of the request."""

    __slots__ = ("extra", "host_header", "path", "pool", "prefix")

    def __init__(self, pool: _Pool, path: str, host_header: str, extra: str = "") -> None:
        self.pool = pool
        self.path = path  # origin-form, or absolute-form for plain HTTP through a proxy
        self.host_header = host_header
        self.extra = extra  # Proxy-Authorization for plain HTTP through a proxy
        self.prefix = f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n{extra}"


class H1Client:
    """POSTs to HTTP/1.1 upstreams over pooled keep-alive connections (see the module doc)."""

    def __init__(
        self,
        *,
        limit_per_host: int = 100,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_timeout: float = 30.0,
        max_lifetime: float = MAX_LIFETIME,
    ) -> None:
        if limit_per_host < 1:
            raise ValueError("limit_per_host must be at least 1")
        self._limit = limit_per_host
        self._ssl = ssl_context
        self._keepalive_timeout = keepalive_timeout
        self._max_lifetime = max_lifetime
        self._pools: dict[tuple[object, ...], _Pool] = {}
        self._targets: dict[str, _Target] = {}
        self._header_kinds: dict[str, int] = {}
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        connect: float,
        first_byte: float,
        total: float,
        endpoint_id: str = "upstream",
        proxy: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> tuple[int, dict[str, str], H1Response]:
        """Send one POST; return once the final response headers arrived (any status).

        ``headers`` are sent verbatim after Host and Content-Length (a ``Host`` given here
        replaces the URL's). Raises ValueError for a header that could split the request.
        ``proxy`` (``http://[user:password@]host:port``): https URLs go through a CONNECT
        tunnel (TLS end to end with the upstream), http URLs are sent to the proxy.
        ``tls``: the context for an https URL in place of the client's own (an endpoint's
        private CA or client certificate); connections made with it are pooled apart.
        """
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        if proxy is None and tls is None:
            key = url
        else:
            key = f"{proxy}\x00{id(tls) if tls is not None else ''}\x00{url}"
        target = self._targets.get(key)
        if target is None:
            target = self._target(url, proxy, key, tls)
        data = self._head(target, headers, len(body)) + body
        loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweep(loop)
        deadline = loop.time() + total
        pool = target.pool
        fresh = False
        while True:
            conn_deadline = min(loop.time() + connect, deadline)
            conn = await pool.acquire(loop, conn_deadline, connect, endpoint_id, fresh)
            resp = conn.send(data, endpoint_id, first_byte, total, deadline)
            if resp.status == 0 and resp._error is None:
                waiter = resp._waiter = loop.create_future()
                try:
                    await waiter
                except BaseException:  # cancelled mid-exchange: the connection cannot be reused
                    resp._waiter = None
                    resp.close()
                    raise
            error = resp._error
            if error is None or resp.status:
                return resp.status, resp.headers, resp
            if type(error) is not _Stale:
                raise error
            if fresh:  # the retry was not on a fresh connection after all
                raise UpstreamConnectError(
                    endpoint_id, "the server closed the connection without answering, twice"
                )
            fresh = True

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Every few seconds, close what has been idle past the keep-alive time (one timer for
        the whole client, none per request)."""
        now = loop.time()
        for pool in list(self._pools.values()):
            pool.sweep(now)
        every = max(1.0, min(10.0, self._keepalive_timeout / 3))
        self._sweeper = loop.call_later(every, self._sweep, loop)

    async def close(self) -> None:
        """Close every connection. Requests in flight or waiting for a connection fail with
        UpstreamConnectError; new ones raise RuntimeError."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._targets.clear()

    def retire(self, tls: ssl.SSLContext) -> None:
        """Make no more connections with ``tls`` (an endpoint's context that a reload replaced):
        requests already under way finish, then its connections close."""
        for key in [k for k in self._pools if k[-1] is tls]:
            self._pools.pop(key).retire()
        self._targets = {k: t for k, t in self._targets.items() if not t.pool.retired}

    def _target(
        self,
        url: str,
        proxy_url: str | None = None,
        key: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> _Target:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"upstream URL {url!r} is not http:// or https://")
        host = parts.hostname
        if not host:
            raise ValueError(f"upstream URL {url!r} has no host")
        if parts.username is not None:
            raise ValueError(
                f"upstream URL {hide_url_passwords(url)!r} has credentials in it: "
                "put them in headers"
            )
        default = 443 if scheme == "https" else 80
        port = parts.port or default
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        if any(c in path for c in " \r\n\t\0"):
            raise ValueError(f"upstream URL {url!r} has a space or control character in its path")
        proxy = Proxy(proxy_url) if proxy_url is not None else None
        host_header = f"[{host}]" if ":" in host else host
        if port != default:
            host_header = f"{host_header}:{port}"
        extra = ""
        if proxy is not None and scheme == "http":
            # Plain HTTP through a proxy: the proxy gets the absolute URL, and its credential
            # with every request; connections are to the proxy.
            path = f"http://{host_header}{path}"
            if proxy.authorization:
                extra = f"Proxy-Authorization: {proxy.authorization}\r\n"
            pool_key: tuple[object, ...] = (
                "http-via",
                proxy_url or "",
                proxy.host,
                str(proxy.port),
            )
            connect_host, connect_port, tunnel = proxy.host, proxy.port, None
        else:
            # The context object itself is in the key: it lives as long as the pool does, so
            # its id cannot be reused by another context meanwhile.
            pool_key = (scheme, host, str(port), proxy_url or "", tls)
            connect_host, connect_port, tunnel = host, port, proxy
        pool = self._pools.get(pool_key)
        if pool is None:
            ctx = None
            if scheme == "https":
                if tls is None and self._ssl is None:
                    self._ssl = ssl.create_default_context()
                ctx = tls or self._ssl
            pool = self._pools[pool_key] = _Pool(
                connect_host,
                connect_port,
                ctx,
                self._limit,
                self._keepalive_timeout,
                tunnel,
                self._max_lifetime,
            )
        target = _Target(pool, path, host_header, extra)
        if len(self._targets) >= 4096:  # URLs come from config; bound it anyway
            self._targets.clear()
        self._targets[key or url] = target
        return target

    def _head(self, target: _Target, headers: dict[str, str], length: int) -> bytes:
        kinds = self._header_kinds
        lines = []
        host: str | None = None
        for name, value in headers.items():
            kind = kinds.get(name)
            if kind is None:
                kind = self._header_kind(name)
            if kind == _PLAIN:
                lines.append(f"{name}: {value}\r\n")
            elif kind == _HOST:
                host = value
            else:
                raise ValueError(f"header {name!r} is set by the HTTP client; do not pass it")
        block = "".join(lines)
        # Each line ends in exactly one CRLF; any other CR or LF came from a value.
        if block.count("\n") != len(lines) or block.count("\r") != len(lines):
            bad = next(n for n, v in headers.items() if "\r" in v or "\n" in v)
            raise ValueError(f"header {bad!r} has a CR or LF in its value; refusing to send it")
        if host is None:
            text = f"{target.prefix}Content-Length: {length}\r\n{block}\r\n"
        else:
            if "\r" in host or "\n" in host:
                raise ValueError("header 'host' has a CR or LF in its value; refusing to send it")
            text = (
                f"POST {target.path} HTTP/1.1\r\nHost: {host}\r\n{target.extra}"
                f"Content-Length: {length}\r\n{block}\r\n"
            )
        return text.encode()

    def _header_kind(self, name: str) -> int:
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header name {name!r} is not a valid HTTP token")
        lower = name.lower()
        if lower == "host":
            kind = _HOST
        elif lower in ("content-length", "transfer-encoding"):
            kind = _FRAMING
        else:
            kind = _PLAIN
        if len(self._header_kinds) < 1024:
            self._header_kinds[name] = kind
        return kind


__all__ = ["H1Client", "H1Response"]
