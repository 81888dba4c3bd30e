"""The PostgreSQL backend: same log, same proofs, one sequencer through an advisory lock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest

from sekisho.errors import ServiceUnavailable
from sekisho.ledger import Ledger, Signer, audit, merkle, open_storage, verify_receipt
from sekisho.ledger.storage import NewEntry, PostgresStorage
from tcp_proxy import TcpProxy

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


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    relay = TcpProxy(("127.0.0.1", 5432)).start()
    yield relay
    relay.stop()


def _through(proxy: TcpProxy, pg_url: str) -> str:
    parts = urlsplit(pg_url)
    return parts._replace(netloc=f"postgres@127.0.0.1:{proxy.port}").geturl()


async def test_a_postgres_ledger_appends_again_once_its_server_is_back(
    pg_url: str, proxy: TcpProxy, signer: Signer
) -> None:
    ledger = await Ledger.open(_through(proxy, pg_url), signer, origin=ORIGIN, deadline=5.0)
    try:
        assert (await ledger.append(decision("before"))).index == 0
        assert ledger.storage.tree_size() == 1  # this thread's reading connection, too
        proxy.stop()  # every connection through it is cut, as by a server restart
        with pytest.raises(ServiceUnavailable, match="its storage failed") as refused:
            await ledger.append(decision("during"))
        assert "127.0.0.1" not in refused.value.message  # the client is not told the host
        assert "storage postgresql://127.0.0.1" in ledger.health.state()[1]  # the operator is
        assert not ledger.health.state()[0]  # unready while it cannot write
        proxy.start()
        assert (await ledger.append(decision("after"))).index == 1
        assert ledger.health.state() == (True, "ok")
        assert ledger.storage.tree_size() == 2
        verify_receipt(ledger.receipt("after"), [signer.verifier()])

        # An outage nobody wrote through: the first request after it is served too.
        proxy.stop()
        proxy.start()
        assert (await ledger.append(decision("later"))).index == 2
        assert ledger.storage.tree_size() == 3
    finally:
        await ledger.close()


class _CutAtCommit:
    """A connection whose COMMIT is cut off: ``before`` runs ahead of it (the commit never
    reaches the server) or after it (it committed, but the client never hears so)."""

    def __init__(self, conn: Any, before: Callable[[], None] | None, after: Callable[[], None]):
        self._conn, self._before, self._after = conn, before, after

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def commit(self) -> None:
        if self._before is not None:
            self._before()
        self._conn.commit()
        self._after()


def _entries(*request_ids: str) -> list[NewEntry]:
    leaves = [decision(rid, time=datetime(2025, 4, 1, tzinfo=UTC)) for rid in request_ids]
    return [
        NewEntry(d.to_bytes(), merkle.leaf_hash(d.to_bytes()), d.request_id, d.kind) for d in leaves
    ]


@pytest.mark.parametrize("landed", [False, True], ids=["lost", "committed"])
async def test_a_commit_cut_off_neither_reuses_nor_skips_an_index(
    pg_url: str, proxy: TcpProxy, landed: bool
) -> None:
    url = _through(proxy, pg_url)
    storage = PostgresStorage(url)
    storage.initialise(ORIGIN)
    assert storage.sequence(_entries("a")) == 0
    real_connect = storage._connect
    cut = [True]

    def connect() -> Any:
        conn = real_connect()
        if not cut:
            return conn
        cut.clear()  # only the first new connection is cut
        if landed:
            return _CutAtCommit(conn, None, lambda: (proxy.stop(), conn.execute("SELECT 1")))
        return _CutAtCommit(conn, proxy.stop, lambda: None)

    storage._connect = connect  # type: ignore[method-assign]
    storage._local.conn.close()  # dead before the batch: it goes on a new (cut) connection
    with pytest.raises(Exception, match=r"connection|server|closed"):
        storage.sequence(_entries("b", "c", "d"))  # refused: never reported durable
    proxy.start()
    start = storage.sequence(_entries("e"))
    storage.close()
    assert start == (4 if landed else 1)
    check = open_storage(pg_url)
    try:
        report = audit(check)
        assert report.ok, report.problems
        assert report.tree_size == start + 1
        assert check.scan(start, start + 1)[0][1] == _entries("e")[0].leaf
    finally:
        check.close()
