from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Harness, start_example


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Harness]:
    """The example config's gateway, serving through three simulators on ephemeral ports."""
    h = start_example(tmp_path)
    try:
        yield h
    finally:
        h.stop()
