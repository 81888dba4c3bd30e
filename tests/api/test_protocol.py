"""The HTTP protocol sekisho serves with: a response's head and body leave in one write, and
nothing is held back when the body does not follow at once (streams, HEAD, 100-continue)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st

from sekisho.api.protocol import FLUSH_AT, HttpProtocol, OneWrite

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


async def test_a_head_and_the_body_sent_right_after_it_leave_in_one_write() -> None:
    raw = Recording()
    t = OneWrite(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    assert raw.writes == []
    t.write(memoryview(b"{}"))
    assert raw.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)
    assert raw.writes == [HEAD + b"{}"]  # nothing left over to flush


async def test_a_head_alone_leaves_when_the_loop_turns() -> None:
    raw = Recording()
    t = OneWrite(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    assert t.get_write_buffer_size() == len(HEAD)
    await asyncio.sleep(0)
    assert raw.writes == [HEAD]
    t.write(b"{}")
    assert raw.writes == [HEAD, b"{}"]


async def test_closing_sends_a_held_head_first_and_other_calls_reach_the_transport() -> None:
    raw = Recording()
    t = OneWrite(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    t.close()
    assert raw.writes == [HEAD] and raw.closed
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)
    t.write(b"late body bytes")  # not a head: passed through untouched
    assert raw.writes[-1] == b"late body bytes"


async def test_stream_chunks_written_in_one_turn_leave_in_one_write() -> None:
    raw = Recording()
    t = OneWrite(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(SSE_HEAD)
    chunks = [b"9\r\ndata: %d\n\n\r\n" % i for i in range(3)]
    for c in chunks:
        t.write(c)
    assert raw.writes == []  # a burst is gathered until the loop turns
    await asyncio.sleep(0)
    assert raw.writes == [SSE_HEAD + b"".join(chunks)]
    # a chunk that arrives in a later turn leaves in that turn, on its own
    t.write(b"0\r\n\r\n")
    await asyncio.sleep(0)
    assert raw.writes[1:] == [b"0\r\n\r\n"]
    # the next response on the connection is a plain one again: its body is not held
    t.write(HEAD)
    t.write(b"{}")
    assert raw.writes[2:] == [HEAD + b"{}"]


async def test_a_large_burst_is_written_once_it_reaches_the_flush_size() -> None:
    raw = Recording()
    t = OneWrite(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(SSE_HEAD)
    big = b"x" * (FLUSH_AT // 4)
    for _ in range(4):
        t.write(big)
    assert len(raw.writes) == 1 and len(raw.writes[0]) == len(SSE_HEAD) + FLUSH_AT
    assert t.get_write_buffer_size() == 0


async def test_a_new_head_sends_what_is_held_first() -> None:
    raw = Recording()
    t = OneWrite(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(SSE_HEAD)
    t.write(b"0\r\n\r\n")
    t.write(HEAD)
    t.write(b"{}")
    assert raw.writes == [SSE_HEAD + b"0\r\n\r\n", HEAD + b"{}"]


# -- over a real socket --------------------------------------------------------------------


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-kind", b"sse")]})
        await asyncio.sleep(0.5)
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = b"echo:" + body
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(answer)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def server() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(
        uvicorn.Config(app, http=HttpProtocol, lifespan="on", log_config=None, access_log=False)
    )
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    while not srv.started:
        await asyncio.sleep(0.01)
    yield port
    srv.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.startswith(b"content-length")
    )
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_keep_alive_requests_on_one_connection_get_their_own_answers(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    for i in range(3):
        body = f"request {i}".encode()
        writer.write(
            b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        head, answer = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer == b"echo:" + body
    writer.close()


async def test_pipelined_requests_are_answered_in_order(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(
        b"".join(
            b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 1\r\n\r\n%d" % i for i in range(3)
        )
    )
    answers = [(await read_response(reader))[1] for _ in range(3)]
    assert answers == [b"echo:0", b"echo:1", b"echo:2"]
    writer.close()


async def test_a_head_request_gets_its_head_without_a_body(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"HEAD /x HTTP/1.1\r\nhost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 5" in head
    writer.close()


async def test_a_streams_head_arrives_before_its_first_chunk_is_ready(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert loop.time() - started < 0.4  # the app sends the first chunk only after 0.5 s
    assert b"x-kind: sse" in head and b"transfer-encoding: chunked" in head
    chunk = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    assert b"data: 1" in chunk
    writer.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(
        b"POST /x HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"body")
    _, answer = await read_response(reader)
    assert answer == b"echo:body"
    writer.close()


async def test_connection_close_gets_the_whole_answer_then_eof(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"POST /x HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi")
    data = await asyncio.wait_for(reader.read(), 5)  # until EOF
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\necho:hi")
    writer.close()


# What Java's HTTP client (java.net.http, Spring's RestClient) and curl --http2 send on plain
# http: an offer to switch to HTTP/2, on an ordinary request with its body.
H2C = b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAA\r\n"


async def test_a_request_offering_h2c_is_served_as_http_1_1_with_its_body(server: int) -> None:
    """RFC 9110 §7.8: a server may ignore an Upgrade. httptools stopped at the headers of such a
    request: its body never reached the application (an empty body: the gateway answered 400
    'The request body is empty'), and a body sent after the headers was parsed as the next
    request (400 invalid_http, connection closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"POST /x HTTP/1.1\r\nhost: t\r\n" + H2C + b"content-length: 5\r\n\r\nhello")
    head, answer = await read_response(reader)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and answer == b"echo:hello"
    # The body after the headers, as Java's client writes it; then the connection goes on.
    writer.write(b"POST /x HTTP/1.1\r\nhost: t\r\n" + H2C + b"content-length: 3\r\n\r\n")
    await asyncio.sleep(0.05)
    writer.write(b"abc")
    assert (await read_response(reader))[1] == b"echo:abc"
    writer.write(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nok")
    assert (await read_response(reader))[1] == b"echo:ok"
    writer.close()


@pytest.mark.parametrize(
    "head",
    [
        b"POST /x HTTP/1.1\r\nhost: t\r\nconnection: close, Upgrade\r\nupgrade: h2c\r\n",
        b"POST /x HTTP/1.0\r\nhost: t\r\n" + H2C,
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_what_follows_an_h2c_offer_that_ends_its_connection_is_not_read(
    server: int, head: bytes
) -> None:
    """A request that ends its connection (Connection: close, or HTTP/1.0) is the last one on
    it, offering h2c or not: what the client sends after its body is not parsed. It was, as the
    next request: bytes that are not one got a 400 in place of the request's own answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(head + b"content-length: 2\r\n\r\nhi" + b"not a request\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)  # until EOF
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\necho:hi")
    writer.close()


@settings(max_examples=25, deadline=None)  # a server per example: a fifth of a second each
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=6))
def test_any_split_of_h2c_offers_chunked_and_pipelined_gives_each_its_own_body(
    cuts: list[int],
) -> None:
    """A chunked body, a request without one and a pipelined plain request, each offering
    h2c or not, arrive cut anywhere: each is answered with exactly its own body, in order."""
    wire = (
        b"POST /x HTTP/1.1\r\nhost: t\r\n" + H2C + b"transfer-encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /x HTTP/1.1\r\nhost: t\r\n" + H2C + b"\r\n"
        b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\n\r\nlast"
    )
    pieces, at = [], 0
    for cut in sorted(set(cuts)):
        if at < cut < len(wire):
            pieces.append(wire[at:cut])
            at = cut
    pieces.append(wire[at:])

    async def exchange() -> list[bytes]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        srv = uvicorn.Server(
            uvicorn.Config(app, http=HttpProtocol, lifespan="off", log_config=None,
                           access_log=False)
        )  # fmt: skip
        task = asyncio.create_task(srv.serve(sockets=[sock]))
        while not srv.started:
            await asyncio.sleep(0.01)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.002)
            answers = [(await read_response(reader))[1] for _ in range(3)]
            writer.close()
            return answers
        finally:
            srv.should_exit = True
            await asyncio.wait_for(task, 10)

    assert asyncio.run(exchange()) == [b"echo:abcde", b"echo:", b"echo:last"]


@given(
    parts=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    last=st.binary(max_size=300),
)
def test_an_http_1_0_stream_carries_exactly_the_bytes_of_each_chunk(
    parts: list[bytes], last: bytes
) -> None:
    """Whatever the events hold (CRLFs, hex digits, "0"), only uvicorn's framing is taken off."""

    def framed(body: bytes, more: bool) -> bytes:  # as uvicorn writes a body message
        out = b"%x\r\n" % len(body) + body + b"\r\n" if body else b""
        return out if more else out + b"0\r\n\r\n"

    async def run() -> list[bytes]:
        rec = Recording()
        one = OneWrite(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
        one.http10 = True
        one.write(SSE_HEAD)
        for part in parts:
            one.write(framed(part, True))
            await asyncio.sleep(0)
        one.write(framed(last, False))
        await asyncio.sleep(0)
        return rec.writes

    writes = asyncio.run(run())
    sent = b"".join(writes)
    head, _, body = sent.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head
    assert head + b"\r\n\r\n" == SSE_HEAD.replace(b"transfer-encoding: chunked\r\n", b"")
    assert body == b"".join(parts) + last
