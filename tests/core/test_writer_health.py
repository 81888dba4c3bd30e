"""What /readyz says of a durable writer: failing while a commit hangs past its deadline or
just after a failure, healthy again after a success or a quiet while."""

from __future__ import annotations

import time

from sekisho._deadlines import WriterHealth


def test_a_commit_running_past_the_deadline_is_unhealthy_until_it_ends() -> None:
    h = WriterHealth(deadline=0.05, recent=10)
    h.begin()
    assert h.state() == (True, "ok")  # within the deadline: a commit, not a hang
    time.sleep(0.08)
    healthy, why = h.state()
    assert not healthy and "past the 0.05 s deadline" in why
    h.ok()
    assert h.state() == (True, "ok")


def test_a_refusal_while_the_commit_still_runs_keeps_it_running() -> None:
    h = WriterHealth(deadline=0.05, recent=10)
    h.begin()
    h.failed("refused at the deadline", commit_ended=False)
    assert h.state() == (False, "refused at the deadline")
    time.sleep(0.08)
    assert "past the" in h.state()[1]  # the hang itself is still visible
    h.ok()  # the disk came back: the stuck commit finished
    assert h.state() == (True, "ok")


def test_a_failure_counts_for_a_while_then_reads_healthy_without_traffic() -> None:
    h = WriterHealth(deadline=1, recent=0.1)
    h.begin()
    h.failed("disk is full")
    assert h.state() == (False, "disk is full")
    time.sleep(0.15)
    assert h.state() == (True, "ok")  # a balancer may try again; a new failure turns it back
    h.begin()
    h.failed("disk is still full")
    assert h.state() == (False, "disk is still full")


def test_a_success_after_a_failure_is_healthy_at_once() -> None:
    h = WriterHealth(deadline=1, recent=10)
    h.begin()
    h.failed("storage error")
    h.begin()
    h.ok()
    assert h.state() == (True, "ok")
