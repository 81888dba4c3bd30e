"""Simulated model endpoints that speak the real OpenAI wire protocol on loopback.

They are clearly simulators: every answer says so. ``sekisho demo`` and ``sekisho simulate``
run three of them (a domestic operator in Tokyo, the Japan region of a global cloud, a US
region); the tests use them as upstreams, counting every byte each one receives, and inject
faults through ``POST /_sim/faults``.

They serve chat completions, legacy completions, embeddings and the Responses API
(``POST /v1/responses``, plain and streamed, in the event format of OpenAI's own), with the
options clients rely on: ``n`` choices (streamed too), ``logprobs`` (tokens that join to the
text), a JSON ``response_format`` (a value valid for the schema, so the SDK's ``parse`` helpers
work) and embeddings of any ``dimensions``, as floats or base64. Tool calls follow
``tool_choice`` and ``parallel_tool_calls`` (every function tool is called once, streamed one
call after another, and the tools' results are answered in words, so a tool loop ends), a
``strict`` tool gets arguments valid for its parameters, and a user
message containing ``[sim:refuse]`` is refused as models refuse (chat's ``refusal``, the
Responses API's refusal part and its ``response.refusal.*`` events).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import math
import ssl
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson


@dataclass
class Faults:
    """What the simulator should do wrong. ``mode``: none | status | hang | garbage | gzip |
    drop_midstream | wrong_type | close | body (answer 200 with ``body``, JSON as given) |
    status (answer ``status``, with ``body`` if given) |
    sse (``body`` as a stream's events).
    ``count``: how many requests (-1: until cleared)."""

    mode: str = "none"
    status: int = 500
    count: int = -1
    delay_ms: float = 0.0
    retry_after: str | None = None
    body: str | None = None


@dataclass
class SimStats:
    bytes_received: int = 0
    connections: int = 0
    closed: int = 0  # connections ended (by either side)
    requests: int = 0
    in_flight: int = 0  # requests being answered now (a stream: until its last event)
    max_in_flight: int = 0  # the most at any one time
    chat: int = 0
    embeddings: int = 0
    responses: int = 0  # Responses API requests answered
    completions: int = 0  # legacy completions requests answered
    # Over TLS: the common name of each client certificate presented (None: none presented).
    client_certs: list[str | None] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@dataclass
class SimulatedEndpoint:
    """Configuration of one simulated endpoint."""

    name: str
    label: str
    models: tuple[str, ...] = ("sim-chat", "sim-embed")
    delay_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    keep_bodies: bool = False
    require_key: str | None = None
    chunk_chars: int = 0  # stream in pieces of this many characters (0: word by word)
    echo_chars: int = 60  # how much of the last message the answer repeats
    # Answer like a reasoning model served by vLLM or DeepSeek's API: a `reasoning_content`
    # that thinks aloud about the prompt (repeating it), before the answer.
    reasoning: bool = False
    # Answer 400 to a request with stream_options, as older servers do.
    rejects_stream_options: bool = False
    # Serve the Responses API (POST /v1/responses); False: answer it 404, as a server that
    # only speaks chat completions does.
    serves_responses: bool = True
    # Write '<', '>' and '&' in tool call arguments as \u003c, \u003e and \u0026, as Go's
    # encoding/json does (Ollama's OpenAI-compatible API).
    go_json: bool = False
    # Write every non-ASCII character in tool call arguments as \uXXXX, as Python's json.dumps
    # does by default (some servers' tool call parsers).
    ascii_json: bool = False


class SimulatorServer:
    def __init__(self, spec: SimulatedEndpoint) -> None:
        self.spec = spec
        self.stats = SimStats()
        self.faults = Faults()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.tls = False

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, tls: ssl.SSLContext | None = None
    ) -> None:
        """Listen on ``host:port``; with ``tls`` (a server context), speak HTTPS."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Protocol(self), host, port, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.tls = tls is not None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def take_fault(self) -> Faults | None:
        f = self.faults
        if f.mode == "none" or f.count == 0:
            return None
        if f.count > 0:
            f.count -= 1
        return f

    # -- answers -------------------------------------------------------------------------

    def reply_text(self, body: dict[str, Any]) -> str:
        """The answer to a chat completion request: its last user message, echoed."""
        return self.reply_for(_last_user_message(body))

    def refusal_for(self, last: str) -> str | None:
        """The refusal of the user's last words ``last`` when they ask for one (``REFUSE``)."""
        if REFUSE not in last:
            return None
        return self.reply_for(last).replace("] You said:", "] I can't help with that. You said:")

    def responses_reply_text(self, body: dict[str, Any]) -> str:
        """The answer to a Responses API request: the last user text of its ``input``."""
        return self.reply_for(_last_user_input(body.get("input")))

    def tool_calls(self, body: dict[str, Any], last: str) -> list[tuple[str, str]]:
        """The answer's tool calls (``_tool_calls``), their arguments escaped as the
        endpoint's JSON writer escapes them."""
        calls = _tool_calls(body, last)
        if self.spec.ascii_json:
            calls = [(name, json.dumps(json.loads(args))) for name, args in calls]
        if not self.spec.go_json:
            return calls
        go = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})
        return [(name, args.translate(go)) for name, args in calls]

    def reply_for(self, last: str) -> str:
        """The answer to the user's last words ``last``, for either API."""
        digest = hashlib.sha256(last.encode()).hexdigest()[:8]
        limit = self.spec.echo_chars
        preview = last if len(last) <= limit else last[: max(0, limit - 3)] + "..."
        return f"[{self.spec.label} · SIMULATOR] You said: {preview} (digest {digest})"


class _Protocol(asyncio.Protocol):
    def __init__(self, sim: SimulatorServer) -> None:
        self.sim = sim
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sim.stats.connections += 1
        if self.sim.tls:
            peer = transport.get_extra_info("peercert") or {}
            names = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
            self.sim.stats.client_certs.append(names[0] if names else None)

    def data_received(self, data: bytes) -> None:
        self.sim.stats.bytes_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(400, b'{"error":{"message":"bad HTTP","type":"invalid_request_error"}}')
            if self.transport:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sim.stats.closed += 1
        for t in self.tasks:
            t.cancel()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        url = self.url.decode()
        task = asyncio.get_running_loop().create_task(
            self._handle(method, url, dict(self.headers), bytes(self.body))
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _write(
        self,
        status: int,
        body: bytes,
        ctype: str = "application/json",
        extra: dict[str, str] | None = None,
    ) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            f"content-type: {ctype}",
            f"content-length: {len(body)}",
            f"x-sekisho-simulator: {self.sim.spec.name}",
            f"x-request-id: simreq_{uuid.uuid4().hex[:16]}",  # as providers name their requests
        ]
        for k, v in (extra or {}).items():
            head.append(f"{k}: {v}")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    async def _handle(self, method: str, url: str, headers: dict[str, str], raw: bytes) -> None:
        stats = self.sim.stats
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            await self._serve(method, url, headers, raw)
        finally:
            stats.in_flight -= 1

    async def _serve(self, method: str, url: str, headers: dict[str, str], raw: bytes) -> None:
        sim = self.sim
        stats = sim.stats
        stats.requests += 1
        path = url.partition("?")[0]
        stats.paths.append(url)
        if sim.spec.keep_bodies:
            stats.bodies.append(raw)
            stats.headers.append(headers)
        if path == "/_sim/faults" and method == "POST":
            cfg = orjson.loads(raw or b"{}")
            sim.faults = Faults(**cfg)
            self._write(200, b'{"ok":true}')
            return
        if path == "/_sim/stats":
            self._write(
                200,
                orjson.dumps({"bytes_received": stats.bytes_received, "requests": stats.requests}),
            )
            return
        if sim.spec.require_key is not None:
            presented = headers.get("authorization", "").removeprefix("Bearer ") or headers.get(
                "api-key", ""
            )
            if presented != sim.spec.require_key:
                self._write(
                    401,
                    b'{"error":{"message":"Incorrect API key provided",'
                    b'"type":"invalid_request_error","code":"invalid_api_key"}}',
                )
                return
        fault = sim.take_fault() if not path.startswith("/_sim") else None
        if fault is not None:
            if fault.delay_ms:
                await asyncio.sleep(fault.delay_ms / 1000)
            if fault.mode == "status":
                extra = {"retry-after": fault.retry_after} if fault.retry_after else None
                error = {"message": f"simulated HTTP {fault.status}", "type": "server_error"}
                self._write(
                    fault.status,
                    fault.body.encode() if fault.body else orjson.dumps({"error": error}),
                    extra=extra,
                )
                return
            if fault.mode == "hang":
                await asyncio.sleep(3600)
                return
            if fault.mode == "garbage":
                self._write(200, b"<html>this is not JSON</html>")
                return
            if fault.mode == "gzip":  # compressed although the gateway asked for identity
                body = gzip.compress(b'{"object":"chat.completion","choices":[]}')
                self._write(200, body, extra={"content-encoding": "gzip"})
                return
            if fault.mode == "body":
                self._write(200, (fault.body or "").encode())
                return
            if fault.mode == "sse":  # ``body`` as the events of a stream
                self._write(200, (fault.body or "").encode(), ctype="text/event-stream")
                return
            if fault.mode == "wrong_type":
                self._write(200, b"plain text", ctype="text/plain")
                return
            if fault.mode == "close":
                if self.transport:
                    self.transport.abort()
                return
        if sim.spec.delay_ms:
            await asyncio.sleep(sim.spec.delay_ms / 1000)
        if method == "GET" and path.endswith("/models"):
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": sim.spec.name}
                for m in sim.spec.models
            ]
            self._write(200, orjson.dumps({"object": "list", "data": data}))
            return
        if method != "POST":
            self._write(404, b'{"error":{"message":"not found","type":"invalid_request_error"}}')
            return
        if path.endswith("/responses") and not sim.spec.serves_responses:
            self._write(
                404,
                orjson.dumps(
                    {"error": {"message": f"Not Found: {path}", "type": "invalid_request_error"}}
                ),
            )
            return
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body must be an object")
        except (orjson.JSONDecodeError, ValueError) as exc:
            self._write(
                400,
                orjson.dumps(
                    {"error": {"message": f"bad JSON: {exc}", "type": "invalid_request_error"}}
                ),
            )
            return
        problem = _parameter_problem(path, body)
        if problem is not None:
            param, message = problem
            error = {"message": message, "type": "invalid_request_error", "param": param}
            self._write(400, orjson.dumps({"error": {**error, "code": "invalid_value"}}))
            return
        if path.endswith("/chat/completions"):
            if sim.spec.rejects_stream_options and "stream_options" in body:
                self._write(
                    400,
                    b'{"error":{"message":"Unrecognized request argument supplied: '
                    b'stream_options","type":"invalid_request_error","code":null}}',
                )
                return
            stats.chat += 1
            if body.get("stream"):
                drop = fault is not None and fault.mode == "drop_midstream"
                await self._stream(body, drop)
            else:
                self._write(200, orjson.dumps(self._completion(body)))
        elif path.endswith("/embeddings"):
            stats.embeddings += 1
            self._write(200, orjson.dumps(self._embeddings(body)))
        elif path.endswith("/completions"):  # the legacy API (chat's path matched above)
            stats.completions += 1
            if body.get("stream"):
                drop = fault is not None and fault.mode == "drop_midstream"
                await self._stream_text_completion(body, drop)
            else:
                self._write(200, orjson.dumps(self._text_completion(body)))
        elif path.endswith("/responses"):
            stats.responses += 1
            if body.get("stream"):
                drop = fault is not None and fault.mode == "drop_midstream"
                await self._stream_response(body, drop)
            else:
                output, usage = self._response_output(body)
                rid = f"resp_sim_{uuid.uuid4().hex[:24]}"
                answer = self._response(body, rid, int(time.time()), output, usage)
                self._write(200, orjson.dumps(answer))
        else:
            self._write(404, b'{"error":{"message":"unknown path","type":"invalid_request_error"}}')

    def _completion_text(self, body: dict[str, Any]) -> tuple[str, int]:
        """A legacy completion: the simulator's answer to the prompt (its first text), after
        the prompt itself with ``echo``; and where the answer starts in prompt + answer (what
        ``text_offset`` counts from)."""
        prompt = body.get("prompt")
        first = prompt if isinstance(prompt, str) else ""
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            first = prompt[0]
        reply = self.sim.reply_for(first)
        return (first + reply, 0) if body.get("echo") else (reply, len(first))

    def _text_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        text, offset = self._completion_text(body)
        top = _legacy_top_logprobs(body)
        logprobs = None
        if top is not None:
            logprobs = _legacy_logprobs(self._tokens(text), top, offset)
        prompt = body.get("prompt")
        prompt_tokens = len(prompt.split()) if isinstance(prompt, str) else len(str(prompt))
        completion_tokens = len(text.split()) * _choice_count(body)  # every choice's tokens
        return {
            "id": f"cmpl-sim-{uuid.uuid4().hex[:12]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "unknown"),
            "system_fingerprint": f"sim-{self.sim.spec.name}",
            "choices": [
                {"index": i, "text": text, "logprobs": logprobs, "finish_reason": "stop"}
                for i in range(_choice_count(body))
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    async def _stream_text_completion(self, body: dict[str, Any], drop: bool) -> None:
        t = self._start_stream()
        if t is None:
            return
        text, offset = self._completion_text(body)
        pieces = self._words(text)
        top = _legacy_top_logprobs(body)
        indices = range(_choice_count(body))
        base = {
            "id": f"cmpl-sim-{uuid.uuid4().hex[:12]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "unknown"),
        }

        def send(obj: dict[str, Any] | None) -> None:
            _send_data(t, obj)

        def choice(i: int, piece: str, finish: str | None, logprobs: Any = None) -> dict[str, Any]:
            return {"index": i, "text": piece, "logprobs": logprobs, "finish_reason": finish}

        position = 0
        for k, piece in enumerate(pieces):
            if drop and k == len(pieces) // 2:
                t.abort()
                return
            if self.sim.spec.chunk_delay_ms:
                await asyncio.sleep(self.sim.spec.chunk_delay_ms / 1000)
            tokens = [piece] if piece else []
            logprobs = None
            if top is not None:
                logprobs = _legacy_logprobs(tokens, top, offset, position)
            for i in indices:
                send({**base, "choices": [choice(i, piece, None, logprobs)]})
            offset += len(piece)
            position += len(tokens)
        for i in indices:
            send({**base, "choices": [choice(i, "", "stop")]})
        opts = body.get("stream_options") or {}
        if isinstance(opts, dict) and opts.get("include_usage"):
            prompt = body.get("prompt")
            pt = len(prompt.split()) if isinstance(prompt, str) else len(str(prompt))
            ct = len(pieces) * len(indices)  # every choice's tokens
            usage = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
            send({**base, "choices": [], "usage": usage})
        send(None)
        t.write(b"0\r\n\r\n")

    @staticmethod
    def _thinking(reply: str) -> str:
        return f"The user wrote: {reply.partition('You said: ')[2] or reply}. Answer briefly."

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        echo = self.sim.reply_text(body)
        refusal = self.sim.refusal_for(_last_user_message(body))
        text = refusal or _formatted(body.get("response_format"), echo)
        calls = [] if refusal else self.sim.tool_calls(body, _last_user_text(body))
        top = _top_logprobs(body)
        prompt_tokens = _tokens(body.get("messages"))
        completion_tokens = len(text.split()) * _choice_count(body)  # every choice's tokens
        choices: list[dict[str, Any]] = []
        for i in range(_choice_count(body)):
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if self.sim.spec.reasoning:
                message["reasoning_content"] = self._thinking(echo)
            finish = "stop"
            logprobs: dict[str, Any] | None = None
            if top is not None:
                tokens = _token_logprobs(self._tokens(text), top)
                logprobs = {"content": tokens, "refusal": None}
            if refusal is not None:
                message = {"role": "assistant", "content": None, "refusal": refusal}
                if logprobs is not None:
                    logprobs = {"content": None, "refusal": logprobs["content"]}
            elif calls:
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": _call_id(i, k),
                            "type": "function",
                            "function": {"name": fn, "arguments": args},
                        }
                        for k, (fn, args) in enumerate(calls)
                    ],
                }
                finish = "tool_calls"
                logprobs = None if top is None else {"content": None, "refusal": None}
            choices.append(
                {"index": i, "message": message, "finish_reason": finish, "logprobs": logprobs}
            )
        return {
            "id": f"chatcmpl-sim-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "unknown"),
            "system_fingerprint": f"sim-{self.sim.spec.name}",
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _start_stream(self) -> asyncio.Transport | None:
        """Write the head of a chunked ``text/event-stream`` answer; the transport to write
        its events on (None: the connection is gone)."""
        t = self.transport
        if t is None:
            return None
        head = (
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            f"x-sekisho-simulator: {self.sim.spec.name}\r\n"
            f"x-request-id: simreq_{uuid.uuid4().hex[:16]}\r\n"
            "transfer-encoding: chunked\r\n\r\n"
        )
        t.write(head.encode())
        return t

    def _words(self, text: str) -> list[str]:
        """A streamed answer's text pieces: ``chunk_chars`` characters each, else word by word."""
        size = self.sim.spec.chunk_chars
        if size > 0:
            return _pieces(text, size)
        return [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]

    def _tokens(self, text: str) -> list[str]:
        """The tokens ``logprobs`` reports for ``text``: the pieces a stream sends, so each
        content chunk is one token and the tokens join to the text exactly."""
        return [piece for piece in self._words(text) if piece]

    async def _stream(self, body: dict[str, Any], drop: bool) -> None:
        t = self._start_stream()
        if t is None:
            return
        cid = f"chatcmpl-sim-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        model = body.get("model", "unknown")
        echo = self.sim.reply_text(body)
        refusal = self.sim.refusal_for(_last_user_message(body))
        calls = [] if refusal else self.sim.tool_calls(body, _last_user_text(body))
        size = self.sim.spec.chunk_chars
        words = self._words(refusal or _formatted(body.get("response_format"), echo))
        # the field the answer's text streams in: a refusal's own, else content
        field = "refusal" if refusal is not None else "content"
        top = _top_logprobs(body)
        indices = range(_choice_count(body))
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        position = 0  # of the next content token in the answer

        def send(
            i: int, delta: dict[str, Any], finish: str | None = None, tokens: Sequence[str] = ()
        ) -> None:
            """One choice's chunk; one that carries text carries its tokens' logprobs."""
            choice: dict[str, Any] = {"index": i, "delta": delta, "finish_reason": finish}
            if top is not None and field in delta:
                lp = _token_logprobs(tokens, top, position)
                choice["logprobs"] = (
                    {"content": lp, "refusal": None}
                    if field == "content"
                    else {"content": None, "refusal": lp}
                )
            _send_data(t, {**base, "choices": [choice]})

        for i in indices:
            if refusal is not None:
                send(i, {"role": "assistant", "content": None, "refusal": ""})
            elif calls:  # no text to come: content null, as OpenAI streams tool calls
                send(i, {"role": "assistant", "content": None})
            else:
                send(i, {"role": "assistant", "content": ""})
        # Tool calls one after another, each call's arguments in pieces, as models stream them.
        step = size if size > 0 else 7
        for k, (fn, args) in enumerate(calls):
            for j in range(0, len(args), step):
                for i in indices:
                    call: dict[str, Any] = {
                        "index": k,
                        "function": {"arguments": args[j : j + step]},
                    }
                    if j == 0:
                        call.update({"id": _call_id(i, k), "type": "function"})
                        call["function"]["name"] = fn
                    send(i, {"tool_calls": [call]})
        if calls:
            words = []
        if self.sim.spec.reasoning:
            thought = self._thinking(echo)
            step = size if size > 0 else 9
            for j in range(0, len(thought), step):
                for i in indices:
                    send(i, {"reasoning_content": thought[j : j + step]})
        for k, w in enumerate(words):
            if drop and k == len(words) // 2:
                t.abort()
                return
            if self.sim.spec.chunk_delay_ms:
                await asyncio.sleep(self.sim.spec.chunk_delay_ms / 1000)
            tokens = [w] if w else []
            for i in indices:
                send(i, {field: w}, tokens=tokens)
            position += len(tokens)
        finish = "tool_calls" if calls else "stop"
        for i in indices:
            send(i, {}, finish)
        opts = body.get("stream_options") or {}
        if isinstance(opts, dict) and opts.get("include_usage"):
            pt = _tokens(body.get("messages"))
            ct = len(words) * len(indices)  # every choice's tokens
            usage = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
            _send_data(t, {**base, "choices": [], "usage": usage})
        _send_data(t, None)
        t.write(b"0\r\n\r\n")

    # -- the Responses API ---------------------------------------------------------------

    def _response_output(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The output items of the answer to a Responses API request, and its usage: a
        reasoning summary (for a reasoning model), then a message (a refusal when the user
        asks for one), or the calls of function tools (``_tool_calls``)."""
        last = _last_user_input(body.get("input"))
        echo = self.sim.reply_for(last)
        text_options = body.get("text")
        fmt = text_options.get("format") if isinstance(text_options, dict) else None
        text = _formatted(fmt, echo)
        output: list[dict[str, Any]] = []
        if self.sim.spec.reasoning:
            output.append(
                {
                    "type": "reasoning",
                    "id": f"rs_sim_{uuid.uuid4().hex[:24]}",
                    "summary": [{"type": "summary_text", "text": self._thinking(echo)}],
                }
            )
        refusal = self.sim.refusal_for(last)
        calls = [] if refusal else self.sim.tool_calls(body, last)
        for k, (fn, args) in enumerate(calls):
            output.append(
                {
                    "type": "function_call",
                    "id": f"fc_sim_{uuid.uuid4().hex[:24]}",
                    "call_id": f"call_{k}",
                    "name": fn,
                    "arguments": args,
                    "status": "completed",
                }
            )
        if not calls:
            part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
            if refusal is not None:
                text = refusal
                part = {"type": "refusal", "refusal": refusal}
            top = _response_top_logprobs(body)
            if top is not None and refusal is None:
                part["logprobs"] = _token_logprobs(self._tokens(text), top)
            output.append(
                {
                    "type": "message",
                    "id": f"msg_sim_{uuid.uuid4().hex[:24]}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [part],
                }
            )
        input_tokens = _response_tokens(body)
        output_tokens = len(text.split())
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        return output, usage

    def _response(
        self,
        body: dict[str, Any],
        rid: str,
        created: int,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        status: str = "completed",
    ) -> dict[str, Any]:
        """A ``response`` object, echoing the request's settings as OpenAI does."""
        return {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body.get("model", "unknown"),
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": usage,
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }

    async def _stream_response(self, body: dict[str, Any], drop: bool) -> None:
        """A streamed Responses API answer: named events, each with a ``sequence_number``
        from 0, ending with ``response.completed`` (no ``[DONE]``)."""
        t = self._start_stream()
        if t is None:
            return
        rid = f"resp_sim_{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        output, usage = self._response_output(body)
        size = self.sim.spec.chunk_chars
        delay = self.sim.spec.chunk_delay_ms / 1000
        sequence = 0

        def send(kind: str, **fields: Any) -> None:
            nonlocal sequence
            data = orjson.dumps({"type": kind, **fields, "sequence_number": sequence})
            sequence += 1
            payload = b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
            t.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")

        pending = self._response(body, rid, created, [], None, status="in_progress")
        send("response.created", response=pending)
        send("response.in_progress", response=pending)
        for index, item in enumerate(output):
            iid = item["id"]
            if item["type"] == "reasoning":
                thought = item["summary"][0]["text"]
                send("response.output_item.added", output_index=index, item={**item, "summary": []})
                at = {"item_id": iid, "output_index": index, "summary_index": 0}
                send(
                    "response.reasoning_summary_part.added",
                    **at,
                    part={"type": "summary_text", "text": ""},
                )
                for piece in _pieces(thought, size if size > 0 else 9):
                    send("response.reasoning_summary_text.delta", **at, delta=piece)
                send("response.reasoning_summary_text.done", **at, text=thought)
                send(
                    "response.reasoning_summary_part.done",
                    **at,
                    part={"type": "summary_text", "text": thought},
                )
            elif item["type"] == "function_call":
                args = item["arguments"]
                started = {**item, "arguments": "", "status": "in_progress"}
                send("response.output_item.added", output_index=index, item=started)
                pieces = _pieces(args, size if size > 0 else 7)
                for i, piece in enumerate(pieces):
                    if drop and i == len(pieces) // 2:
                        t.abort()
                        return
                    send(
                        "response.function_call_arguments.delta",
                        item_id=iid,
                        output_index=index,
                        delta=piece,
                    )
                send(
                    "response.function_call_arguments.done",
                    item_id=iid,
                    output_index=index,
                    arguments=args,
                )
            elif item["content"][0]["type"] == "refusal":
                part = item["content"][0]
                started = {**item, "status": "in_progress", "content": []}
                send("response.output_item.added", output_index=index, item=started)
                at = {"item_id": iid, "output_index": index, "content_index": 0}
                send("response.content_part.added", **at, part={**part, "refusal": ""})
                for piece in self._words(part["refusal"]):
                    send("response.refusal.delta", **at, delta=piece)
                send("response.refusal.done", **at, refusal=part["refusal"])
                send("response.content_part.done", **at, part=part)
            else:
                part = item["content"][0]
                text = part["text"]
                started = {**item, "status": "in_progress", "content": []}
                send("response.output_item.added", output_index=index, item=started)
                at = {"item_id": iid, "output_index": index, "content_index": 0}
                send(
                    "response.content_part.added",
                    **at,
                    part={"type": "output_text", "text": "", "annotations": []},
                )
                # With logprobs included, each delta carries its own token's (as the part does).
                logprobs: list[dict[str, Any]] = part.get("logprobs", [])
                words = self._words(text)
                position = 0
                for i, w in enumerate(words):
                    if drop and i == len(words) // 2:
                        t.abort()
                        return
                    if delay:
                        await asyncio.sleep(delay)
                    tokens = logprobs[position : position + 1] if w else []
                    position += len(tokens)
                    send("response.output_text.delta", **at, delta=w, logprobs=tokens)
                send("response.output_text.done", **at, text=text, logprobs=logprobs)
                send("response.content_part.done", **at, part=part)
            send("response.output_item.done", output_index=index, item=item)
        send("response.completed", response=self._response(body, rid, created, output, usage))
        t.write(b"0\r\n\r\n")

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        """Embeddings of ``dimensions`` values (16 unless asked), as floats or, with
        ``encoding_format: "base64"``, as OpenAI sends them: little-endian float32, base64."""
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        if items and all(isinstance(x, int) and not isinstance(x, bool) for x in items):
            items = [inputs]  # one input given as its tokens: one embedding
        size = body.get("dimensions") or _EMBEDDING_SIZE
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, item in enumerate(items):
            vec = _embedding(item, size)
            embedding: list[float] | str = vec
            if as_base64:
                embedding = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        tokens = sum(len(str(x).split()) for x in items)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", "unknown"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _tokens(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    n = 0
    for m in messages:
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            n += len(m["content"].split()) + 3
    return n


def _content_text(content: Any, types: tuple[str, ...] | None = ("input_text",)) -> str:
    """The text of a Responses API item's ``content``: a string, or the joined ``text`` of its
    parts (of the given types; None: of any type)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(
        p["text"]
        for p in content
        if isinstance(p, dict)
        and isinstance(p.get("text"), str)
        and (types is None or p.get("type") in types)
    )


def _last_user_message(body: dict[str, Any]) -> str:
    """The last user message of a chat request (content that is not a string, as JSON)."""
    messages = body.get("messages")
    for m in reversed(messages if isinstance(messages, list) else []):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else orjson.dumps(c).decode()
    return ""


def _last_user_text(body: dict[str, Any]) -> str:
    """The last user message of a chat request whose content is a string (what a model
    passes on to a tool)."""
    messages = body.get("messages")
    for m in reversed(messages if isinstance(messages, list) else []):
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return str(m["content"])
    return ""


def _last_user_input(value: Any) -> str:
    """The last user text of a Responses API ``input``: the string, or the content of the
    last item with role "user"."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for item in reversed(value):
            if isinstance(item, dict) and item.get("role") == "user":
                return _content_text(item.get("content"))
    return ""


def _response_tokens(body: dict[str, Any]) -> int:
    """A rough count of a Responses API request's input tokens (as ``_tokens`` counts)."""
    instructions = body.get("instructions")
    n = len(instructions.split()) + 3 if isinstance(instructions, str) else 0
    value = body.get("input")
    items = [{"content": value}] if isinstance(value, str) else value
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                n += len(_content_text(item.get("content"), None).split()) + 3
    return n


def _tool_calls(body: dict[str, Any], last: str) -> list[tuple[str, str]]:
    """The function tools the answer calls and the arguments of each, as a model calls them:
    none with ``tool_choice: "none"``, nor (unless ``tool_choice`` requires one) in answer to
    the tools' results; only the one ``tool_choice`` names; else every function tool once
    (parallel tool calls), or the first alone with ``parallel_tool_calls: false``.
    A ``strict`` tool's arguments are valid for its ``parameters`` (as structured outputs
    guarantee); any other's carry the user's last words ``last`` as a query. Chat's tools
    nest their ``function``; the Responses API's are flat (``{"type": "function", ...}``)."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or choice == "none":
        return []
    if choice in (None, "auto") and _ends_with_tool_results(body):
        return []  # the results are in: answered in words, as a model does, so a loop ends
    named: Any = None
    if isinstance(choice, dict):
        nested = choice.get("function")
        named = choice.get("name") or (nested.get("name") if isinstance(nested, dict) else None)
    calls = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        nested = tool.get("function")
        spec = nested if isinstance(nested, dict) else tool
        name = spec.get("name")
        name = name if isinstance(name, str) and name else "tool"
        if named is not None and name != named:
            continue
        params = spec.get("parameters")
        if spec.get("strict") is True and isinstance(params, dict):
            args = orjson.dumps(_schema_value(params, params, last, 0)).decode()
        else:
            args = orjson.dumps({"simulated": True, "query": last}).decode()
        calls.append((name, args))
    if not calls and tools and named is None:  # tools of other types only: a call all the same
        calls.append(("tool", orjson.dumps({"simulated": True, "query": last}).decode()))
    return calls[:1] if body.get("parallel_tool_calls") is False else calls


def _ends_with_tool_results(body: dict[str, Any]) -> bool:
    """Whether a request's last item is a tool's result: a chat "tool" (or "function")
    message, or a Responses API ``function_call_output``."""
    messages = body.get("messages")
    items = messages if isinstance(messages, list) else body.get("input")
    last = items[-1] if isinstance(items, list) and items else None
    return isinstance(last, dict) and (
        last.get("role") in ("tool", "function") or last.get("type") == "function_call_output"
    )


def _call_id(choice: int, k: int) -> str:
    """The id of a chat choice's ``k``-th tool call."""
    return f"call_{choice}" if k == 0 else f"call_{choice}_{k}"


# A user message with these words is refused, as a model refuses (chat: ``message.refusal``;
# the Responses API: a ``refusal`` content part).
REFUSE = "[sim:refuse]"


def _choice_count(body: dict[str, Any]) -> int:
    """How many choices to answer with: ``n`` (1 to 16), else one."""
    n = body.get("n")
    return n if isinstance(n, int) and 0 < n <= 16 else 1


def _is_int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _parameter_problem(path: str, body: dict[str, Any]) -> tuple[str, str] | None:
    """The parameter out of OpenAI's range and what is wrong with it, as OpenAI answers
    400; None: the options the simulator reads are fine."""
    if path.endswith("/chat/completions") or path.endswith("/responses"):
        top = body.get("top_logprobs")
        if top is not None and not _is_int_in(top, 0, _MAX_TOP_LOGPROBS):
            return "top_logprobs", f"top_logprobs must be an integer from 0 to 20, not {top!r}"
        return _tools_problem(body.get("tools"), path.endswith("/chat/completions"))
    elif path.endswith("/completions"):
        top = body.get("logprobs")
        if top is not None and not _is_int_in(top, 0, _MAX_LEGACY_LOGPROBS):
            return "logprobs", f"logprobs must be an integer from 0 to 5, not {top!r}"
    elif path.endswith("/embeddings"):
        fmt = body.get("encoding_format")
        if fmt is not None and fmt not in ("float", "base64"):
            return "encoding_format", f"encoding_format must be 'float' or 'base64', not {fmt!r}"
        size = body.get("dimensions")
        if size is not None and not _is_int_in(size, 1, _MAX_DIMENSIONS):
            return "dimensions", f"dimensions must be an integer from 1 to 3072, not {size!r}"
    return None


def _tools_problem(tools: Any, chat: bool) -> tuple[str, str] | None:
    """What OpenAI refuses in ``tools``: not an array of objects, or a chat function tool
    whose ``function`` is not an object naming the function."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        return "tools", f"Invalid type for 'tools': expected an array, but got {tools!r}"
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            return f"tools[{i}]", f"Invalid type for 'tools[{i}]': expected an object"
        fn = tool.get("function")
        if chat and tool.get("type") == "function":
            if not isinstance(fn, dict):
                return f"tools[{i}].function", (
                    f"Invalid type for 'tools[{i}].function': expected an object"
                )
            if not isinstance(fn.get("name"), str):
                return f"tools[{i}].function.name", (
                    f"Missing required parameter: 'tools[{i}].function.name'."
                )
    return None


# -- logprobs ----------------------------------------------------------------------------

_MAX_TOP_LOGPROBS = 20
_MAX_LEGACY_LOGPROBS = 5
# The runners-up of every token, most likely first (the token itself left out).
_ALTERNATIVES: tuple[str, ...] = (" the", ",", " a", ".", " and", " of", " to", " is", " in")
_ALTERNATIVES += (" that", " it", " for", " on", " with", " as", " this", " be", " at", " or")
_ALTERNATIVES += ("\n", " I")


def _top_logprobs(body: dict[str, Any]) -> int | None:
    """How many alternatives a chat completion reports per token; None: no logprobs."""
    if body.get("logprobs") is not True:
        return None
    top = body.get("top_logprobs")
    return top if isinstance(top, int) else 0


def _response_top_logprobs(body: dict[str, Any]) -> int | None:
    """The same for a Responses API request, which asks with ``include``."""
    include = body.get("include")
    if not isinstance(include, list) or "message.output_text.logprobs" not in include:
        return None
    top = body.get("top_logprobs")
    return top if isinstance(top, int) else 0


def _legacy_top_logprobs(body: dict[str, Any]) -> int | None:
    """The same for a legacy completion, which asks with ``logprobs: N``."""
    top = body.get("logprobs")
    return top if isinstance(top, int) and not isinstance(top, bool) else None


def _logprob(token: str, position: int) -> float:
    """A deterministic log probability in [-0.69, -0.001]: the token was at least as likely
    as all its runners-up together, as a model's chosen tokens mostly are."""
    digest = hashlib.sha256(f"{position}:{token}".encode()).digest()
    return -round(0.001 + int.from_bytes(digest[:4], "big") / 2**32 * 0.689, 6)


def _token_logprobs(tokens: Sequence[str], top: int, start: int = 0) -> list[dict[str, Any]]:
    """The logprobs of ``tokens`` (the first at position ``start`` of the answer), each with
    ``top`` alternatives: the token itself, then runners-up sharing what is left, halving."""
    out = []
    for position, token in enumerate(tokens, start):
        logprob = _logprob(token, position)
        rest = 1 - math.exp(logprob)
        runners_up = [a for a in _ALTERNATIVES if a != token][: max(0, top - 1)]
        alternatives = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
        for rank, other in enumerate(runners_up, 1):
            share = round(math.log(rest / 2**rank), 6)
            alternatives.append({"token": other, "logprob": share, "bytes": list(other.encode())})
        out.append(
            {
                "token": token,
                "logprob": logprob,
                "bytes": list(token.encode()),
                "top_logprobs": alternatives[:top],
            }
        )
    return out


def _legacy_logprobs(
    tokens: Sequence[str], top: int, offset: int, start: int = 0
) -> dict[str, Any]:
    """Legacy completions' logprobs of ``tokens``, the first at character ``offset`` of
    prompt + answer and at position ``start`` of the answer."""
    entries = _token_logprobs(tokens, top, start)
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": list(tokens),
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{a["token"]: a["logprob"] for a in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }


# -- embeddings --------------------------------------------------------------------------

_EMBEDDING_SIZE = 16
_MAX_DIMENSIONS = 3072  # as text-embedding-3-large


def _embedding(item: Any, size: int) -> list[float]:
    """A deterministic vector of ``size`` values in [-1, 1) for ``item``, each a multiple of
    1/128 (so float32 and base64 carry it exactly); the same prefix at every size."""
    seed = hashlib.sha256(orjson.dumps(item)).digest()
    stream = bytearray(seed)
    block = 0
    while len(stream) < size:
        block += 1
        stream += hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
    return [(b - 128) / 128 for b in stream[:size]]


# -- structured output -------------------------------------------------------------------


def _formatted(fmt: Any, echo: str) -> str:
    """The answer's text in the requested format: ``echo`` as it is; for ``json_object`` a
    JSON object holding it; for ``json_schema`` (chat's ``{"json_schema": {"schema": ...}}``
    or the Responses API's flat ``{"schema": ...}``) a JSON value valid for the schema."""
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        return echo
    nested = fmt.get("json_schema")
    schema = (nested if isinstance(nested, dict) else fmt).get("schema")
    if fmt["type"] == "json_object" or not isinstance(schema, dict):
        value: Any = {"simulated": True, "answer": echo}
    else:
        value = _schema_value(schema, schema, echo, 0)
    # json's ", " and ": " give the text spaces, so a stream and its tokens split it up.
    return json.dumps(value, ensure_ascii=False)


_DEEP = 8  # past this depth a value takes only what its schema requires (recursive schemas)
_STRING_FORMATS = {
    "date-time": "2000-01-01T00:00:00Z",
    "date": "2000-01-01",
    "time": "00:00:00Z",
    "duration": "PT0S",
    "email": "simulator@example.com",
    "hostname": "simulator.example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uri": "https://simulator.example.com/",
    "url": "https://simulator.example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def _schema_value(schema: Any, root: dict[str, Any], text: str, depth: int) -> Any:
    """A deterministic value valid for the JSON schema ``schema`` (its ``$ref``s resolved in
    ``root``): an object with every property, an array of one item, the first ``enum`` value
    and the first ``anyOf``/``oneOf`` branch, ``text`` for a free string."""
    if not isinstance(schema, dict) or depth > 4 * _DEEP:
        return None if depth > 4 * _DEEP else text
    if isinstance(schema.get("$ref"), str):
        target = _resolve_ref(root, schema["$ref"])
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        return _schema_value({**target, **siblings}, root, text, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            nulls = [b for b in branches if isinstance(b, dict) and b.get("type") == "null"]
            branch = nulls[0] if depth > _DEEP and nulls else branches[0]
            return _schema_value(branch, root, text, depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for branch in schema["allOf"]:
            merged = _merged(merged, _resolved(root, branch))
        return _schema_value(merged, root, text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):  # a nullable type: ["string", "null"]
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind == "object":
        return _object_value(schema, root, text, depth)
    if kind == "array":
        return _array_value(schema, root, text, depth)
    if kind in ("integer", "number"):
        return _number_value(schema, kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string_value(schema, text)


def _resolve_ref(root: dict[str, Any], ref: str) -> dict[str, Any]:
    """The schema a local ``$ref`` (``#/$defs/Name``, ``#/definitions/Name``, ``#``) names."""
    node: Any = root
    for name in ref.removeprefix("#").strip("/").split("/"):
        if name:
            name = name.replace("~1", "/").replace("~0", "~")
            node = node.get(name) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _resolved(root: dict[str, Any], schema: Any) -> dict[str, Any]:
    if not isinstance(schema, dict):
        return {}
    if isinstance(schema.get("$ref"), str):
        return _resolved(root, _resolve_ref(root, schema["$ref"]))
    return schema


def _merged(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two ``allOf`` branches as one schema: their properties and required names joined."""
    out = {**a, **b}
    out["properties"] = {**(a.get("properties") or {}), **(b.get("properties") or {})}
    out["required"] = [*(a.get("required") or []), *(b.get("required") or [])]
    return out


def _object_value(schema: dict[str, Any], root: dict[str, Any], text: str, depth: int) -> Any:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
    names = list(dict.fromkeys([*properties, *required]))
    if depth > _DEEP:
        names = [n for n in names if n in required]
    return {n: _schema_value(properties.get(n, {}), root, text, depth + 1) for n in names}


def _array_value(schema: dict[str, Any], root: dict[str, Any], text: str, depth: int) -> Any:
    prefix = schema.get("prefixItems")
    if isinstance(prefix, list):  # a tuple
        return [_schema_value(item, root, text, depth + 1) for item in prefix]
    least = schema.get("minItems")
    least = least if isinstance(least, int) else 0
    most = schema.get("maxItems")
    count = least if depth > _DEEP else max(1, least)
    if isinstance(most, int):
        count = min(count, most)
    return [_schema_value(schema.get("items", {}), root, text, depth + 1) for _ in range(count)]


def _number_value(schema: dict[str, Any], integral: bool) -> int | float:
    """Zero, or the nearest value the schema's bounds allow."""

    def bound(key: str) -> float | None:
        v = schema.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    low, high = bound("minimum"), bound("maximum")
    above, below = bound("exclusiveMinimum"), bound("exclusiveMaximum")
    value = 0.0
    if low is not None:
        value = max(value, low)
    if above is not None and value <= above:
        value = above + 1
    if high is not None:
        value = min(value, high)
    if below is not None and value >= below:
        value = below - 1
        if above is not None and value <= above:
            value = (above + below) / 2
    return math.ceil(value) if integral else value


def _string_value(schema: dict[str, Any], text: str) -> str:
    """``text``, or an example of the string's ``format``, cut or padded to its length."""
    fmt = schema.get("format")
    value = _STRING_FORMATS.get(fmt, text) if isinstance(fmt, str) else text
    most = schema.get("maxLength")
    if isinstance(most, int):
        value = value[:most]
    least = schema.get("minLength")
    if isinstance(least, int) and len(value) < least:
        value += "." * (least - len(value))
    return value


def _send_data(t: asyncio.Transport, obj: dict[str, Any] | None) -> None:
    """One ``data:`` event of a chat or completions stream as an HTTP chunk (None: [DONE])."""
    payload = b"data: [DONE]\n\n" if obj is None else b"data: " + orjson.dumps(obj) + b"\n\n"
    t.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

# The three endpoints of the demo and the example config, with their fixed ports.
DEMO_ENDPOINTS: tuple[tuple[SimulatedEndpoint, int], ...] = (
    (
        SimulatedEndpoint(
            "sim-domestic-tokyo",
            "Domestic GPU operator, Tokyo",
            models=("llama-3.1-swallow-70b", "ruri-embed"),
        ),
        9101,
    ),
    (
        SimulatedEndpoint(
            "sim-global-japaneast",
            "Global cloud, Japan East",
            models=("gpt-4o", "text-embedding-3-small"),
        ),
        9102,
    ),
    (
        SimulatedEndpoint(
            "sim-global-useast",
            "Global cloud, US East",
            models=("gpt-4o", "gpt-4.1", "text-embedding-3-small"),
        ),
        9103,
    ),
)


async def start_demo_simulators(
    host: str = "127.0.0.1", *, base_port: int | None = None
) -> list[SimulatorServer]:
    """Start the three demo simulators (on their fixed ports, or consecutive from base_port;
    base_port=0 means ephemeral ports)."""
    servers = []
    for i, (spec, port) in enumerate(DEMO_ENDPOINTS):
        s = SimulatorServer(spec)
        p = port if base_port is None else (0 if base_port == 0 else base_port + i)
        await s.start(host, p)
        servers.append(s)
    return servers
