"""The same store on PostgreSQL: migrations, region markers, writes, deletion."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from sekisho.store import StoreMisconfigured, Stores, subjects
from sekisho.store.database import check_schema, create, locate, upgrade
from store.conftest import PG_URL
from store.helpers import FULL_7, Region, Sink, Tenant, exchange

pytestmark = pytest.mark.postgres


def url(schema: str) -> str:
    return f"{PG_URL}?schema={schema}"


async def test_postgres_store_needs_db_upgrade_then_works(
    tmp_path: Path, sink: Sink, pg_schema: str
) -> None:
    regions = {"jp": Region("JP", url(pg_schema))}
    with pytest.raises(StoreMisconfigured, match="Run: sekisho db upgrade"):
        await Stores.open(regions, tmp_path, audit=sink)
    for at in locate("jp", url(pg_schema), tmp_path):
        engine = create(at)
        assert upgrade(engine, at) == (None, "0001")
        assert upgrade(engine, at) == ("0001", "0001")  # idempotent
        check_schema(engine, at)
        engine.dispose()
    s = await Stores.open(regions, tmp_path, audit=sink, tenants={"demo": Tenant("jp", FULL_7)})
    tenant = s.for_tenant("demo", "jp")
    refs = await asyncio.gather(*(tenant.put(exchange(request_id=f"r{i}")) for i in range(50)))
    assert all(refs) and s.region("jp").count("demo") == 50
    phone = subjects.Subject("demo", "PHONE_JP", "+81 90-1234-5678")
    assert len(await subjects.find(s, phone, actor="dpo")) == 50
    assert await subjects.restrict(s, phone, actor="dpo") == 50
    doc = await subjects.export(s, phone, actor="dpo")
    assert doc["records"] == [] and len(doc["restricted"]) == 50
    assert await s.delete_tenant("demo", actor="admin") == {"jp": 50}
    await s.close()


async def test_a_postgres_store_a_newer_sekisho_migrated_is_not_sent_to_db_upgrade(
    tmp_path: Path, sink: Sink, pg_schema: str
) -> None:
    # After a rollback the gateway said "Run: sekisho db upgrade", which then failed in Alembic:
    # a store is never migrated back, and the message says what to do instead.
    regions = {"jp": Region("JP", url(pg_schema))}
    s = await Stores.open(regions, tmp_path, audit=sink, migrate=True)
    await s.close()
    records = locate("jp", url(pg_schema), tmp_path)[0]
    engine = create(records)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE \"{pg_schema}\".sekisho_store_version SET version_num = '0999'"))
    newer = "schema revision 0999, which this sekisho does not know"
    with pytest.raises(StoreMisconfigured, match=newer) as refused:
        await Stores.open(regions, tmp_path, audit=sink)
    assert "db upgrade" not in str(refused.value)
    with pytest.raises(StoreMisconfigured, match="a newer version of sekisho migrated it"):
        upgrade(engine, records)
    engine.dispose()


async def test_postgres_store_of_another_region_is_refused(
    tmp_path: Path, sink: Sink, pg_schema: str
) -> None:
    s = await Stores.open({"jp": Region("JP", url(pg_schema))}, tmp_path, audit=sink, migrate=True)
    await s.close()
    with pytest.raises(StoreMisconfigured, match="belongs to region 'jp'"):
        await Stores.open({"kr": Region("KR", url(pg_schema))}, tmp_path, audit=sink, migrate=True)


async def test_the_first_write_after_the_server_ended_the_connections_is_kept(
    tmp_path: Path, sink: Sink, pg_schema: str
) -> None:
    """The server ends every connection (pg_terminate_backend: a failover, an administrator,
    a restart): the next write goes on a new connection, not 503 store_unavailable for a
    request the model already answered. (Only this test's connections are ended: those
    through a relay whose ports the server sees.)"""
    import psycopg

    from tcp_proxy import TcpProxy

    relay = TcpProxy(("127.0.0.1", 5432)).start()
    through = url(pg_schema).replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
    s = await Stores.open(
        {"jp": Region("JP", through)},
        tmp_path,
        audit=sink,
        migrate=True,
        tenants={"demo": Tenant("jp", FULL_7)},
    )
    try:
        tenant = s.for_tenant("demo", "jp")
        assert await tenant.put(exchange(request_id="before"))
        ports = relay.upstream_ports()
        assert ports
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND client_port = ANY(%s)",
                (ports,),
            ).fetchall()
        assert ended and all(ok for (ok,) in ended)
        await asyncio.sleep(0.3)  # the server is back at once; the connections are gone
        assert await tenant.put(exchange(request_id="after"))
        assert await tenant.put(exchange(request_id="later"))
        assert s.region("jp").count("demo") == 3
        assert s.region("jp").health.state()[0]
    finally:
        await s.close()
        relay.stop()


async def test_records_sealed_before_request_ids_were_bound_are_resealed_on_postgres(
    tmp_path: Path, sink: Sink, pg_schema: str
) -> None:
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from sqlalchemy import select, update

    from sekisho.store import RecordUnreadable
    from sekisho.store.crypto import record_aad_v1
    from sekisho.store.schema import records

    regions = {"jp": Region("JP", url(pg_schema))}
    s = await Stores.open(
        regions, tmp_path, audit=sink, tenants={"demo": Tenant("jp", FULL_7)}, migrate=True
    )
    tenant = s.for_tenant("demo", "jp")
    for rid in ("req-a", "req-b"):
        await tenant.put(exchange(request_id=rid, prompt=f"prompt of {rid}"))
    jp = s.region("jp")
    with jp.records_db.begin() as conn:  # as an older gateway sealed them (record/v1)
        for row in conn.execute(select(records)).all():
            keys = jp.keys_at(row.tenant, row.key_generation)
            plain = keys.open(row.record_id, "prompt", row.prompt, request_id=row.request_id)
            nonce = os.urandom(12)
            aad = record_aad_v1("jp", "demo", row.record_id, "prompt")
            old = nonce + AESGCM(keys.seal_key).encrypt(nonce, plain, aad)
            conn.execute(
                update(records).where(records.c.record_id == row.record_id).values(prompt=old)
            )
    assert await s.reseal_records("jp", actor="ops") == (2, [])
    assert await s.reseal_records("jp", actor="ops") == (0, [])
    with jp.records_db.begin() as conn:
        conn.execute(update(records).where(records.c.request_id == "req-a").values(request_id="x"))
        conn.execute(
            update(records).where(records.c.request_id == "req-b").values(request_id="req-a")
        )
    with pytest.raises(RecordUnreadable):
        await tenant.kept("req-a")
    await s.close()


async def test_the_stores_sessions_are_named_in_pg_stat_activity(pg_schema: str) -> None:
    """An operator watching or ending sessions (pg_stat_activity, pg_terminate_backend) tells
    the store's apart from every other client's; a name in the URL is kept."""
    for given, want in ((None, "sekisho-records-jp"), ("ops-console", "ops-console")):
        extra = f"&application_name={given}" if given else ""
        records_at = locate("jp", url(pg_schema) + extra, Path("/nonexistent"))[0]
        engine = create(records_at)
        try:
            with engine.connect() as conn:
                name = conn.execute(
                    text(
                        "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                    )
                ).scalar()
        finally:
            engine.dispose()
        assert name == want
