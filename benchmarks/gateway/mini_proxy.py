"""A minimal ASGI proxy with the shape of sekisho's hot path, to compare building blocks.

Per request it does what the gateway must do at the least: read the body, parse it, rewrite
the model, serialise it, POST it upstream over a pooled keep-alive client, and answer with
the upstream's body (parsed once, as the gateway reads usage from it) or, for a stream,
forward each SSE line as it arrives (each ``data:`` event parsed, as the gateway inspects it).
Nothing else: no policy, no ledger. So differences between variants are the server, the
client or the JSON library, not sekisho.

    python mini_proxy.py --server uvicorn|granian --client aiohttp|httpx --json orjson|json \
        --port 18101 --upstream http://127.0.0.1:18000/v1

Runs only from the benchmark's own venv (see choices.py); never imported by sekisho.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

loads: Callable[[bytes], Any]
dumps: Callable[[Any], bytes]


def use_json(name: str) -> None:
    global loads, dumps
    if name == "orjson":
        import orjson

        loads, dumps = orjson.loads, orjson.dumps
    elif name == "json":
        loads = json.loads

        def _dumps(obj: Any) -> bytes:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

        dumps = _dumps
    else:
        raise SystemExit(f"mini_proxy: unknown JSON library {name!r}; use orjson or json")


class AiohttpUpstream:
    def __init__(self, base: str) -> None:
        self.url = base.rstrip("/") + "/chat/completions"
        self.session: Any = None

    async def start(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
            skip_auto_headers=("accept-encoding",),
        )

    async def post(self, body: bytes) -> tuple[int, bytes]:
        async with self.session.post(self.url, data=body, headers=_UPSTREAM_HEADERS) as resp:
            return resp.status, await resp.read()

    async def stream(self, body: bytes) -> AsyncIterator[bytes]:
        async with self.session.post(self.url, data=body, headers=_UPSTREAM_HEADERS) as resp:
            content = resp.content
            while True:
                line = await content.readline()
                if not line:
                    return
                yield line

    async def close(self) -> None:
        await self.session.close()


class HttpxUpstream:
    def __init__(self, base: str) -> None:
        self.url = base.rstrip("/") + "/chat/completions"
        self.client: Any = None

    async def start(self) -> None:
        import httpx  # type: ignore[import-not-found]

        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            timeout=httpx.Timeout(30.0),
        )

    async def post(self, body: bytes) -> tuple[int, bytes]:
        resp = await self.client.post(self.url, content=body, headers=_UPSTREAM_HEADERS)
        return resp.status_code, resp.content

    async def stream(self, body: bytes) -> AsyncIterator[bytes]:
        req = self.client.build_request("POST", self.url, content=body, headers=_UPSTREAM_HEADERS)
        resp = await self.client.send(req, stream=True)
        try:
            async for line in resp.aiter_lines():
                yield line.encode() + b"\n"
        finally:
            await resp.aclose()

    async def close(self) -> None:
        await self.client.aclose()


_UPSTREAM_HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-mock-upstream"}
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class MiniProxy:
    def __init__(self, upstream: AiohttpUpstream | HttpxUpstream) -> None:
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await self.upstream.start()
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await self.upstream.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        request = loads(b"".join(chunks))
        if not isinstance(request, dict) or "messages" not in request:
            await _answer(send, 400, b'{"error":{"message":"not a chat request"}}')
            return
        request["model"] = str(request.get("model"))
        body = dumps(request)
        if request.get("stream"):
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            async for line in self.upstream.stream(body):
                if line.startswith(b"data: {"):
                    loads(line[6:])  # the gateway inspects every event (usage, output scan)
                await send({"type": "http.response.body", "body": line, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        status, data = await self.upstream.post(body)
        loads(data)  # the gateway reads usage from every answer
        await _answer(send, status, data)


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def app_from_env() -> MiniProxy:
    """Factory for granian, which imports the app by name: settings come from the environment."""
    use_json(os.environ["MINI_JSON"])
    base = os.environ["MINI_UPSTREAM"]
    client = os.environ["MINI_CLIENT"]
    upstream = AiohttpUpstream(base) if client == "aiohttp" else HttpxUpstream(base)
    return MiniProxy(upstream)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", choices=["uvicorn", "granian"], required=True)
    ap.add_argument("--client", choices=["aiohttp", "httpx"], required=True)
    ap.add_argument("--json", choices=["orjson", "json"], required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument(
        "--upstream", required=True, help="mock base URL, e.g. http://127.0.0.1:18000/v1"
    )
    args = ap.parse_args()
    os.environ.update(MINI_JSON=args.json, MINI_UPSTREAM=args.upstream, MINI_CLIENT=args.client)
    if args.server == "uvicorn":
        import uvicorn

        uvicorn.run(
            app_from_env(),
            host="127.0.0.1",
            port=args.port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
        )
    else:
        from granian import Granian  # type: ignore[import-not-found]

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        Granian(
            "mini_proxy:app_from_env",
            factory=True,
            address="127.0.0.1",
            port=args.port,
            interface="asgi",
            workers=1,
            loop="uvloop",
            log_enabled=False,
            working_dir=Path(os.path.dirname(os.path.abspath(__file__))),
        ).serve()


if __name__ == "__main__":
    main()
