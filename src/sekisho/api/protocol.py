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
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sekisho.api.http import READ_TIMEOUT, READ_TIMEOUT_STATE

FLUSH_AT = 65536  # bytes held at most before they are written at once
_CHUNKED = b"\r\ntransfer-encoding: chunked\r\n"


class OneWrite:
    """A transport that joins a response head with its body, and a stream's chunks per turn."""

    __slots__ = ("_held", "_held_size", "_loop", "_streaming", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None
        self._held_size = 0
        self._streaming = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        held = self._held
        if data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":  # a response head
            if held is not None:
                self.flush()
            self._streaming = _CHUNKED in data
            self._hold(data)
        elif held is not None:
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


_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a ``OneWrite`` transport.

    A client has ``server.read_timeout_seconds`` to send a request's headers, counted from the
    connection (or the request's first byte on a reused one); uvicorn waits for ever, so a
    client that connects and stalls (or trickles its headers) held a connection and a file
    descriptor for good. A request begun gets 408 and the connection closes; a connection that
    sent nothing is closed. (The body's own time is kept by ``api.http.read_body``.)

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
        self._read_timeout = float(self.app_state.get(READ_TIMEOUT_STATE, READ_TIMEOUT))
        self._begun = False
        self._read_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self._read_timeout, self._headers_too_slow
        )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self._read_timeout, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._begun = False
        timer = self._read_timer
        if timer is not None:
            timer.cancel()
            self._read_timer = None
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        timer = self._read_timer
        if timer is not None:
            timer.cancel()
            self._read_timer = None
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._read_timer = None
        transport = self.transport
        if transport.is_closing():
            return
        if self._begun:
            body = (
                b'{"error":{"message":"The request headers did not arrive within %g s '
                b'(server.read_timeout_seconds); the connection is closed.",'
                b'"type":"invalid_request_error","param":null,"code":"request_timeout"}}'
                % self._read_timeout
            )
            transport.write(_TIMED_OUT % (len(body), body))
        if self._tls:
            transport.abort()  # nothing is in flight: do not wait for the client's close_notify
        else:
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
