"""The gateway's pooled upstream connections, against an endpoint that misbehaves on the wire
(a raw socket server on 127.0.0.1): no answer meant for one request reaches another's client."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from harness import Harness, example_config

ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()


def respond(status: int, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


class EarlyRejecting:
    """An endpoint behind a proxy that refuses the first request on seeing its head (413),
    keeps the connection, and never reads that request's body: what follows on the connection
    it reads as the next request, and answers that with a 400 quoting its first line. Every
    later connection is answered properly."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.connections = 0
        self.port = 0
        self.tasks: list[asyncio.Task[None]] = []

    def __enter__(self) -> EarlyRejecting:
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop
        ).result(5)
        self.server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def _stop(self) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        try:
            if self.connections == 1:
                await reader.readuntil(b"\r\n\r\n")  # the head only
                writer.write(respond(413, b'{"error":{"message":"request too large"}}'))
                await asyncio.sleep(0.3)
                line = (await reader.read(300)).split(b"\r\n")[0].decode("utf-8", "replace")
                said = json.dumps({"error": {"message": f"bad request line: {line}"}})
                writer.write(respond(400, said.encode()))
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                writer.write(respond(200, ANSWER))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Harness]:
    with EarlyRejecting() as endpoint:
        raw = example_config()
        raw["routing"]["health"]["probe_interval_seconds"] = 0
        for ep in raw["endpoints"]:
            ep["base_url"] = f"http://127.0.0.1:{endpoint.port}/v1"
        raw["tenants"]["other"] = copy.deepcopy(raw["tenants"]["demo"])
        h = Harness(raw, tmp_path, {}).start()
        try:
            yield h
        finally:
            h.stop()


def ask(h: Harness, tenant: str, text: str) -> Any:
    c = openai.OpenAI(base_url=h.base_url, api_key=h.key(tenant), max_retries=0)
    return c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": text}])


def test_an_answer_to_one_tenants_request_never_reaches_another_tenant(gateway: Harness) -> None:
    """The endpoint refused tenant demo's request before reading its body; the connection went
    back to the pool, and tenant other's request on it was answered with a 400 quoting demo's
    prompt."""
    with pytest.raises(openai.APIStatusError) as refused:
        ask(gateway, "demo", "the merger with Tanaka Shoji closes on Friday")
    assert refused.value.status_code == 413
    answer = ask(gateway, "other", "hello")
    assert answer.choices[0].message.content == "hello"
