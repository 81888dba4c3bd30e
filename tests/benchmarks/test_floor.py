"""benchmarks/gateway/floor.py: the durability floor run.py prints beside the c=1 rows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

FLOOR = Path(__file__).resolve().parents[2] / "benchmarks" / "gateway" / "floor.py"


def test_it_measures_three_commits_per_request_in_the_given_directory(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(FLOOR), "--dir", str(tmp_path), "--n", "20"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"three durable commits in {tmp_path}, 20 times" in result.stdout
    cpu = re.search(r"CPU\s+([\d.]+) ms per request", result.stdout)
    wall = re.search(r"wall ([\d.]+) ms p50, ([\d.]+) ms p99", result.stdout)
    assert cpu and wall, result.stdout
    assert float(wall[1]) > 0 and float(wall[2]) >= float(wall[1])
    assert list(tmp_path.iterdir()) == []  # its files are gone


def test_a_directory_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(FLOOR), "--dir", str(tmp_path / "missing"), "--n", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "missing: not a directory" in result.stderr
    assert "Traceback" not in result.stderr
