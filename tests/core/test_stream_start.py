"""The start of an upstream stream, read before the gateway commits to it (``Primed``): what
an endpoint sends before its first event, over a real socket on 127.0.0.1."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sekisho._upstream import Primed
from sekisho.classify import Scanner
from sekisho.providers.h1 import H1Client

FIRST = b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}'

Serve = Callable[[bytes, int], Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """A server answering a stream: ``prelude`` sent ``times`` times, then a first event."""
    servers: list[asyncio.Server] = []

    async def start(prelude: bytes, times: int) -> int:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(times):
                writer.write(b"%x\r\n%s\r\n" % (len(prelude), prelude))
                await writer.drain()
            end = FIRST + b"\n\ndata: [DONE]\n\n"
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(end), end))
            await writer.drain()
            await reader.read()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()


async def prime(port: int) -> Primed:
    client = H1Client()
    try:
        _, _, resp = await client.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            b"{}",
            {},
            connect=2,
            first_byte=10,
            total=60,
            endpoint_id="ep",
        )
        return await Primed.prime(resp, "ep", "chat", Scanner())
    finally:
        await client.close()


async def test_comments_before_the_first_event_are_not_held_in_memory(serve: Serve) -> None:
    """Every line before the first event was kept until it came: an endpoint sending comments
    (or event:, id: lines) for its whole total timeout could fill the gateway's memory."""
    prelude = (b": " + b"x" * 1000 + b"\nevent: ping\nid: 7\n\n") * 64  # 64 KiB a chunk
    port = await serve(prelude, 1024)  # 64 MiB before the first event
    tracemalloc.start()
    try:
        primed = await prime(port)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"{peak} bytes held while reading 64 MiB of comments"
    lines = [line async for line in primed.lines()]
    assert [line for line in lines if line.startswith(b"data:")] == [FIRST, b"data: [DONE]"]
