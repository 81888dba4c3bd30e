"""Work too long for the event loop, in a worker thread that leaves the loop its turns.

A worker thread holding the GIL makes the event loop wait for it at every step: at Python's
default 5 ms switch interval, a small request beside a 4 MB prompt's scan took ~90 ms. While
such work runs the interval is 1 ms (~20 ms), and restored when the last of it ends. Not for
good: at 1 ms, streaming at c16 cost 1.3x the CPU (benchmarks/RESULTS.md).

The threads are a pool of their own, two at most: the event loop's default executor also
resolves upstream host names, which must not wait behind a queue of large scans (and under
the GIL more threads would not scan faster).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

_T = TypeVar("_T")

_FAIR_SWITCH_SECONDS = 0.001
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sekisho-large")
_running = 0
_usual_switch = sys.getswitchinterval()


async def in_fair_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a worker thread, with the event loop taking the GIL back often."""
    global _running, _usual_switch
    if _running == 0:
        _usual_switch = sys.getswitchinterval()
        sys.setswitchinterval(_FAIR_SWITCH_SECONDS)
    _running += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_pool, fn, *args)
    finally:
        _running -= 1
        if _running == 0:
            sys.setswitchinterval(_usual_switch)
