"""An HTTP egress proxy for upstream calls: its URL, its credential, and the CONNECT answer.

``providers/h1.py`` opens the tunnel (``_Pool._open_tunnel``) with these pieces: https
upstreams are reached through ``CONNECT host:port`` with TLS end to end inside it; http
upstreams are sent to the proxy in absolute form.
"""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import unquote, urlsplit


class Proxy:
    """An HTTP proxy (``http://[user:password@]host:port``) upstream traffic goes through."""

    __slots__ = ("authorization", "display", "host", "port")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise ValueError(f"proxy {redact(url)!r} must be http://host:port")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"proxy {redact(url)!r} must have no path or query")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.display = f"{self.host}:{self.port}"
        self.authorization: str | None = None
        if parts.username is not None:
            user, password = unquote(parts.username), unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.authorization = f"Basic {token}"


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


class TunnelSetup(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT; nothing else may arrive before the tunnel is up."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._buffer = b""
        self._answer: asyncio.Future[int] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if self._answer.done():
            return
        if end < 0:
            if len(self._buffer) > 64 * 1024:
                self._answer.set_exception(OSError("the proxy's answer to CONNECT is too long"))
            return
        if end + 4 != len(self._buffer):
            self._answer.set_exception(OSError("the proxy sent data before the tunnel was up"))
            return
        line = self._buffer.split(b"\r\n", 1)[0].split()
        if len(line) < 2 or not line[0].startswith(b"HTTP/1.") or not line[1].isdigit():
            self._answer.set_exception(OSError("the proxy's answer to CONNECT is not HTTP"))
            return
        self._answer.set_result(int(line[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._answer.done():
            self._answer.set_exception(
                OSError(f"the proxy closed the connection during CONNECT ({exc or 'EOF'})")
            )

    async def status(self) -> int:
        return await self._answer
