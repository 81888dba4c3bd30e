"""The PostgreSQL backend: same log, same proofs, one sequencer through an advisory lock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
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


async def test_ledger_audit_with_the_config_checks_a_postgres_ledgers_signatures(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ledger audit --config FILE` checks checkpoint signatures with the signing key of that
    gateway's data directory whatever stores its ledger: with PostgreSQL it checked roots only
    and said OK over a forged signature. A bare --url names no key: it warns so."""
    import base64
    import json

    import psycopg
    import yaml

    from harness import example_config
    from sekisho.ledger import create_signing_key, load_signer
    from sekisho.ledger.cli import main

    data_dir = tmp_path / "data"
    key_file = data_dir / "keys" / "ledger.key"
    verifier = create_signing_key(key_file, ORIGIN)
    ledger = await Ledger.open(pg_url, load_signer(key_file), origin=ORIGIN)
    try:
        for i in range(3):
            await ledger.append(decision(f"pg-audit-{i}"))
            await ledger.append(outcome(f"pg-audit-{i}"))
        await asyncio.to_thread(ledger.checkpoint_now)
    finally:
        await ledger.close()
    raw = example_config()
    raw["server"]["data_dir"] = str(data_dir)
    raw["ledger"] = {**raw.get("ledger", {}), "url": pg_url}
    config = tmp_path / "sekisho.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")

    assert main(["ledger", "audit", "--config", str(config)]) == 0
    out = capsys.readouterr()
    assert "(signatures verified)" in out.out and "audit: OK" in out.out
    assert "NOT checked" not in out.err

    # A signature forged in the database: one byte of each checkpoint's signature changed.
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(BASE_URL) as conn:
        rows = conn.execute(f'SELECT size, note FROM "{schema}".checkpoints').fetchall()
        for size, note in rows:
            body, _, line = note.rstrip("\n").rpartition("\n")
            prefix, _, sig = line.rpartition(" ")
            raw_sig = bytearray(base64.b64decode(sig))
            raw_sig[-1] ^= 1
            forged = f"{body}\n{prefix} {base64.b64encode(bytes(raw_sig)).decode()}\n"
            conn.execute(
                f'UPDATE "{schema}".checkpoints SET note = %s WHERE size = %s', (forged, size)
            )
    assert rows

    assert main(["ledger", "audit", "--config", str(config), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["signatures_verified"] is True
    assert any(p["kind"] == "checkpoint_signature" for p in report["problems"])

    assert main(["ledger", "audit", "--url", pg_url, "--key", verifier]) == 1
    capsys.readouterr()
    assert main(["ledger", "audit", "--url", pg_url]) == 0  # roots only: and it says so
    out = capsys.readouterr()
    assert "(no key given: roots only)" in out.out
    assert "checkpoint signatures are NOT checked" in out.err and "--key" in out.err


def test_the_ledgers_sessions_are_named_in_pg_stat_activity(pg_url: str) -> None:
    """An operator watching or ending sessions tells the ledger's apart; a name in the URL is
    kept."""
    for extra, want in (("", "sekisho-ledger"), ("&application_name=ops", "ops")):
        storage = PostgresStorage(pg_url + extra)
        try:
            rows = storage._read("SELECT application_name FROM pg_stat_activity "
                                 "WHERE pid = pg_backend_pid()")  # fmt: skip
        finally:
            storage.close()
        assert rows == [(want,)]
