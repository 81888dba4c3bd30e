"""`sekisho demo`, the five-minute tour, as a newcomer runs it: every scripted request ends where
the tenant's policy says, and the receipt it picks verifies offline."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest


def table(out: str) -> dict[str, list[str]]:
    """The tour's table, by request title: [endpoint, jurisdiction, outcome, receipt]. Column
    widths come from the dashed line under the header (wide characters take two columns)."""
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("--"))
    widths = [len(d) for d in lines[rule].split("  ")]
    rows: dict[str, list[str]] = {}
    for line in lines[rule + 1 :]:
        if not line.strip():
            break
        cells, rest = [], line
        for w in widths[:-1]:
            cell, taken = "", 0
            for ch in rest:
                if taken >= w:
                    break
                cell += ch
                taken += 2 if unicodedata.east_asian_width(ch) in "WF" else 1
            cells.append(cell.strip())
            rest = rest[len(cell) + 2 :]
        cells.append(rest.strip())
        rows[cells[1]] = [cells[2], cells[3], cells[-1], cells[7]]
    return rows


def test_the_demo_tour_shows_each_decision_and_verifies_a_receipt() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sekisho", "demo"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "SIMULATED" in out  # simulators say what they are
    rows = table(out)
    assert len(rows) == 12, out
    domestic_or_japan = {"sim-domestic-tokyo", "sim-global-japaneast"}
    assert rows["plain question"][0] in domestic_or_japan
    assert rows["personal data (APPI)"][0] in domestic_or_japan
    assert rows["personal data (APPI)"][2].endswith("confidential")
    assert rows["My Number (番号法)"][:2] == ["sim-domestic-tokyo", "JP/tokyo"]
    assert rows["My Number (番号法)"][2].endswith("restricted")
    assert rows["image attached (unreadable)"][2].endswith("confidential")
    assert rows["Responses API, personal data"][0] in domestic_or_japan
    assert rows["Responses API, personal data"][2].endswith("confidential")
    # A My Number only in a tool definition is found too: restricted, so domestic only.
    assert rows["My Number in a tool's schema"][:2] == ["sim-domestic-tokyo", "JP/tokyo"]
    assert rows["My Number in a tool's schema"][2].endswith("restricted")
    refused = rows["My Number, US-only model"]
    assert refused[0] == "(not sent)" and "HTTP 403 sovereignty_policy_violation" in refused[2]
    assert refused[3].isdigit()  # a refusal is in the ledger too, and its receipt says where
    assert rows["declared 機密性3"][0] == "sim-domestic-tokyo"
    assert rows["domestic down, internal"][0] == "sim-global-japaneast"  # failover inside JP
    failed = rows["domestic down, 機密性3"]
    # sent to the domestic endpoint, which failed; never on to one outside the eligible set
    assert failed[:2] == ["failed: sim-domestic-tokyo", "JP/tokyo"]
    assert "HTTP 502 upstream_failed: Every eligible endpoint failed" in failed[2]
    assert "ok  checkpoint signature" in out
    assert re.search(r"ok  inclusion: decision of request req_\w+ is entry \d+", out)
    assert "ok  inclusion: outcome of the same request" in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_demo_kept_running_stops_cleanly_and_leaves_no_keys_behind(
    tmp_path: Path, sig: int
) -> None:
    """Stopped by SIGTERM it ended at once and left its temporary data directory (ledger
    signing key, key-encryption key, API keys) behind; stopped by Ctrl-C it printed a
    traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sekisho", "demo", "--keep-running"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "stays up" in line:
                break
        assert list(tmp_path.glob("sekisho-demo-*")), "the demo keeps its data under TMPDIR"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "temporary data directory is removed" in out
    assert not list(tmp_path.glob("sekisho-demo-*"))
