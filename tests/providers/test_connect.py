"""Happy Eyeballs (RFC 8305) for upstream connections: a dead address among a name's addresses
costs at most the attempt delay, never the connect timeout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest

from loops import both_loops, event_loop_policy  # noqa: F401  (a fixture)
from sekisho.providers import connect
from sekisho.providers.connect import AddrInfo, interleave, open_socket
from sekisho.providers.h1 import H1Client

V4 = socket.AF_INET
V6 = socket.AF_INET6


pytestmark = both_loops


def info(port: int, host: str = "127.0.0.1", family: int = V4) -> AddrInfo:
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))


def resolving_to(*infos: AddrInfo) -> Any:
    async def resolve(host: str, port: int) -> Sequence[AddrInfo]:
        return infos

    return resolve


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A port whose SYNs are dropped: its listener's accept queue is full and never drained."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        fillers.append(c)
    time.sleep(0.05)
    probe = socket.socket()
    probe.settimeout(0.3)
    with pytest.raises(TimeoutError):  # the premise of these tests: connecting here hangs
        probe.connect(("127.0.0.1", port))
    probe.close()
    try:
        yield port
    finally:
        for c in fillers:
            c.close()
        srv.close()


@pytest.fixture
async def listening() -> AsyncIterator[int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def refused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_families_alternate_from_the_resolvers_first_and_duplicates_go() -> None:
    a6, b6 = info(1, "2001:db8::1", V6), info(1, "2001:db8::2", V6)
    a4, b4, c4 = info(1, "192.0.2.1"), info(1, "192.0.2.2"), info(1, "192.0.2.3")
    assert interleave([a6, b6, a6, a4, b4, c4]) == [a6, a4, b6, b4, c4]
    assert interleave([a4, a6, b4]) == [a4, a6, b4]
    assert interleave([]) == []


async def test_a_dead_first_address_costs_the_attempt_delay_not_the_timeout(
    listening: int,
) -> None:
    with blackhole() as dead:
        started = time.monotonic()
        sock = await open_socket(
            "upstream.test", 443, resolver=resolving_to(info(dead), info(listening)), delay=0.1
        )
        elapsed = time.monotonic() - started
    with sock:
        assert sock.getpeername()[1] == listening
    assert 0.08 <= elapsed < 1.0, elapsed  # the second address started after the delay


async def test_a_refused_address_lets_the_next_start_at_once(listening: int) -> None:
    started = time.monotonic()
    sock = await open_socket(
        "upstream.test", 443, resolver=resolving_to(info(refused_port()), info(listening))
    )
    with sock:
        assert sock.getpeername()[1] == listening
    assert time.monotonic() - started < connect.ATTEMPT_DELAY  # no waiting for the delay


async def test_when_every_address_fails_the_error_names_each() -> None:
    a, b = refused_port(), refused_port()
    with pytest.raises(OSError, match=rf"127\.0\.0\.1:{a}: .*; 127\.0\.0\.1:{b}: ") as e:
        await open_socket("upstream.test", 443, resolver=resolving_to(info(a), info(b)))
    assert "every address of upstream.test failed" in str(e.value)


async def test_a_name_without_addresses_is_an_error() -> None:
    with pytest.raises(OSError, match="resolves to no address"):
        await open_socket("upstream.test", 443, resolver=resolving_to())


async def test_a_caller_that_gives_up_leaves_no_socket_open() -> None:
    before = open_fds()
    with blackhole() as one, blackhole() as two:
        during = open_fds()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                open_socket("upstream.test", 1, resolver=resolving_to(info(one), info(two))),
                timeout=0.3,
            )
        await asyncio.sleep(0.05)  # cancelled attempts close their sockets as they end
        assert open_fds() == during
    assert open_fds() == before


async def test_the_client_reaches_an_endpoint_whose_first_address_is_dead(
    listening: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    good = server.sockets[0].getsockname()[1]
    client = H1Client()
    try:
        with blackhole() as dead:
            monkeypatch.setattr(connect, "system_resolver", resolving_to(info(dead), info(good)))
            status, _, resp = await client.post(
                "http://models.example.internal/v1/chat/completions",
                b"{}",
                {"Content-Type": "application/json"},
                connect=2.0,
                first_byte=2.0,
                total=5.0,
                endpoint_id="ep-dual-stack",
            )
            assert status == 200 and await resp.read() == b"ok"
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
