"""A stderr nobody reads must not stop the gateway: logs are written by a thread of their own.

Before, each request's log line was written to stderr on the event loop: once the pipe's
buffer (64 KiB) was full, as under a stalled log collector or a container runtime's blocking
log driver, every request waited for it. Here `sekisho serve` runs with its stderr a pipe
that the test never reads."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Harness, free_port, request
from sekisho.identity import KeyStore
from serve_process import Simulators, write_config


def test_requests_are_served_while_stderr_is_not_read(tmp_path: Path) -> None:
    sims = Simulators().start()

    def unlimited(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["limits"]["requests_per_minute"] = 100_000

    config = write_config(tmp_path / "sekisho.yaml", sims.config(unlimited))
    port = free_port()
    args = ["serve", "--config", str(config), "--port", str(port), "--data-dir"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sekisho", *args, str(tmp_path / "data")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # never read
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "sekisho serve exited"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.05)
        key, _ = KeyStore(tmp_path / "data" / "identity.db").create("demo")
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        started = time.monotonic()
        for _ in range(1000):  # ~300 KB of log lines, several times the pipe's buffer
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
        assert time.monotonic() - started < 60
    finally:
        proc.kill()
        proc.wait(10)
        sims.stop()


def test_a_log_line_is_plain_json_without_terminal_colour_codes() -> None:
    """uvicorn attaches a copy of its message with ANSI colour codes: a SIEM gets the message
    once, without escape sequences."""
    import logging as _logging

    from sekisho.logs import JsonFormatter

    record = _logging.LogRecord("uvicorn.error", _logging.INFO, "", 0, "Uvicorn running", (), None)
    record.color_message = "Uvicorn running on \x1b[1mhttp\x1b[0m"
    record.request_id = "req_1"
    line = JsonFormatter().format(record)
    assert "\\u001b" not in line and "color_message" not in line
    assert '"request_id":"req_1"' in line


def test_dropped_log_lines_are_counted_on_metrics(
    gateway: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stderr nobody reads loses lines past 100,000 waiting: /metrics says how many, so an
    alert fires before anyone looks for a line that is not there."""
    import logging as _logging

    from sekisho import logs

    writer = logs._Writer()
    writer.MAX_PENDING = 0  # every line is one too many: as if 100,000 were waiting
    monkeypatch.setattr(logs, "_writer", writer)

    def dropped() -> float:
        text = request("GET", f"{gateway.root}/metrics").text
        (family,) = [
            f for f in text_string_to_metric_families(text) if f.name == "sekisho_log_lines_dropped"
        ]
        (total,) = [s.value for s in family.samples if s.name.endswith("_total")]
        return float(total)

    assert dropped() == 0
    line = _logging.LogRecord("sekisho", _logging.INFO, "", 0, "request", (), None)
    for _ in range(3):
        writer.put(line)
    assert dropped() == 3
    writer.put(line)
    writer.put(line)
    assert dropped() == 5  # counted once each, however often it is scraped
