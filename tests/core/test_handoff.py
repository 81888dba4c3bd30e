"""Work handed from an event loop to a writer thread: once per loop turn, in bounded batches."""

from __future__ import annotations

import asyncio
import threading
import time

from sekisho._handoff import Handoff


async def test_items_put_in_one_turn_reach_the_writer_together() -> None:
    h: Handoff[int] = Handoff(group_interval=0.0, group_size=100)
    loop = asyncio.get_running_loop()
    for i in range(5):
        h.put(loop, i)
    assert h._queue.empty()  # nothing is handed over (no thread woken) mid-turn
    await asyncio.sleep(0)
    assert h._queue.qsize() == 1
    h.put(loop, 5)
    await asyncio.sleep(0)
    assert h.next_batch(lingering=False) == ([0, 1, 2, 3, 4, 5], False)


async def test_a_batch_never_exceeds_the_group_size_and_nothing_is_lost() -> None:
    h: Handoff[int] = Handoff(group_interval=0.0, group_size=4)
    loop = asyncio.get_running_loop()
    for i in range(10):
        h.put(loop, i)
    await asyncio.sleep(0)
    batches = [h.next_batch(lingering=False)[0] for _ in range(3)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_stop_hands_over_what_is_queued_and_then_says_stop() -> None:
    h: Handoff[str] = Handoff(group_interval=0.0, group_size=2)
    loop = asyncio.get_running_loop()
    h.put(loop, "a")
    h.put(loop, "b")
    h.put(loop, "c")
    h.stop()  # in the same turn: nothing may be left behind in the loop's list
    assert h.next_batch(lingering=False) == (["a", "b"], False)
    assert h.next_batch(lingering=False) == (["c"], True)


def test_a_lingering_writer_gathers_work_that_keeps_arriving() -> None:
    h: Handoff[int] = Handoff(group_interval=0.5, group_size=1000)
    loop = asyncio.new_event_loop()
    try:
        h.put(loop, 0)
        loop.run_until_complete(asyncio.sleep(0))

        def more() -> None:
            for i in range(1, 4):
                time.sleep(0.00005)
                h._queue.put([i])

        t = threading.Thread(target=more)
        t.start()
        t.join()
        batch, stop = h.next_batch(lingering=True)
        assert (batch, stop) == ([0, 1, 2, 3], False)
        # without lingering only what is already there is taken
        h._queue.put([4])
        assert h.next_batch(lingering=False) == ([4], False)
    finally:
        loop.close()


def test_a_lull_ends_the_gathering_long_before_the_interval() -> None:
    h: Handoff[int] = Handoff(group_interval=2.0, group_size=1000)
    h._queue.put([1])
    started = time.monotonic()
    assert h.next_batch(lingering=True) == ([1], False)
    assert time.monotonic() - started < 0.5
