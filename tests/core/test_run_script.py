"""`./run serve`: the user's own config (however argparse would read it) is served as given,
from where the user is; without one, the example config with the built-in simulators."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_venv(tmp_path: Path) -> Path:
    """A venv ./run takes as installed (its stamp matches the locks) whose `sekisho` prints
    where it runs and what it was given."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stamped = b"".join(
        (ROOT / name).read_bytes()
        for name in ("requirements.lock", "requirements-build.lock", "pyproject.toml")
    )
    (venv / ".sekisho-requirements.lock.sha256").write_text(
        hashlib.sha256(stamped).hexdigest() + "\n"
    )
    sekisho = venv / "bin" / "sekisho"
    sekisho.write_text('#!/bin/sh\necho "cwd=$PWD"\nfor a in "$@"; do echo "arg=$a"; done\n')
    sekisho.chmod(0o755)
    return venv


def run(venv: Path, cwd: Path, *argv: str, **env: str) -> tuple[Path, list[str]]:
    environ = {k: v for k, v in os.environ.items() if k != "SEKISHO_CONFIG"}
    done = subprocess.run(
        [str(ROOT / "run"), *argv],
        cwd=cwd, env={**environ, "SEKISHO_VENV": str(venv), **env},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    return Path(lines[0].removeprefix("cwd=")), [x.removeprefix("arg=") for x in lines[1:]]


@pytest.mark.parametrize(
    "given",
    [
        ["--config", "mine.yaml"],
        ["--config=mine.yaml"],
        ["-c", "mine.yaml"],
        ["-cmine.yaml"],
        ["-c=mine.yaml"],
        ["--conf", "mine.yaml"],
        ["--port", "9000", "-c", "mine.yaml"],
    ],
)
def test_serve_with_your_own_config_serves_it_alone_from_where_you_are(
    fake_venv: Path, tmp_path: Path, given: list[str]
) -> None:
    """`./run serve -c FILE` was not taken for a config: the file was read from the checkout
    and the example config's simulators were started beside it."""
    cwd, args = run(fake_venv, tmp_path, "serve", *given)
    assert cwd == tmp_path
    assert args == ["serve", *given]


def test_serve_with_sekisho_config_serves_that_file(fake_venv: Path, tmp_path: Path) -> None:
    """`SEKISHO_CONFIG=FILE ./run serve` served the example config (serve --help names
    $SEKISHO_CONFIG as the default)."""
    cwd, args = run(fake_venv, tmp_path, "serve", "--port", "9000", SEKISHO_CONFIG="mine.yaml")
    assert cwd == tmp_path
    assert args == ["serve", "--port", "9000"]


def test_serve_without_a_config_serves_the_example_with_its_simulators(
    fake_venv: Path, tmp_path: Path
) -> None:
    cwd, args = run(fake_venv, tmp_path, "serve", "--port", "9000", "--data-dir", "d")
    assert cwd == ROOT
    assert args[:3] == ["serve", "--config", "examples/sekisho.yaml"]
    assert "--with-simulators" in args and args[-4:] == ["--port", "9000", "--data-dir", "d"]
