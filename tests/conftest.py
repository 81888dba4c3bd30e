from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """Start example gateways on demand, ``gateways(mutate, **start_example_kw)``, each with
    its own data directory; all are stopped when the test ends."""
    started: list[Harness] = []

    def start(mutate: Callable[[dict[str, Any]], None] | None = None, **kw: Any) -> Harness:
        h = start_example(tmp_path / f"gateway-{len(started)}", mutate, **kw)
        started.append(h)
        return h

    try:
        yield start
    finally:
        for h in started:
            h.stop()
