"""An OpenAI-compatible chat endpoint on loopback whose streams last as long as the test says:
each stream's first event goes out at once (the gateway has its answer and holds the
endpoint's slot), the rest only when the test opens that request's gate. Requests are told
apart by their last user message, their label. It runs in a thread of its own, so tests can
drive the gateway with the official (blocking) openai client meanwhile."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any


class GatedUpstream:
    def __init__(self) -> None:
        self.arrivals: list[str] = []  # labels, in the order their requests reached it
        self._gates: dict[str, asyncio.Event] = {}
        self._arrived = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> GatedUpstream:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            for gate in self._gates.values():
                gate.set()
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def open(self, *labels: str) -> None:
        """Let the streams of these requests finish (now, or as soon as they arrive)."""
        for label in labels:
            self._loop.call_soon_threadsafe(lambda lb=label: self._gate(lb).set())

    def wait_for_arrivals(self, n: int, timeout: float = 10.0) -> list[str]:
        """The labels of the first ``n`` requests, once that many have arrived."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.arrivals) >= n, timeout):
                raise AssertionError(f"{len(self.arrivals)} of {n} requests arrived")
            return self.arrivals[:n]

    def _gate(self, label: str) -> asyncio.Event:
        gate = self._gates.get(label)
        if gate is None:
            gate = self._gates[label] = asyncio.Event()
        return gate

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # one keep-alive connection, request after request
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body: dict[str, Any] = json.loads(await reader.readexactly(length))
                label = body["messages"][-1]["content"]
                with self._arrived:
                    self.arrivals.append(label)
                    self._arrived.notify_all()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                self._event(writer, body, {"role": "assistant", "content": ""})
                await writer.drain()
                await self._gate(label).wait()
                self._event(writer, body, {"content": f"done: {label}"})
                self._event(writer, body, {}, finish="stop")
                self._chunk(writer, b"data: [DONE]\n\n")
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def _event(
        self,
        writer: asyncio.StreamWriter,
        body: dict[str, Any],
        delta: dict[str, Any],
        finish: str | None = None,
    ) -> None:
        event = {
            "id": "chatcmpl-gated",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        self._chunk(writer, b"data: " + json.dumps(event).encode() + b"\n\n")

    @staticmethod
    def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
