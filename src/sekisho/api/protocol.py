"""The HTTP/1.1 protocol sekisho serves with: uvicorn's httptools protocol, sending a response's
head and its first body bytes in one write.

uvicorn writes the status line and headers as soon as the app sends ``http.response.start``,
then the body on ``http.response.body``: two ``write`` system calls and two TCP segments per
response, although sekisho always sends the body right after the head. On loopback each write
also delivers the segment to the reader inside the writer's system call, so the second write
costs as much as the first. ``OneWrite`` holds the head until the end of the current event-loop
iteration: if the body comes first (every complete response), both leave in one write; if not
(a stream waiting for its next chunk, a HEAD answer), the head leaves on its own one iteration
later. Nothing is reordered and nothing waits on the network.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class OneWrite:
    """A transport that holds a response head until the body joins it or the loop turns."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a ``OneWrite`` transport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = OneWrite(transport, self.loop)  # type: ignore[assignment]
