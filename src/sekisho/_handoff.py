"""Hand work from event loops to one writer thread: once per turn of the loop, in batches.

The ledger and each regional store make their writes durable in a thread of their own, in
groups (group commit). Waking that thread for every single write costs a futex call, and the
woken thread then takes the GIL from the event loop in the middle of a request; under load
that handover was a large share of the CPU per request. ``Handoff.put`` only appends to a list
kept for the current turn of the caller's event loop; the list goes to the writer once, when
that turn ends. What the writer takes, ``next_batch`` gathers as before: everything waiting,
and while items keep arriving, more of them up to an interval.
"""

from __future__ import annotations

import asyncio
import queue
import time
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# Gathering ends when no new work arrived for this long: everyone who is coming has come.
ARRIVAL_GAP = 0.0002
_STOP = object()


class Handoff(Generic[T]):
    def __init__(self, *, group_interval: float, group_size: int) -> None:
        self.group_interval = group_interval
        self.group_size = group_size
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._outboxes: dict[asyncio.AbstractEventLoop, list[T]] = {}
        self._carry: list[T] = []

    # -- the event loops' side ----------------------------------------------------------------

    def put(self, loop: asyncio.AbstractEventLoop, item: T) -> None:
        """Queue ``item`` (from ``loop``'s thread); the writer gets it when this turn ends."""
        box = self._outboxes.get(loop)
        if box is None:
            box = self._outboxes[loop] = []
            loop.call_soon(self._send, loop)
        box.append(item)

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        box = self._outboxes.pop(loop, None)
        if box:
            self._queue.put(box)

    def flush(self) -> None:
        """Hand over everything queued in every loop now (before stopping)."""
        for loop in list(self._outboxes):
            self._send(loop)

    def stop(self) -> None:
        """Let the writer finish what was handed over, then end (``next_batch`` says stop)."""
        self.flush()
        self._queue.put(_STOP)

    # -- the writer thread's side -------------------------------------------------------------

    def next_batch(self, lingering: bool) -> tuple[list[T], bool]:
        """Block for work; return ``(batch, stop)``. With ``lingering``, keep gathering while
        work keeps arriving, up to ``group_interval`` and ``group_size``. After stop, the
        batch holds everything still waiting, whatever its size."""
        batch, self._carry = self._carry, []
        if not batch:
            first = self._queue.get()
            if first is _STOP:
                return [], True
            batch = list(first)
        until = time.monotonic() + self.group_interval if lingering else 0.0
        while len(batch) < self.group_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=min(remaining, ARRIVAL_GAP))
                except queue.Empty:
                    break
            if item is _STOP:
                return batch, True
            batch.extend(item)
        if len(batch) > self.group_size:
            batch, self._carry = batch[: self.group_size], batch[self.group_size :]
        return batch, False
