"""Both event loops for a test module: ``from loops import event_loop_policy, both_loops`` and
``pytestmark = both_loops``. The gateway serves on uvloop; the library code must also work on
asyncio's own loop (tools, tests, embedders).

A conftest hook (pytest_asyncio_loop_factories) is the newer way to do this; the modules that
need it keep it local until the suite wants both loops everywhere."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

both_loops = pytest.mark.filterwarnings(
    'ignore:Overriding the "event_loop_policy" fixture:DeprecationWarning'
)


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test of the module runs on both loops."""
    if request.param == "uvloop":
        policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
        return policy
    return asyncio.DefaultEventLoopPolicy()
