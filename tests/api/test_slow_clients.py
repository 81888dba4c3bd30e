"""Slow and stalled clients (``server.read_timeout_seconds``): a client that connects and sends
nothing, trickles its headers, or stops half-way through its body gets 408 (or, having sent
nothing, a closed connection) instead of holding a connection and a file descriptor for ever.
A client that stops reading its answer (``server.write_timeout_seconds``) has its connection
ended. Raw sockets against the real gateway on loopback: no SDK sends a request this badly."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from harness import Harness, ledger_entries, receipt, request

TIMEOUT = 0.5


@pytest.fixture
def gw(gateways: Callable[..., Harness]) -> Harness:
    def quick(raw: dict[str, Any]) -> None:
        raw.setdefault("server", {})["read_timeout_seconds"] = TIMEOUT

    return gateways(quick)


def connect(h: Harness) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", h.port), timeout=10)
    return s


def read_all(s: socket.socket) -> tuple[bytes, float]:
    """Everything the gateway sends until it closes; and how long that took."""
    started = time.monotonic()
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data, time.monotonic() - started


def error_of(response: bytes) -> dict[str, Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert b"connection: close" in head.lower()
    error: dict[str, Any] = json.loads(body)["error"]
    return error


def test_a_connection_that_sends_nothing_is_closed(gw: Harness) -> None:
    with connect(gw) as s:
        data, took = read_all(s)
    assert data == b""  # nothing was asked, so nothing is answered: just closed
    assert TIMEOUT * 0.8 < took < TIMEOUT + 3


def test_headers_that_stop_half_way_get_408(gw: Harness) -> None:
    with connect(gw) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Ty")
        data, took = read_all(s)
    error = error_of(data)
    assert error["code"] == "request_timeout"
    assert "headers" in error["message"] and "server.read_timeout_seconds" in error["message"]
    assert took < TIMEOUT + 3


def test_a_body_that_stops_half_way_gets_408_and_nothing_goes_upstream(gw: Harness) -> None:
    before = gw.bytes_received()
    body = json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "こんにちは"}]}
    ).encode()
    with connect(gw) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
            b"Authorization: Bearer " + gw.key().encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:20]
        )
        data, took = read_all(s)
    error = error_of(data)
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    assert "body" in error["message"]
    assert took < TIMEOUT + 3
    assert gw.bytes_received() == before
    # The gateway serves everyone else as before.
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    assert client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    ).choices


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/admin/v1/keys"])
def test_headers_then_no_body_at_all_get_408(gw: Harness, path: str) -> None:
    """The first wait for a body was not timed: a client that sent its headers (with a valid
    key) and then nothing held its connection for ever, on every route that reads a body."""
    key = gw.key(role="admin") if path.startswith("/admin") else gw.key()
    with connect(gw) as s:
        s.sendall(
            b"POST %s HTTP/1.1\r\nHost: gateway\r\n" % path.encode()
            + b"Authorization: Bearer "
            + key.encode()
            + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        data, took = read_all(s)
    error = error_of(data)
    assert error["code"] == "request_timeout" and "body" in error["message"]
    assert took < TIMEOUT + 3
    assert request("GET", gw.root + "/healthz").status_code == 200


def test_a_slow_client_within_the_time_is_served(gw: Harness) -> None:
    body = json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "ゆっくり"}]}
    ).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
        b"Authorization: Bearer " + gw.key().encode() + b"\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    with connect(gw) as s:
        # Headers in two parts, then the body in two parts, each pause well inside the limit.
        cut_head = request.index(b"Content-Type")
        cut_body = len(request) - len(body) // 2
        for part in (request[:cut_head], request[cut_head:cut_body], request[cut_body:]):
            s.sendall(part)
            time.sleep(TIMEOUT / 3)
        data, _ = read_all(s)
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    assert b"SIMULATOR" in data


def test_an_idle_keep_alive_connection_then_a_slow_request_is_timed_from_its_first_byte(
    gw: Harness,
) -> None:
    """The timer starts at the request's first byte, not at the connection: a client may pause
    between requests (uvicorn's keep-alive time covers that), then owes each request's
    headers within the limit."""
    with connect(gw) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        time.sleep(TIMEOUT * 2)  # idle, inside uvicorn's 5 s keep-alive
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        second = s.recv(65536)
        assert second.startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gat")
        data, _ = read_all(s)
    assert error_of(data)["code"] == "request_timeout"


def test_headers_beyond_max_header_bytes_get_431_at_once(gw: Harness) -> None:
    """uvicorn and httptools bound neither: one client sending an endless header took a
    gateway to 431 MB and a busy core until the connection was cut."""
    with connect(gw) as s:
        started = time.monotonic()
        # Just past the 64 KiB default, all sent before the gateway answers (so it closes
        # cleanly, not with the client's bytes unread); an endless header stops there too.
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Padding: " + b"a" * 70_000)
        data, _ = read_all(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), head
    error = json.loads(body)["error"]
    assert error["code"] == "request_header_fields_too_large"
    assert "65536" in error["message"] and "server.max_header_bytes" in error["message"]
    assert time.monotonic() - started < TIMEOUT  # refused by size, not by the timer


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked"
        b"\r\n\r\nnot-hex\r\n{}\r\n0\r\n\r\n",
        b"GARBAGE\x01\x02 / HTTP/1.1\r\n\r\n",
    ],
    ids=["content-length not a number", "length and chunked", "bad chunk size", "request line"],
)
def test_a_request_that_is_not_http_gets_openais_error_shape_and_an_id(
    gw: Harness, request_bytes: bytes
) -> None:
    """uvicorn answered these in plain text, with no request id for the operator's logs."""
    with connect(gw) as s:
        s.sendall(request_bytes)
        data, _ = read_all(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"x-request-id: req_" in head.lower()
    assert json.loads(body)["error"]["code"] == "invalid_http"
    assert request("GET", gw.root + "/healthz").status_code == 200  # and it keeps serving


@pytest.mark.parametrize("size", [70_000, 100_000])
def test_a_whole_oversized_head_in_one_write_gets_431(gw: Harness, size: int) -> None:
    """A complete request (head and its end) in one read was parsed and answered before its
    size was looked at: a 100 KB header got 200."""
    with connect(gw) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
        data, _ = read_all(s)
    assert data.startswith(b"HTTP/1.1 431 "), data[:100]


def test_a_large_body_after_a_small_head_in_one_write_is_served(gw: Harness) -> None:
    """What counts is the head: a 200 KB body sent with its head in one write is no header."""
    body = json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 200_000}]}
    ).encode()
    with connect(gw) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
            b"Authorization: Bearer " + gw.key().encode() + b"\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        data, _ = read_all(s)
    assert data.startswith(b"HTTP/1.1 200 "), data[:300]


def test_large_headers_inside_the_limit_are_served(gw: Harness) -> None:
    """A large OIDC token or many headers (here 40 KiB in all) are within the default."""
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"b" * 1000) for i in range(40))
    with connect(gw) as s:
        s.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n" + padding + b"Connection: close\r\n\r\n"
        )
        data, _ = read_all(s)
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]


def test_refused_heads_are_counted_for_operators(gw: Harness) -> None:
    with connect(gw) as s:  # sends nothing
        read_all(s)
    with connect(gw) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gat")
        read_all(s)
    with connect(gw) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Padding: " + b"a" * 70_000)
        read_all(s)
    metrics = request("GET", f"{gw.root}/metrics").text
    counts = {
        line.split('reason="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("sekisho_client_heads_refused_total{")
    }
    assert counts == {"no_request": 1.0, "header_timeout": 1.0, "header_too_large": 1.0}


# -- clients that stop reading their answer (server.write_timeout_seconds) ---------------------

WRITE_TIMEOUT = 0.5


def _long_stream(events: int) -> str:
    """A chat stream of ``events`` events of about 150 bytes each (several MB: more than the
    sockets and buffers between the endpoint and a client that does not read can hold)."""
    event = {
        "id": "chatcmpl-long",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": "lorem ipsum dolor sit amet " * 3}}],
    }
    return ("data: " + json.dumps(event) + "\n\n") * events + "data: [DONE]\n\n"


@pytest.fixture
def stalling(gateways: Callable[..., Harness]) -> Harness:
    def mutate(raw: dict[str, Any]) -> None:
        raw.setdefault("server", {})["write_timeout_seconds"] = WRITE_TIMEOUT
        for ep in raw["endpoints"]:
            ep["max_concurrency"] = 1  # one stalled client holding it would shut out everyone
            ep["timeouts"] = {"connect": 0.5, "first_byte": 5, "total": 300}

    h = gateways(mutate)
    for name in h.sims:
        h.fault(name, mode="sse", body=_long_stream(50_000))
    return h


def _stall(h: Harness, key: str) -> tuple[socket.socket, str]:
    """A streaming request from a client that reads the response head, then nothing more;
    its socket and the gateway's request id."""
    body = json.dumps(
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "長く"}]}
    ).encode()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: fills at once
    s.settimeout(10)
    s.connect(("127.0.0.1", h.port))
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1024)
    assert head.startswith(b"HTTP/1.1 200 "), head[:200]
    rid = next(
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"x-sekisho-request-id:")
    )
    return s, rid


def _in_flight(h: Harness) -> int:
    states = h.gateway.health.snapshot()
    return sum(int(state["in_flight"]) for state in states.values())


def test_a_client_that_stops_reading_a_stream_frees_its_slot_and_is_recorded(
    stalling: Harness,
) -> None:
    """A client that stopped reading a stream held its connection, its request and the
    endpoint's max_concurrency slot until it left: everyone else got 429 endpoints_busy
    though nothing was in flight upstream. After server.write_timeout_seconds without
    progress its connection is ended, the slot is free and the outcome is recorded."""
    h = stalling
    key = h.key()
    s, rid = _stall(h, key)
    try:
        started = time.monotonic()
        assert _in_flight(h) == 1
        while _in_flight(h) and time.monotonic() - started < WRITE_TIMEOUT + 5:
            time.sleep(0.05)
        freed = time.monotonic() - started
        assert _in_flight(h) == 0, "the stalled client still holds the endpoint's slot"
        assert freed < WRITE_TIMEOUT + 3
        # Its outcome: 499 client_stalled.
        for _ in range(100):
            r = receipt(h, rid, key)
            outcome = ledger_entries(r.json())[1] if r.status_code == 200 else None
            if outcome is not None:
                break
            time.sleep(0.05)
        assert outcome is not None
        assert outcome["status"] == 499 and outcome["error_code"] == "client_stalled"
        assert outcome["output_hash"]  # what was delivered before it stalled
        # Everyone else is served (the endpoint's one slot is free), not refused with 429.
        for name in h.sims:
            h.fault(name)
        client = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
        stream = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        # The stalled client's connection was ended: reading now gets what was buffered for
        # it, then the end (or a reset), never the whole 7 MB answer.
        got = 0
        with contextlib.suppress(ConnectionError):
            while chunk := s.recv(65536):
                got += len(chunk)
        assert got < 5_000_000
    finally:
        s.close()


def test_a_client_that_reads_slowly_but_steadily_is_served(
    gateways: Callable[..., Harness],
) -> None:
    """Only a client that makes no progress for the whole write timeout is cut: one that
    keeps reading, however slowly, gets its whole answer."""
    h = gateways(lambda raw: raw.setdefault("server", {}).update(write_timeout_seconds=0.5))
    for name in h.sims:
        h.fault(name, mode="sse", body=_long_stream(3000))
    s, _ = _stall(h, h.key())
    data = b""
    with s:
        while chunk := s.recv(4096):
            data += chunk
            if b"data: [DONE]" in data[-64:]:
                break
            time.sleep(0.001)
    assert b"data: [DONE]" in data


def test_an_http_1_0_client_gets_its_stream_without_chunked_framing(gw: Harness) -> None:
    """RFC 9112 §6.1: no Transfer-Encoding to an HTTP/1.0 client, which would read the chunk
    sizes as part of the events. The stream ends with the connection instead."""
    body = json.dumps(
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "古い"}]}
    ).encode()
    with connect(gw) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.0\r\nHost: gateway\r\n"
            b"Authorization: Bearer " + gw.key().encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        data, _ = read_all(s)
    head, _, events = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    blocks = events.split(b"\n\n")
    assert blocks[-1] == b"" and blocks[-2] == b"data: [DONE]", events[-200:]
    for block in blocks[:-1]:
        assert block.startswith(b"data: "), block[:80]  # no chunk size between events
    text = "".join(
        json.loads(b[6:])["choices"][0]["delta"].get("content") or ""
        for b in blocks[:-2]
        if json.loads(b[6:])["choices"]
    )
    assert "SIMULATOR" in text


def test_an_http_1_1_client_still_gets_a_chunked_stream(gw: Harness) -> None:
    body = json.dumps(
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "新しい"}]}
    ).encode()
    with connect(gw) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
            b"Authorization: Bearer " + gw.key().encode() + b"\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        data, _ = read_all(s)
    head, _, events = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert events.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), events[-80:]
