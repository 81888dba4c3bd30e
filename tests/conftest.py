from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Harness, start_example
from sekisho.simulator import SimulatedEndpoint, SimulatorServer

StartSim = Callable[..., Awaitable[SimulatorServer]]

# sekisho's command line makes every file under umask 077 (sekisho.cli.main sets it, process
# wide, so it was already so here after the first in-process CLI call). The gateways and stores
# these tests start in-process make their files the same way from the start: `sekisho serve`
# refuses a data directory whose files group or others can read, as a restore made under
# umask 022 leaves them.
os.umask(0o077)


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


REDIS = "redis://127.0.0.1:6379/0"


def _redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A fresh key namespace on the Redis at 127.0.0.1:6379, emptied afterwards; the test is
    skipped, saying so, where no Redis runs."""
    if not _redis_reachable():
        pytest.skip("Redis is not reachable at 127.0.0.1:6379 (start it to run this test)")
    namespace = f"test-{uuid.uuid4().hex[:10]}"
    yield namespace
    import redis

    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(f"sekisho:{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start simulators on ephemeral loopback ports, ``await start_sim(**spec)``; all are
    stopped when the test ends."""
    started: list[SimulatorServer] = []

    async def start(**kw: Any) -> SimulatorServer:
        sim = SimulatorServer(SimulatedEndpoint("sim-test", "Test endpoint", **kw))
        await sim.start()
        started.append(sim)
        return sim

    try:
        yield start
    finally:
        for sim in started:
            await sim.stop()
