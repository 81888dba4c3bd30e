"""The same store on PostgreSQL: migrations, region markers, writes, deletion."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

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


async def test_postgres_store_of_another_region_is_refused(
    tmp_path: Path, sink: Sink, pg_schema: str
) -> None:
    s = await Stores.open({"jp": Region("JP", url(pg_schema))}, tmp_path, audit=sink, migrate=True)
    await s.close()
    with pytest.raises(StoreMisconfigured, match="belongs to region 'jp'"):
        await Stores.open({"kr": Region("KR", url(pg_schema))}, tmp_path, audit=sink, migrate=True)
