"""Simulated model endpoints that speak the real OpenAI wire protocol on loopback.

They are clearly simulators: every answer says so. ``sekisho demo`` and ``sekisho simulate``
run three of them (a domestic operator in Tokyo, the Japan region of a global cloud, a US
region); the tests use them as upstreams, counting every byte each one receives, and inject
faults through ``POST /_sim/faults``.

They serve chat completions, embeddings and the Responses API (``POST /v1/responses``, plain
and streamed, in the event format of OpenAI's own).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson


@dataclass
class Faults:
    """What the simulator should do wrong. ``mode``: none | status | hang | garbage | gzip |
    drop_midstream | wrong_type | close | body (answer 200 with ``body``, JSON as given) |
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
        messages = body.get("messages") or []
        last = ""
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                last = c if isinstance(c, str) else orjson.dumps(c).decode()
                break
        return self.reply_for(last)

    def responses_reply_text(self, body: dict[str, Any]) -> str:
        """The answer to a Responses API request: the last user text of its ``input``."""
        return self.reply_for(_last_user_input(body.get("input")))

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
                self._write(
                    fault.status,
                    orjson.dumps(
                        {
                            "error": {
                                "message": f"simulated HTTP {fault.status}",
                                "type": "server_error",
                            }
                        }
                    ),
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

    def _completion_text(self, body: dict[str, Any]) -> str:
        """A legacy completion: the simulator's answer to the prompt (its first text), after
        the prompt itself with ``echo``."""
        prompt = body.get("prompt")
        first = prompt if isinstance(prompt, str) else ""
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            first = prompt[0]
        reply = self.sim.reply_for(first)
        return first + reply if body.get("echo") else reply

    def _text_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self._completion_text(body)
        n = body.get("n") or 1
        prompt = body.get("prompt")
        prompt_tokens = len(prompt.split()) if isinstance(prompt, str) else len(str(prompt))
        completion_tokens = len(text.split())
        return {
            "id": f"cmpl-sim-{uuid.uuid4().hex[:12]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "unknown"),
            "system_fingerprint": f"sim-{self.sim.spec.name}",
            "choices": [
                {"index": i, "text": text, "logprobs": None, "finish_reason": "stop"}
                for i in range(n if isinstance(n, int) and 0 < n <= 16 else 1)
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
        text = self._completion_text(body)
        pieces = self._words(text)
        base = {
            "id": f"cmpl-sim-{uuid.uuid4().hex[:12]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "unknown"),
        }

        def send(obj: dict[str, Any] | None) -> None:
            _send_data(t, obj)

        def choice(piece: str, finish: str | None) -> dict[str, Any]:
            return {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}

        for i, piece in enumerate(pieces):
            if drop and i == len(pieces) // 2:
                t.abort()
                return
            if self.sim.spec.chunk_delay_ms:
                await asyncio.sleep(self.sim.spec.chunk_delay_ms / 1000)
            send({**base, "choices": [choice(piece, None)]})
        send({**base, "choices": [choice("", "stop")]})
        opts = body.get("stream_options") or {}
        if isinstance(opts, dict) and opts.get("include_usage"):
            prompt = body.get("prompt")
            pt = len(prompt.split()) if isinstance(prompt, str) else len(str(prompt))
            usage = {"prompt_tokens": pt, "completion_tokens": len(pieces)}
            usage["total_tokens"] = pt + len(pieces)
            send({**base, "choices": [], "usage": usage})
        send(None)
        t.write(b"0\r\n\r\n")

    @staticmethod
    def _thinking(reply: str) -> str:
        return f"The user wrote: {reply.partition('You said: ')[2] or reply}. Answer briefly."

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self.sim.reply_text(body)
        n = body.get("n") or 1
        prompt_tokens = _tokens(body.get("messages"))
        completion_tokens = len(text.split())
        choices: list[dict[str, Any]] = []
        for i in range(n if isinstance(n, int) and 0 < n <= 16 else 1):
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if self.sim.spec.reasoning:
                message["reasoning_content"] = self._thinking(text)
            finish = "stop"
            if body.get("tools"):
                fn, args = self._tool_call(body)
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"call_{i}",
                            "type": "function",
                            "function": {"name": fn, "arguments": args},
                        }
                    ],
                }
                finish = "tool_calls"
            choices.append(
                {"index": i, "message": message, "finish_reason": finish, "logprobs": None}
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

    def _tool_call(self, body: dict[str, Any]) -> tuple[str, str]:
        """The first tool, called with the user's last words as its query (as a model passes
        what the user said on to a tool)."""
        fn = body["tools"][0].get("function", {}).get("name", "tool")
        last = ""
        for m in reversed(body.get("messages") or []):
            if (
                isinstance(m, dict)
                and m.get("role") == "user"
                and isinstance(m.get("content"), str)
            ):
                last = m["content"]
                break
        return fn, orjson.dumps({"simulated": True, "query": last}).decode()

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

    async def _stream(self, body: dict[str, Any], drop: bool) -> None:
        t = self._start_stream()
        if t is None:
            return
        cid = f"chatcmpl-sim-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        model = body.get("model", "unknown")
        reply = self.sim.reply_text(body)
        size = self.sim.spec.chunk_chars
        words = self._words(reply)
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}

        def send(obj: dict[str, Any] | None) -> None:
            _send_data(t, obj)

        send(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            }
        )
        if body.get("tools"):  # a tool call, its arguments in pieces as models stream them
            fn, args = self._tool_call(body)
            step = size if size > 0 else 7
            for j in range(0, len(args), step):
                call: dict[str, Any] = {"index": 0, "function": {"arguments": args[j : j + step]}}
                if j == 0:
                    call.update({"id": "call_0", "type": "function"})
                    call["function"]["name"] = fn
                delta = {"tool_calls": [call]}
                send({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            words = []
        if self.sim.spec.reasoning:
            thought = self._thinking(reply)
            step = size if size > 0 else 9
            for j in range(0, len(thought), step):
                thinking = {"reasoning_content": thought[j : j + step]}
                send({**base, "choices": [{"index": 0, "delta": thinking, "finish_reason": None}]})
        for i, w in enumerate(words):
            if drop and i == len(words) // 2:
                t.abort()
                return
            if self.sim.spec.chunk_delay_ms:
                await asyncio.sleep(self.sim.spec.chunk_delay_ms / 1000)
            piece = w
            send(
                {
                    **base,
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
            )
        finish = "tool_calls" if body.get("tools") else "stop"
        send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        opts = body.get("stream_options") or {}
        if isinstance(opts, dict) and opts.get("include_usage"):
            pt = _tokens(body.get("messages"))
            send(
                {
                    **base,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": pt,
                        "completion_tokens": len(words),
                        "total_tokens": pt + len(words),
                    },
                }
            )
        send(None)
        t.write(b"0\r\n\r\n")

    # -- the Responses API ---------------------------------------------------------------

    def _response_output(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The output items of the answer to a Responses API request, and its usage: a
        reasoning summary (for a reasoning model), then a message, or a call of the first
        function tool with the user's last words as its query."""
        last = _last_user_input(body.get("input"))
        text = self.sim.reply_for(last)
        output: list[dict[str, Any]] = []
        if self.sim.spec.reasoning:
            output.append(
                {
                    "type": "reasoning",
                    "id": f"rs_sim_{uuid.uuid4().hex[:24]}",
                    "summary": [{"type": "summary_text", "text": self._thinking(text)}],
                }
            )
        fn = _function_tool(body)
        if fn is not None:
            output.append(
                {
                    "type": "function_call",
                    "id": f"fc_sim_{uuid.uuid4().hex[:24]}",
                    "call_id": "call_0",
                    "name": fn,
                    "arguments": orjson.dumps({"simulated": True, "query": last}).decode(),
                    "status": "completed",
                }
            )
        else:
            output.append(
                {
                    "type": "message",
                    "id": f"msg_sim_{uuid.uuid4().hex[:24]}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
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
            "parallel_tool_calls": True,
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
                words = self._words(text)
                for i, w in enumerate(words):
                    if drop and i == len(words) // 2:
                        t.abort()
                        return
                    if delay:
                        await asyncio.sleep(delay)
                    send("response.output_text.delta", **at, delta=w, logprobs=[])
                send("response.output_text.done", **at, text=text, logprobs=[])
                send("response.content_part.done", **at, part=part)
            send("response.output_item.done", output_index=index, item=item)
        send("response.completed", response=self._response(body, rid, created, output, usage))
        t.write(b"0\r\n\r\n")

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for i, item in enumerate(items):
            seed = hashlib.sha256(orjson.dumps(item)).digest()
            vec = [(b - 128) / 128 for b in seed[:16]]
            data.append({"object": "embedding", "index": i, "embedding": vec})
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


def _function_tool(body: dict[str, Any]) -> str | None:
    """The name of the request's first function tool (Responses API tools are flat:
    ``{"type": "function", "name": ...}``); None without one."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function":
            nested = tool.get("function")
            name = tool.get("name") or (nested.get("name") if isinstance(nested, dict) else None)
            return name if isinstance(name, str) and name else "tool"
    return None


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
