"""The HTTP/1.1 protocol sekisho serves with: uvicorn's httptools protocol over a transport that
saves system calls without delaying anything the client is waiting for.

uvicorn writes the status line and headers as soon as the app sends ``http.response.start``,
then each body message as it comes: two ``write`` system calls for a plain response, and one
per event for a stream, although events often arrive from the upstream several to a read. On
loopback each write also delivers the segment to the reader inside the writer's system call,
so every extra write costs as much as the first. ``OneWrite``:

- holds a response head until its body joins it (a plain response leaves in one write, at once);
- in a stream (``transfer-encoding: chunked``), gathers the chunks written in one turn of the
  event loop and sends them in one write at the end of that turn: a burst of events that
  arrived together leaves together, and an event that arrives alone leaves alone, just as soon;
- sends anything held when the loop turns, when it grows past ``FLUSH_AT`` bytes and before
  the connection closes. Nothing is reordered and nothing waits on the network.

An HTTP/1.0 client cannot read chunked framing (RFC 9112 §6.1: a server must not send
``Transfer-Encoding`` to it), yet uvicorn frames every body of unknown length that way. For
such a client ``OneWrite`` takes the framing off again: the head loses its
``transfer-encoding`` and the body goes out as it is, ended by the connection's close (which
uvicorn always does after an HTTP/1.0 request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sekisho.api.http import (
    HEAD_REFUSED_STATE,
    MAX_HEADER_BYTES,
    MAX_HEADER_STATE,
    READ_TIMEOUT,
    READ_TIMEOUT_STATE,
    WRITE_TIMEOUT,
    WRITE_TIMEOUT_STATE,
    ClientStalled,
    new_request_id,
)

FLUSH_AT = 65536  # bytes held at most before they are written at once
_CHUNKED = b"\r\ntransfer-encoding: chunked\r\n"


class OneWrite:
    """A transport that joins a response head with its body, and a stream's chunks per turn."""

    __slots__ = (
        "_held", "_held_size", "_loop", "_streaming", "_transport", "_unchunk", "http10"
    )  # fmt: skip

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None
        self._held_size = 0
        self._streaming = False
        self.http10 = False  # set per request by the protocol: the client speaks HTTP/1.0
        self._unchunk = False  # this response's body is framed by uvicorn, not by the wire

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        held = self._held
        if data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":  # a response head
            if held is not None:
                self.flush()
            self._streaming = _CHUNKED in data
            self._unchunk = self._streaming and self.http10
            if self._unchunk:
                data = data.replace(_CHUNKED, b"\r\n", 1)
            self._hold(data)
            return
        if self._unchunk:
            data = _unframed(data)
            if not data:
                return
        if held is not None:
            held.append(data)
            self._held_size += len(data)
            if not self._streaming or self._held_size >= FLUSH_AT:
                self.flush()
        elif self._streaming and data:
            self._hold(data)
        else:
            self._transport.write(data)

    def _hold(self, data: bytes) -> None:
        self._held = [data]
        self._held_size = len(data)
        self._loop.call_soon(self.flush)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._held_size = 0
            if not self._transport.is_closing():
                self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _unframed(data: bytes) -> bytes:
    """The payload of uvicorn's chunked framing in one write: ``size CRLF data CRLF``, any
    number of times, the last chunk (``0 CRLF CRLF``) included."""
    out: list[bytes] = []
    at = 0
    while at < len(data):
        eol = data.index(b"\r\n", at)
        size = int(data[at:eol], 16)
        if size == 0:
            break
        start = eol + 2
        out.append(data[start : start + size])
        at = start + size + 2
    return b"".join(out)


class TimedFlow(FlowControl):
    """uvicorn's flow control, with a deadline on a client that stops reading.

    uvicorn's ``send`` waits in ``drain()`` whenever the connection's write buffer is over its
    high-water mark, and waits for as long as the client does not read: a client that stopped
    reading a stream held its connection, its request (and the endpoint's
    ``max_concurrency`` slot the request holds) for good. Here the wait lasts at most
    ``server.write_timeout_seconds``; then the connection is aborted and ``send`` raises
    ``ClientStalled``. Nothing is timed while the client keeps up: the deadline exists only
    while the transport has paused writing."""

    def __init__(self, transport: asyncio.Transport, timeout: float) -> None:
        super().__init__(transport)
        self._timeout = timeout

    async def drain(self) -> None:
        writable = self._is_writable_event
        if writable.is_set():
            return
        try:
            async with asyncio.timeout(self._timeout):
                await writable.wait()
        except TimeoutError:
            if writable.is_set():  # resumed at the deadline
                return
            if not self._transport.is_closing():
                self._transport.abort()  # what is buffered for it will never be read
            raise ClientStalled() from None


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a ``OneWrite`` transport.

    A request's head (request line and headers) is bounded in time and size. uvicorn bounds
    neither, and httptools joins a header's pieces by copying: one client sending an endless
    header drove a gateway to 431 MB and a busy core, and a client that connected and stalled
    held its connection for good. Here:

    - the head must arrive within ``server.read_timeout_seconds``, counted from the connection
      (or from the end of the previous request on a reused one): a request begun gets 408, a
      connection that sent nothing is closed;
    - it may not exceed ``server.max_header_bytes``: 431, and the connection closes.

    (The body's time and size are kept by ``api.http.read_body``.)

    Writing has a deadline too (``TimedFlow``): a client that stops reading its answer for
    ``server.write_timeout_seconds`` has its connection ended.

    A request that offers to switch protocols (``Upgrade: h2c``: what Java's HTTP client and
    ``curl --http2`` send on plain http) is served as the HTTP/1.1 request it also is, body and
    all (RFC 9110 §7.8 lets a server ignore the offer). httptools stops at such a request's
    headers and takes what follows for another protocol: uvicorn handed the application an
    empty body, and a body that came after the headers was parsed as the next request.

    Over TLS (``server.tls``), an idle keep-alive connection is ended at once when the server
    shuts down or its keep-alive time runs out. ``close()`` would send close_notify and then
    wait for the client's own, up to 30 s, and a pooled client that is not using the connection
    never reads it: one idle client held every shutdown for 30 s. Nothing is in flight on an
    idle connection, and HTTP/1.1 lets either side end it at any time.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._tls = transport.get_extra_info("ssl_object") is not None
        self.transport = OneWrite(transport, self.loop)  # type: ignore[assignment]
        state = self.app_state
        self.flow = TimedFlow(transport, float(state.get(WRITE_TIMEOUT_STATE, WRITE_TIMEOUT)))
        self._read_timeout = float(state.get(READ_TIMEOUT_STATE, READ_TIMEOUT))
        self._max_head = int(state.get(MAX_HEADER_STATE, MAX_HEADER_BYTES))
        self._count_refusal: Callable[[str], None] | None = state.get(HEAD_REFUSED_STATE)
        self._begun = False  # the current head's first byte has arrived
        self._in_head = True  # bytes now arriving belong to a request's head
        self._head_bytes = 0
        self._read_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self._read_timeout, self._head_too_slow
        )
        self._body_timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the head's last bytes so far: its end may straddle two reads
        self._framing_only = False  # parsing a made-up head that only frames a request's body

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            self._feed(data)
            return
        before = self._head_bytes
        self._head_bytes += len(data)
        if self._head_bytes > self._max_head:
            # Measured before parsing: a whole oversized head in one read would be parsed,
            # answered and forgotten before a check after it could see its size.
            seen = self._tail + data
            end = seen.find(b"\r\n\r\n")
            head = self._head_bytes if end < 0 else before - len(self._tail) + end + 4
            if head > self._max_head:
                self._refuse_head(
                    b"431 Request Header Fields Too Large",
                    b"The request line and headers exceed %d bytes (server.max_header_bytes)."
                    % self._max_head,
                    b"request_header_fields_too_large",
                    "header_too_large",
                )
                return
        self._tail = data[-3:]
        self._feed(data)
        if not self._in_head and self._body_timer is None and not self.transport.is_closing():
            # The head is in, its body is not: the body owes the same time the head did.
            # (read_body times what follows its first wait; this covers that first wait,
            # which a client that sends headers and then nothing would hold for ever.)
            self._body_timer = self.loop.call_later(self._read_timeout, self._body_too_slow)

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received``, except for an upgrade it does not take."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._ignore_upgrade(data[upgrade.args[0] :])

    def _ignore_upgrade(self, rest: bytes) -> None:
        """Go on with the request as HTTP/1.1. httptools ended it at its headers, so the body
        is read with a new parser, given a head that only frames it (its Content-Length or
        Transfer-Encoding) and that begins nothing: the request's cycle, not yet running, gets
        the body, and whatever follows is the next request. A request that ends its connection
        (Connection: close, HTTP/1.0) says so in that head too: what follows it is ignored, as
        for any such request, not parsed as another."""
        framing = b"".join(
            b"%s: %s\r\n" % (name, value)
            for name, value in self.headers
            if name in (b"content-length", b"transfer-encoding")
        )
        if not self.cycle.keep_alive:
            framing += b"connection: close\r\n"
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's
        self.cycle.more_body = True
        self.cycle.message_event.clear()
        self._framing_only = True
        try:
            self._feed(b"POST / HTTP/1.1\r\n" + framing + b"\r\n")
        finally:
            self._framing_only = False
        if rest and not self.transport.is_closing():
            self._feed(rest)

    def on_url(self, url: bytes) -> None:
        if not self._framing_only:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._framing_only:
            super().on_header(name, value)

    def on_message_begin(self) -> None:
        if self._framing_only:
            return
        super().on_message_begin()
        self._begun = True
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self._read_timeout, self._head_too_slow)

    def on_headers_complete(self) -> None:
        self._begun = self._in_head = False
        self._cancel_read_timer()
        if self._framing_only:
            return
        self.transport.http10 = self.parser.get_http_version() == "1.0"  # type: ignore[attr-defined]
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what comes next is the next request's head
        self._head_bytes = 0
        self._tail = b""
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().connection_lost(exc)

    def _body_too_slow(self) -> None:
        """The body has not arrived within the read timeout of its head: 408, closed. The
        handler waiting for it hears the client is gone; its answer, if any, goes nowhere."""
        self._body_timer = None
        if self._in_head or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self._end()  # the handler already answered (an error before reading): just close
            return
        self._refuse_head(
            b"408 Request Timeout",
            b"The request body did not arrive within %g s (server.read_timeout_seconds)."
            % self._read_timeout,
            b"request_timeout",
            "body_timeout",
        )
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()

    def _cancel_read_timer(self) -> None:
        timer = self._read_timer
        if timer is not None:
            timer.cancel()
            self._read_timer = None

    def _head_too_slow(self) -> None:
        self._read_timer = None
        if self._begun:
            self._refuse_head(
                b"408 Request Timeout",
                b"The request headers did not arrive within %g s (server.read_timeout_seconds)."
                % self._read_timeout,
                b"request_timeout",
                "header_timeout",
            )
        else:
            self._counted("no_request")
            self._end()

    def _counted(self, reason: str) -> None:
        if self._count_refusal is not None:
            self._count_refusal(reason)

    def _refuse_head(self, status: bytes, message: bytes, code: bytes, reason: str) -> None:
        """Answer a request whose head cannot be accepted, in OpenAI's error shape, and close:
        the rest of what the client sends cannot be parsed reliably."""
        self._in_head = False
        self._cancel_read_timer()
        if self.transport.is_closing():
            return
        self._counted(reason)
        body = (
            b'{"error":{"message":"%s The connection is closed.","type":"invalid_request_error",'
            b'"param":null,"code":"%s"}}' % (message, code)
        )
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"x-request-id: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (status, new_request_id().encode(), len(body), body)
        )
        self._end(answered=True)

    def send_400_response(self, msg: str) -> None:
        """A request that is not HTTP/1.1 (a bad Content-Length, both Content-Length and
        chunked, a broken chunk, a garbled request line): OpenAI's error shape, not uvicorn's
        plain text, and the connection closes."""
        self._refuse_head(
            b"400 Bad Request",
            b"The request is not valid HTTP/1.1 (its framing: request line, Content-Length or "
            b"chunked encoding).",
            b"invalid_http",
            "invalid_http",
        )

    def _end(self, *, answered: bool = False) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if self._tls and not answered:
            transport.abort()  # nothing is in flight: do not wait for the client's close_notify
        else:
            # close() sends what was written first (abort() would drop the answer); no more
            # data_received after it: the rest is never parsed.
            transport.close()

    def shutdown(self) -> None:
        if self._tls and (self.cycle is None or self.cycle.response_complete):
            self.transport.abort()
        else:
            super().shutdown()

    def timeout_keep_alive_handler(self) -> None:
        if self._tls and not self.transport.is_closing():
            self.transport.abort()
        else:
            super().timeout_keep_alive_handler()
