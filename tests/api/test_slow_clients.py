"""Slow and stalled clients (``server.read_timeout_seconds``): a client that connects and sends
nothing, trickles its headers, or stops half-way through its body gets 408 (or, having sent
nothing, a closed connection) instead of holding a connection and a file descriptor for ever.
Raw sockets against the real gateway on loopback: no SDK sends a request this badly."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from harness import Harness, request

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
