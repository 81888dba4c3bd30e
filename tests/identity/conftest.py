"""Fixtures of the identity tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from oidc_issuer import Issuer


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    iss = Issuer()
    await iss.start()
    try:
        yield iss
    finally:
        await iss.stop()
