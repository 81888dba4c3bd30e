"""Open a TCP connection to a host name the way RFC 8305 ("Happy Eyeballs v2") asks.

A model endpoint's name often resolves to IPv6 and IPv4 addresses. Where one family is broken
on the way (an IPv6 route a corporate network drops silently, a dead address left in DNS), a
client that tries the addresses one after another waits for the first attempt's timeout
before it tries the next: with the connect timeout of a few seconds, every new connection
fails although the endpoint is reachable. uvloop's ``create_connection`` has no
``happy_eyeballs_delay``, so sekisho does it here, as asyncio's own loop would:

- resolve once, then order the addresses by alternating families, the resolver's first family
  first (RFC 8305 §4);
- start the first attempt; start the next one when the previous attempt failed or after
  ``ATTEMPT_DELAY`` (RFC 8305 §5 recommends 250 ms), whichever comes first;
- the first connected socket wins; every other attempt is cancelled and its socket closed,
  also when the caller itself is cancelled (its connect timeout);
- when every attempt fails, the error names each address and why.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

ATTEMPT_DELAY = 0.25
P = TypeVar("P", bound=asyncio.BaseProtocol)

AddrInfo = tuple[int, int, int, str, Any]  # family, type, proto, canonname, sockaddr
Resolver = Callable[[str, int], Awaitable[Sequence[AddrInfo]]]


async def system_resolver(host: str, port: int) -> Sequence[AddrInfo]:
    loop = asyncio.get_running_loop()
    return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)


def interleave(infos: Sequence[AddrInfo]) -> list[AddrInfo]:
    """The resolver's order, families alternating from the first one's (RFC 8305 §4)."""
    unique = list(dict.fromkeys((i[0], i[1], i[2], i[4]) for i in infos))
    if not unique:
        return []
    first = unique[0][0]
    same = [i for i in unique if i[0] == first]
    other = [i for i in unique if i[0] != first]
    out: list[AddrInfo] = []
    for n in range(max(len(same), len(other))):
        for group in (same, other):
            if n < len(group):
                family, type_, proto, addr = group[n]
                out.append((family, type_, proto, "", addr))
    return out


async def _attempt(loop: asyncio.AbstractEventLoop, info: AddrInfo) -> socket.socket:
    family, type_, proto, _, addr = info
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


def _close_if_connected(task: asyncio.Task[socket.socket]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


async def open_socket(
    host: str,
    port: int,
    *,
    resolver: Resolver | None = None,
    delay: float = ATTEMPT_DELAY,
) -> socket.socket:
    """A connected non-blocking socket to ``host:port`` (raises ``OSError`` if none)."""
    loop = asyncio.get_running_loop()
    infos = interleave(await (resolver or system_resolver)(host, port))
    if not infos:
        raise OSError(f"{host} resolves to no address")
    if len(infos) == 1:
        return await _attempt(loop, infos[0])
    running: set[asyncio.Task[socket.socket]] = set()
    failures: list[str] = []
    try:
        for info in infos:
            task = loop.create_task(_attempt(loop, info))
            task.set_name(_display(info[4]))
            running.add(task)
            winner = await _next(running, failures, delay)
            if winner is not None:
                return winner
        while running:
            winner = await _next(running, failures, None)
            if winner is not None:
                return winner
    finally:
        for task in running:
            task.cancel()
            # An attempt that connects before its cancellation lands closes what it opened.
            task.add_done_callback(_close_if_connected)
    raise OSError(f"every address of {host} failed: " + "; ".join(failures))


async def _next(
    running: set[asyncio.Task[socket.socket]], failures: list[str], delay: float | None
) -> socket.socket | None:
    """The socket of an attempt that connected; or None when ``delay`` passed or an attempt
    failed, either of which lets the next address start (RFC 8305 §5)."""
    done, _ = await asyncio.wait(running, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    winner = None
    for task in done:
        running.discard(task)
        exc = task.exception()
        if exc is not None:
            failures.append(f"{task.get_name()}: {exc}")
        elif winner is None:
            winner = task.result()
        else:
            task.result().close()  # two connected in the same instant: keep one
    return winner


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], P],
    host: str,
    port: int,
    **kw: Any,
) -> tuple[asyncio.Transport, P]:
    """``loop.create_connection`` (``kw``: ``ssl``, ``server_hostname``) over ``open_socket``;
    the socket is closed if the transport cannot be made (a failed TLS handshake, say)."""
    sock = await open_socket(host, port)
    try:
        return await loop.create_connection(protocol_factory, sock=sock, **kw)
    except BaseException:
        sock.close()
        raise


def _display(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
