from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sekisho.store import Stores
from store.helpers import FULL_7, Region, Sink, Tenant

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
async def stores(tmp_path: Path, sink: Sink) -> AsyncIterator[Stores]:
    s = await Stores.open(
        {"jp": Region("JP"), "eu": Region("DE")},
        tmp_path,
        audit=sink,
        tenants={"demo": Tenant("jp", FULL_7), "acme": Tenant("jp")},
    )
    try:
        yield s
    finally:
        await s.close()


def _pg_reachable() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=2).close()
        return True
    except Exception:
        return False


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A unique schema prefix on the test PostgreSQL; dropped afterwards."""
    if not _pg_reachable():
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL}")
    import psycopg

    name = "st_" + uuid.uuid4().hex[:12]
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for suffix in ("", "_keyring", "_b", "_b_keyring"):
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}{suffix}" CASCADE')
