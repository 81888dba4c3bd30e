"""How many files (file descriptors) the gateway may open. Every connection takes one; past the
soft limit (1024 by default, under systemd too) the event loop cannot accept a connection and
the client is reset without an answer or a line in the log. `serve` raises the soft limit to
the hard one, says what it is at start (a warning when it is low), and warns while serving when
the open files near the limit."""

from __future__ import annotations

import errno
import logging
import resource
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import example_config, request
from sekisho._open_files import DescriptorWatch
from serve_process import ServeProcess, write_config

_, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)


class LimitedServe(ServeProcess):
    """`sekisho serve` started with a soft limit on open files of ``soft`` (and a hard one of
    ``hard``), as systemd starts a unit without LimitNOFILE."""

    def __init__(self, *args: object, soft: int, hard: int, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.limits = (soft, hard)

    @property
    def args(self) -> list[str]:
        lower = (
            "import os, resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, {self.limits}); "
            "os.execv(sys.executable, [sys.executable] + sys.argv[1:])"
        )
        return [sys.executable, "-c", lower, *super().args[1:]]


def open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit")


@pytest.mark.skipif(HARD == resource.RLIM_INFINITY or HARD < 2048, reason="needs a hard limit")
def test_serve_raises_a_low_soft_limit_to_the_hard_one_and_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path / "sekisho.yaml", example_config())
    g = LimitedServe(config, tmp_path / "data", soft=256, hard=HARD)
    try:
        g.start()
        assert g.proc is not None
        assert open_files_limits(g.proc.pid) == (HARD, HARD)
        said = [line for line in g.log() if line["msg"] == "open files limit"]
        assert said and said[0]["open_files_limit"] == HARD and said[0]["hard_limit"] == HARD
    finally:
        g.stop()


def test_serve_warns_at_start_when_it_may_open_few_files(tmp_path: Path) -> None:
    config = write_config(tmp_path / "sekisho.yaml", example_config())
    g = LimitedServe(config, tmp_path / "data", soft=512, hard=1000)
    try:
        g.start()
        warned = [line for line in g.log() if line.get("open_files_limit") == 1000]
        assert warned and warned[0]["level"] == "warning"
        assert "LimitNOFILE=65536" in warned[0]["msg"]
    finally:
        g.stop()


def test_metrics_say_how_many_files_are_open_and_how_many_may_be(tmp_path: Path) -> None:
    """What an alert on open files compares (examples/prometheus/sekisho-alerts.yaml)."""
    config = write_config(tmp_path / "sekisho.yaml", example_config())
    g = LimitedServe(config, tmp_path / "data", soft=512, hard=1000)
    try:
        g.start()
        assert g.proc is not None
        families = {
            f.name: f.samples[0].value
            for f in text_string_to_metric_families(request("GET", f"{g.root}/metrics").text)
            if f.name in ("sekisho_open_files", "sekisho_open_files_limit")
        }
        assert families["sekisho_open_files_limit"] == 1000
        really = len(list(Path(f"/proc/{g.proc.pid}/fd").iterdir()))
        assert 10 < families["sekisho_open_files"] <= really + 5, (families, really)
    finally:
        g.stop()


def test_the_watch_warns_near_the_limit_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    used = [100]
    now = [0.0]

    def count() -> int:
        if used[0] < 0:
            raise OSError(errno.EMFILE, "Too many open files")
        return used[0]

    watch = DescriptorWatch(1000, count, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="sekisho.serve"):
        assert not watch.check()  # 10 %: nothing to say
        used[0] = 950
        assert watch.check()
        now[0] = 30.0
        assert watch.check()  # still near, but said 30 s ago
        used[0] = -1  # so near that listing the open files fails for lack of one
        now[0] = 61.0
        assert watch.check()
    warnings = [r for r in caplog.records if "files (file descriptors)" in r.getMessage()]
    assert len(warnings) == 2
    assert "950 of the 1000" in warnings[0].getMessage()
    assert "1000 of the 1000" in warnings[1].getMessage()
    assert "LimitNOFILE" in warnings[0].getMessage()
