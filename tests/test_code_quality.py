"""The code stays as STYLE.md asks: `mypy --strict` on src/, `ruff` lint and format clean.

These run inside the test suite so that `./run test` (and CI, which runs exactly that) fails on
a type error or a lint regression, not only on a behaviour regression.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_ruff_lint_is_clean() -> None:
    r = run(str(BIN / "ruff"), "check", "src", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_is_clean() -> None:
    r = run(str(BIN / "ruff"), "format", "--check", "src")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    r = run(str(BIN / "mypy"), "src")
    assert r.returncode == 0, r.stdout + r.stderr
