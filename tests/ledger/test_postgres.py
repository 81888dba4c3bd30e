"""The PostgreSQL backend: same log, same proofs, one sequencer through an advisory lock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from sekisho.ledger import Ledger, Signer, audit, merkle, open_storage, verify_receipt

from .conftest import ORIGIN, decision, outcome

pytestmark = pytest.mark.postgres
BASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        conn = psycopg.connect(BASE_URL, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable: {e}")
    schema = f"ledger_{uuid.uuid4().hex[:12]}"
    yield f"{BASE_URL}?schema={schema}"
    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    conn.commit()
    conn.close()


async def test_two_sequencers_on_one_postgres_log_make_one_consistent_tree(
    pg_url: str, signer: Signer
) -> None:
    first = await Ledger.open(pg_url, signer, origin=ORIGIN)
    second = await Ledger.open(pg_url, signer, origin=ORIGIN)
    try:

        async def request(ledger: Ledger, rid: str) -> None:
            await ledger.append(decision(rid))
            await ledger.append(outcome(rid))

        await asyncio.gather(*(request(first if i % 2 else second, f"pg-{i}") for i in range(120)))
        receipt = first.receipt("pg-7")
        assert receipt["outcome"] is not None
        verify_receipt(receipt, [signer.verifier()])
        size = first.storage.tree_size()
        assert size == 240
        leaves = [merkle.leaf_hash(first.entry(i)) for i in range(size)]
        assert second.root_at(size) == merkle.reference_root(leaves)
        assert first.inclusion_proof(100, size) == merkle.reference_inclusion(100, leaves)
    finally:
        await first.close()
        await second.close()
    storage = open_storage(pg_url)
    try:
        report = audit(storage, [signer.verifier()])
        assert report.ok, report.problems[:5]
        assert report.incomplete == []
    finally:
        storage.close()
