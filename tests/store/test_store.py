"""The store keeps what the retention says, encrypted, in the home region only."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from sekisho.errors import ConfigError
from sekisho.store import (
    ErasureIncomplete,
    KeyProviderError,
    RecordUnreadable,
    RetentionSpec,
    StoreError,
    StoreMisconfigured,
    Stores,
    TenantKeyDestroyed,
    TenantKeyMissing,
    subjects,
    validate_regions,
)
from sekisho.store.schema import records
from sekisho.types import Level
from store.helpers import FULL_7, Region, Sink, Tenant, exchange

PHONE = subjects.Subject("demo", "PHONE_JP", "０９０－１２３４－５６７８")


def raw_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    return data + (wal.read_bytes() if wal.exists() else b"")


async def test_full_mode_content_is_never_on_disk_in_clear(stores: Stores, tmp_path: Path) -> None:
    ref = await stores.for_tenant("demo", "jp").put(exchange(prompt="極秘の合併計画 ZEBRA-7"))
    assert ref is not None and ref.mode == "full" and ref.region == "jp"
    disk = raw_bytes(tmp_path / "store-jp.db")
    assert b"ZEBRA-7" not in disk and b"090-1234-5678" not in disk
    doc = await subjects.export(stores, PHONE, actor="dpo@example.jp")
    assert doc["records"][0]["prompt"][0]["content"] == "極秘の合併計画 ZEBRA-7"
    assert doc["records"][0]["output"] == "承知しました"


async def test_metadata_mode_keeps_no_content_only_keyed_hashes(stores: Stores) -> None:
    tenant = stores.for_tenant("demo", "jp")
    ex = exchange(retention=RetentionSpec(mode="metadata", days=30))
    ref = await tenant.put(ex)
    assert ref is not None and ref.mode == "metadata"
    (row,) = stores.region("jp").records_by_id("demo", [ref.record_id])
    assert row.prompt is None and row.output is None and row.pseudonym_map is None
    assert row.prompt_hash == tenant.keyed_hash(ex.prompt)
    assert (row.prompt_tokens, row.completion_tokens, row.model) == (12, 5, "gpt-4o")


async def test_none_mode_and_never_keep_restricted_store_nothing(stores: Stores) -> None:
    tenant = stores.for_tenant("demo", "jp")
    assert await tenant.put(exchange(retention=RetentionSpec(mode="none"))) is None
    spec = RetentionSpec.model_validate(
        {"mode": "full", "days": 7, "levels": {"機密性3": {"mode": "none"}}}
    )
    assert await tenant.put(exchange(retention=spec, level=Level.RESTRICTED)) is None
    assert stores.region("jp").count() == 0


async def test_records_expire_by_the_level_rule(stores: Stores) -> None:
    spec = RetentionSpec.model_validate(
        {"mode": "full", "days": 7, "levels": {"internal": {"days": 30}}}
    )
    now = datetime(2025, 4, 1, tzinfo=UTC)
    ref = await stores.for_tenant("demo", "jp").put(exchange(retention=spec, created_at=now))
    assert ref is not None and ref.expires_at == now + timedelta(days=30)


async def test_records_stay_in_the_home_region(stores: Stores) -> None:
    await stores.for_tenant("demo", "jp").put(exchange())
    assert stores.region("jp").count() == 1 and stores.region("eu").count() == 0


async def test_keyed_hash_is_per_tenant_and_in_the_ledgers_format(stores: Stores) -> None:
    a = stores.for_tenant("demo", "jp").keyed_hash(b"prompt")
    b = stores.for_tenant("acme", "jp").keyed_hash(b"prompt")
    assert a.startswith("hmac-sha256:") and len(a) == 12 + 64 and a != b
    assert a == stores.for_tenant("demo", "jp").keyed_hash(b"prompt")


async def test_a_ciphertext_moved_to_another_record_fails_authentication(stores: Stores) -> None:
    tenant = stores.for_tenant("demo", "jp")
    a = await tenant.put(exchange(prompt="first", request_id="a"))
    b = await tenant.put(exchange(prompt="second", request_id="b"))
    assert a and b
    jp = stores.region("jp")
    with jp.records_db.begin() as conn:
        stolen = conn.execute(
            select(records.c.prompt).where(records.c.record_id == a.record_id)
        ).scalar()
        conn.execute(
            update(records).where(records.c.record_id == b.record_id).values(prompt=stolen)
        )
    keys = jp.tenant_keys("demo")
    (row,) = jp.records_by_id("demo", [b.record_id])
    with pytest.raises(RecordUnreadable, match=b.record_id):
        keys.open(row.record_id, "prompt", row.prompt, request_id="b")
    with pytest.raises(RecordUnreadable):  # and the output field's ciphertext is not a prompt
        keys.open(
            a.record_id, "prompt", jp.records_by_id("demo", [a.record_id])[0].output, request_id="a"
        )


async def test_a_record_given_another_requests_id_is_not_that_requests_answer(
    stores: Stores,
) -> None:
    """Records are looked up by request id, which the associated data did not bind: swapping
    two rows' request_id made GET /v1/responses/<A> answer with B's conversation."""
    tenant = stores.for_tenant("demo", "jp")
    a = await tenant.put(exchange(prompt="ALPHA conversation of app one", request_id="req-a"))
    b = await tenant.put(exchange(prompt="BRAVO conversation of app two", request_id="req-b"))
    assert a and b
    kept = await tenant.kept("req-a")
    assert kept is not None and kept.prompt is not None and b"ALPHA" in kept.prompt
    jp = stores.region("jp")
    with jp.records_db.begin() as conn:  # as the auditor did, with sqlite3 on the file
        conn.execute(
            update(records).where(records.c.record_id == a.record_id).values(request_id="x")
        )
        conn.execute(
            update(records).where(records.c.record_id == b.record_id).values(request_id="req-a")
        )
        conn.execute(
            update(records).where(records.c.record_id == a.record_id).values(request_id="req-b")
        )
    with pytest.raises(RecordUnreadable, match=rf"{b.record_id} \(.*\).*another record or request"):
        await tenant.kept("req-a")
    with pytest.raises(RecordUnreadable, match=a.record_id):
        await tenant.kept("req-b")


async def test_a_record_sealed_before_request_ids_were_bound_still_reads(stores: Stores) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from sekisho.store.crypto import record_aad_v1

    tenant = stores.for_tenant("demo", "jp")
    ref = await tenant.put(exchange(prompt="old", request_id="req-old", output=None))
    assert ref
    keys = await tenant.keys()
    nonce = os.urandom(12)
    aad = record_aad_v1("jp", "demo", ref.record_id, "prompt")
    old = nonce + AESGCM(keys.seal_key).encrypt(nonce, b"sealed by v1", aad)
    jp = stores.region("jp")
    with jp.records_db.begin() as conn:
        conn.execute(update(records).where(records.c.record_id == ref.record_id).values(prompt=old))
    kept = await tenant.kept("req-old")
    assert kept is not None and kept.prompt == b"sealed by v1"


async def test_corrupted_ciphertext_is_a_clear_error_never_garbage(stores: Stores) -> None:
    ref = await stores.for_tenant("demo", "jp").put(exchange())
    assert ref
    jp = stores.region("jp")
    (row,) = jp.records_by_id("demo", [ref.record_id])
    flipped = bytearray(row.prompt)
    flipped[20] ^= 1
    with jp.records_db.begin() as conn:
        conn.execute(
            update(records)
            .where(records.c.record_id == ref.record_id)
            .values(prompt=bytes(flipped))
        )
    with pytest.raises(
        RecordUnreadable, match=rf"{ref.record_id} \(prompt\).*failed authentication"
    ):
        await stores.for_tenant("demo", "jp").kept("req-1")
    doc = await subjects.export(stores, PHONE, actor="dpo")  # listed, not exported
    assert doc["records"] == [] and doc["unreadable"][0]["record_id"] == ref.record_id
    assert "failed authentication" in doc["unreadable"][0]["reason"]


async def test_wrong_key_encryption_key_is_refused_by_name(tmp_path: Path, sink: Sink) -> None:
    s = await Stores.open(
        {"jp": Region("JP")}, tmp_path, audit=sink, tenants={"demo": Tenant("jp", FULL_7)}
    )
    await s.close()
    other = tmp_path / "other"
    s2 = await Stores.open({"jp": Region("JP")}, other, audit=sink)
    await s2.close()
    shutil.copy(other / "keys" / "region-jp.kek", tmp_path / "keys" / "region-jp.kek")
    with pytest.raises(KeyProviderError, match=r"tenant .demo.*cannot be unwrapped.*region-jp"):
        await Stores.open(
            {"jp": Region("JP")}, tmp_path, audit=sink, tenants={"demo": Tenant("jp")}
        )


def forget_keys(keyring: Path, tenant: str) -> None:
    """What a keyring lost, or restored from a backup older than the tenant, looks like."""
    conn = sqlite3.connect(keyring)
    with conn:
        conn.execute("DELETE FROM tenant_keys WHERE tenant = ?", (tenant,))
    conn.close()


async def test_a_tenant_key_missing_from_the_keyring_is_never_made_again(
    tmp_path: Path, sink: Sink
) -> None:
    """Even with no record kept (retention none: only its ledger hashes used the key), a
    tenant whose key the keyring lost is refused by name; only a tenant deletion, giving its
    data up, lets it start again under a new key."""
    regions, none = {"jp": Region("JP")}, {"demo": Tenant("jp", RetentionSpec(mode="none"))}
    s = await Stores.open(regions, tmp_path, audit=sink, tenants=none)
    first = s.for_tenant("demo", "jp").keyed_hash(b"prompt")
    await s.close()
    keyring = tmp_path / "keys" / "keyring-jp.db"
    forget_keys(keyring, "demo")
    with pytest.raises(TenantKeyMissing) as refused:
        await Stores.open(regions, tmp_path, audit=sink, tenants=none)
    assert "tenant 'demo' in region 'jp' (generation 1)" in refused.value.message
    assert (
        str(keyring) in refused.value.message and "sekisho tenant delete" in refused.value.message
    )
    assert refused.value.code == "store_key_missing"

    s = await Stores.open(regions, tmp_path, audit=sink)  # as `sekisho tenant delete` opens
    assert await s.holds("demo")
    await s.delete_tenant("demo", actor="dpo@example.jp")
    assert sink.events[-1][1:] == (
        "store.data_key_destroyed",
        "tenant:demo@jp",
        {"generations": "", "kek": s.region("jp").keys.description, "lost_generations": "1"},
    )
    await s.close()
    s = await Stores.open(regions, tmp_path, audit=sink, tenants=none)
    keys = await s.for_tenant("demo", "jp").keys()
    assert keys.generation == 2 and keys.keyed_hash(b"prompt") != first
    await s.close()


async def test_a_store_from_before_the_notes_is_noted_when_opened(
    tmp_path: Path, sink: Sink
) -> None:
    """Records sealed under a key the keyring lost are refused even where the records database
    never noted the key; a keyring it can read is noted at once, for a loss later."""
    regions, tenants = {"jp": Region("JP")}, {"demo": Tenant("jp", FULL_7)}
    s = await Stores.open(regions, tmp_path, audit=sink, tenants=tenants)
    await s.for_tenant("demo", "jp").put(exchange())
    await s.close()
    forget_keys(tmp_path / "store-jp.db", "demo")  # no note, as before this version
    s = await Stores.open(regions, tmp_path, audit=sink, tenants=tenants)  # noted again
    await s.close()
    forget_keys(tmp_path / "keys" / "keyring-jp.db", "demo")
    with pytest.raises(TenantKeyMissing, match="tenant 'demo' in region 'jp'"):
        await Stores.open(regions, tmp_path, audit=sink, tenants=tenants)
    forget_keys(tmp_path / "store-jp.db", "demo")  # neither notes: the record still tells
    with pytest.raises(TenantKeyMissing, match="tenant 'demo' in region 'jp'"):
        await Stores.open(regions, tmp_path, audit=sink, tenants=tenants)
    s = await Stores.open(regions, tmp_path, audit=sink)
    with pytest.raises(TenantKeyMissing):  # "0 records" would answer the person falsely
        await subjects.find(s, PHONE, actor="dpo")
    await s.close()


async def test_a_missing_key_file_is_made_only_for_a_region_never_used(
    tmp_path: Path, sink: Sink
) -> None:
    regions = {"jp": Region("JP")}
    s = await Stores.open(regions, tmp_path, audit=sink, tenants={"demo": Tenant("jp")})
    await s.close()
    kek = tmp_path / "keys" / "region-jp.kek"
    kek.unlink()
    with pytest.raises(KeyProviderError, match=f"no key file at {kek}.*keyring-jp.db"):
        await Stores.open(regions, tmp_path, audit=sink, tenants={"demo": Tenant("jp")})
    assert not kek.exists()
    fresh = tmp_path / "fresh"
    s = await Stores.open(regions, fresh, audit=sink, tenants={"demo": Tenant("jp")})
    await s.close()
    assert (fresh / "keys" / "region-jp.kek").exists()


async def test_key_file_is_created_private_and_refused_when_readable(
    tmp_path: Path, sink: Sink
) -> None:
    s = await Stores.open({"jp": Region("JP")}, tmp_path, audit=sink)
    await s.close()
    kek = tmp_path / "keys" / "region-jp.kek"
    assert kek.stat().st_mode & 0o777 == 0o600
    os.chmod(kek, 0o644)
    with pytest.raises(
        KeyProviderError, match=r"readable by group or others \(mode 0644\).*chmod 600"
    ):
        await Stores.open({"jp": Region("JP")}, tmp_path, audit=sink)


async def test_local_key_use_is_logged_with_a_kms_warning(
    tmp_path: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    s = await Stores.open({"jp": Region("JP")}, tmp_path, audit=sink)
    await s.close()
    assert any("production should use a KMS" in r.getMessage() for r in caplog.records)


async def test_a_store_of_another_region_stops_start_up(tmp_path: Path, sink: Sink) -> None:
    s = await Stores.open({"jp": Region("JP")}, tmp_path, audit=sink)
    await s.close()
    shutil.copy(tmp_path / "store-jp.db", tmp_path / "store-kr.db")
    with pytest.raises(StoreMisconfigured, match=r"belongs to region 'jp'.*region 'kr'"):
        await Stores.open({"kr": Region("KR")}, tmp_path, audit=sink)


async def test_a_region_moved_to_another_country_stops_start_up(tmp_path: Path, sink: Sink) -> None:
    s = await Stores.open({"jp": Region("JP")}, tmp_path, audit=sink)
    await s.close()
    with pytest.raises(StoreMisconfigured, match=r"created for country JP.*now says US"):
        await Stores.open({"jp": Region("US")}, tmp_path, audit=sink)


def test_two_regions_on_one_database_and_schema_are_a_config_problem(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/test"
    problems = validate_regions(
        {"jp": Region("JP", url), "kr": Region("KR", url + "?schema=sekisho")}, tmp_path, "c.yaml"
    )
    assert [str(p) for p in problems] == [
        "c.yaml: regions.kr.store: postgresql://127.0.0.1:5432/test schema sekisho is already the "
        "store of region 'jp'; a store never holds another region's data: give each region its "
        "own database or ?schema="
    ]
    assert not validate_regions(
        {"jp": Region("JP", url), "kr": Region("KR", url + "?schema=kr")}, tmp_path
    )


def test_shared_keys_and_unsafe_names_are_config_problems(tmp_path: Path) -> None:
    shared = {"type": "local", "path": str(tmp_path / "k.kek")}
    problems = validate_regions(
        {"jp": Region("JP", keys=shared), "kr": Region("KR", keys=shared), "../x": Region("JP")},
        tmp_path,
    )
    text = [str(p) for p in problems]
    assert any("regions.kr.keys" in t and "already region 'jp'" in t for t in text)
    assert any("regions.../x.store" in t and "letters, digits" in t for t in text)


def test_a_store_file_of_its_own_is_checked_like_any_store(tmp_path: Path) -> None:
    """``store: sqlite:///PATH`` puts a region's records on a volume of its own; it may not be
    another region's store, nor one of the gateway's own files."""
    own = tmp_path / "volumes" / "jp" / "store.db"
    assert not validate_regions({"jp": Region("JP", f"sqlite:///{own}")}, tmp_path)
    problems = validate_regions(
        {
            "jp": Region("JP"),
            "kr": Region("KR", f"sqlite:///{tmp_path}/store-jp.db"),  # jp's default file
            "us": Region("US", "sqlite:///"),
            "eu": Region("DE", f"sqlite:///{tmp_path}/ledger.sqlite3"),
            "sg": Region("SG", f"sqlite:///{tmp_path}/keys/x.db"),
        },
        tmp_path,
        "c.yaml",
    )
    text = "\n".join(str(p) for p in problems)
    assert "regions.kr.store" in text and "already the store of region 'jp'" in text
    assert "regions.us.store: sqlite:///PATH must name a database file" in text
    assert "regions.eu.store" in text and "gateway's own files" in text
    assert "regions.sg.store" in text
    assert len(problems) == 4, text


async def test_stores_open_refuses_a_bad_region_config(tmp_path: Path, sink: Sink) -> None:
    with pytest.raises(ConfigError, match=r"regions\.jp\.keys"):
        await Stores.open({"jp": Region("JP", keys={"type": "kms"})}, tmp_path, audit=sink)


async def test_full_disk_is_a_clear_error_and_leaves_no_partial_record(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    jp = stores.region("jp")

    def disk_full(conn: object, ids: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jp, "_insert_identifiers", disk_full)
    assert jp.health.state() == (True, "ok")
    with pytest.raises(StoreError, match=r"region 'jp' is full") as refused:
        await stores.for_tenant("demo", "jp").put(exchange())
    where = str(jp.records_at.display)
    assert where not in refused.value.message  # the client is not told internal paths
    assert jp.count() == 0
    healthy, why = jp.health.state()  # what /readyz reports, without record ids
    assert not healthy and "is full (no space left" in why and "rec_" not in why
    assert where in why  # the operator is (in /readyz's details)
    monkeypatch.undo()
    assert await stores.for_tenant("demo", "jp").put(exchange()) is not None
    assert jp.health.state() == (True, "ok")  # one durable write and it is healthy again


async def test_sweeper_deletes_expired_records_and_reports_first(
    stores: Stores, sink: Sink
) -> None:
    tenant = stores.for_tenant("demo", "jp")
    old = datetime.now(UTC) - timedelta(days=8)
    await tenant.put(exchange(created_at=old))
    fresh = await tenant.put(exchange())
    report = await stores.sweep_once()
    assert report == {"jp": {"demo": 1}}
    assert stores.region("jp").count() == 1 and fresh
    assert sink.events[-1][:3] == (
        "sekisho-retention-sweeper",
        "store.retention_delete",
        "tenant:demo@jp",
    )
    assert await subjects.find(stores, PHONE, actor="dpo") != []  # index of the kept one survives


async def test_legal_hold_pauses_the_sweeper_for_that_tenant_only(stores: Stores) -> None:
    old = datetime.now(UTC) - timedelta(days=400)
    await stores.for_tenant("demo", "jp").put(exchange(created_at=old))
    await stores.for_tenant("acme", "jp").put(exchange("acme", created_at=old))
    stores.set_retention("demo", RetentionSpec(mode="full", days=7, legal_hold=True))
    assert await stores.sweep_once() == {"jp": {"acme": 1}}
    assert stores.region("jp").tenants() == {"demo": 1}
    with pytest.raises(StoreError, match="legal hold"):
        await stores.delete_tenant("demo", actor="admin")


async def test_nothing_is_deleted_when_the_deletion_cannot_be_recorded(
    stores: Stores, sink: Sink
) -> None:
    await stores.for_tenant("demo", "jp").put(
        exchange(created_at=datetime.now(UTC) - timedelta(days=9))
    )
    sink.fail = True
    with pytest.raises(RuntimeError):
        await stores.sweep_once()
    with pytest.raises(RuntimeError):
        await stores.delete_tenant("demo", actor="admin")
    assert stores.region("jp").count() == 1
    assert stores.region("jp").tenant_keys("demo")  # key not destroyed either


async def test_deleted_tenant_cannot_be_read_even_from_a_copy_of_the_store(
    tmp_path: Path, sink: Sink
) -> None:
    regions = {"jp": Region("JP")}
    tenants = {"demo": Tenant("jp", FULL_7), "acme": Tenant("jp", FULL_7)}
    s = await Stores.open(regions, tmp_path, audit=sink, tenants=tenants)
    await s.for_tenant("demo", "jp").put(exchange())
    await s.for_tenant("acme", "jp").put(exchange("acme"))
    await s.close()
    backup = tmp_path / "backup.db"  # a plain file copy, as a careless backup would be
    shutil.copy(tmp_path / "store-jp.db", backup)
    assert not (tmp_path / "store-jp.db-wal").exists()

    s = await Stores.open(regions, tmp_path, audit=sink, tenants=tenants)
    assert await s.delete_tenant("demo", actor="admin@example.jp") == {"jp": 1}
    assert sink.actions()[-2:] == ["store.data_key_destroyed", "store.tenant_records_deleted"]
    await s.close()
    keyring = raw_bytes(tmp_path / "keys" / "keyring-jp.db")
    assert b"sekisho:v1:" in keyring  # acme's key is still there ...

    shutil.copy(backup, tmp_path / "store-jp.db")  # ... and demo's records come back from backup
    s = await Stores.open(regions, tmp_path, audit=sink, tenants={"acme": Tenant("jp", FULL_7)})
    jp = s.region("jp")
    assert jp.tenants() == {"demo": 1, "acme": 1}
    (row,) = jp.records_by_id("demo", [r for r in _ids(jp, "demo")])
    with pytest.raises(TenantKeyDestroyed, match=r"destroyed on .* by admin@example.jp") as gone:
        jp.keys_at("demo", row.key_generation)
    # Permanent: 410 Gone, which no client retries (a 503 the SDKs retried).
    assert gone.value.status == 410 and gone.value.headers == {"x-should-retry": "false"}
    acme = subjects.Subject("acme", "PHONE_JP", "09012345678")
    assert (await subjects.export(s, acme, actor="dpo"))["records"][0]["output"] == "承知しました"
    await s.close()


def _ids(jp: object, tenant: str) -> list[str]:
    from sekisho.store.region import RegionStore

    assert isinstance(jp, RegionStore)
    with jp.records_db.connect() as conn:
        return [
            r.record_id
            for r in conn.execute(select(records.c.record_id).where(records.c.tenant == tenant))
        ]


async def test_rotation_rewraps_data_keys_without_touching_records(
    tmp_path: Path, sink: Sink
) -> None:
    regions = {"jp": Region("JP")}
    s = await Stores.open(regions, tmp_path, audit=sink, tenants={"demo": Tenant("jp", FULL_7)})
    await s.for_tenant("demo", "jp").put(exchange())
    ids = _ids(s.region("jp"), "demo")
    (before,) = s.region("jp").records_by_id("demo", ids)
    assert await s.rotate_keys("jp", actor="ops") == (2, 1)
    assert s.region("jp").kek_versions() == {2: 1}
    assert sink.events[-1][1:3] == ("store.kek_rotated", "region:jp")
    await s.close()
    kek = json.loads((tmp_path / "keys" / "region-jp.kek").read_text())
    assert kek["current"] == 2
    s = await Stores.open(regions, tmp_path, audit=sink)
    (after,) = s.region("jp").records_by_id("demo", ids)
    assert (after.prompt, after.output) == (before.prompt, before.output)  # not re-encrypted
    doc = await subjects.export(s, PHONE, actor="dpo")
    assert doc["records"][0]["output"] == "承知しました"
    await s.close()


def _holding_a_snapshot(path: Path) -> sqlite3.Connection:
    """A reader in the middle of a read transaction, as `sqlite3 FILE ".backup DEST"` is."""
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
    return reader


async def test_an_erasure_a_running_backup_blocks_is_reported_incomplete_not_success(
    tmp_path: Path, sink: Sink
) -> None:
    """A reader's snapshot (a backup running, as operations.md recommends) kept the TRUNCATE
    checkpoint from copying the zeroed pages back: the deleted ciphertext stayed in the
    database file while the deletion said it was done."""
    regions = {"jp": Region("JP")}
    tenants = {"demo": Tenant("jp", FULL_7)}
    s = await Stores.open(regions, tmp_path, audit=sink, tenants=tenants, erase_wait=0.3)
    counted: list[tuple[str, str]] = []
    s.on_erasure_incomplete = lambda region, store: counted.append((region, store))
    ref = await s.for_tenant("demo", "jp").put(exchange())
    assert ref is not None
    (row,) = s.region("jp").records_by_id("demo", [ref.record_id])
    cipher = row.prompt[:32]
    # The record reaches the database file itself (as it does with any later checkpoint).
    with s.region("jp").records_db.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    assert cipher in (tmp_path / "store-jp.db").read_bytes()

    reader = _holding_a_snapshot(tmp_path / "store-jp.db")
    with pytest.raises(ErasureIncomplete, match=r"a running backup") as caught:
        await subjects.delete(s, PHONE, actor="dpo", ticket="APPI-9")
    assert "1 record(s) were deleted, but the erasure is incomplete" in str(caught.value)
    assert "sekisho db checkpoint" in str(caught.value)
    assert sink.actions()[-2:] == ["store.subject_delete", "store.erasure_incomplete"]
    details = sink.events[-1][3]
    assert details["act"] == "store.subject_delete" and details["complete"] is False
    assert details["store"] == "records" and details["done"] == 1
    assert counted == [("jp", "records")]
    assert cipher in (tmp_path / "store-jp.db").read_bytes()  # what the message warns of
    reader.close()

    from sekisho.store.region import empty_log

    jp = s.region("jp")
    empty_log(jp.records_db, jp.records_at, 1.0, "deleted records")  # `sekisho db checkpoint`
    assert cipher not in raw_bytes(tmp_path / "store-jp.db")
    await s.close()


async def test_a_tenant_delete_a_backup_blocks_still_deletes_all_and_says_it_is_incomplete(
    tmp_path: Path, sink: Sink
) -> None:
    regions = {"jp": Region("JP")}
    s = await Stores.open(
        regions, tmp_path, audit=sink, tenants={"demo": Tenant("jp", FULL_7)}, erase_wait=0.2
    )
    await s.for_tenant("demo", "jp").put(exchange())
    reader = _holding_a_snapshot(tmp_path / "keys" / "keyring-jp.db")
    with pytest.raises(ErasureIncomplete, match=r"destroyed data key.*keyring-jp.db"):
        await s.delete_tenant("demo", actor="admin")
    reader.close()
    assert sink.actions()[-3:] == [
        "store.data_key_destroyed",
        "store.erasure_incomplete",
        "store.tenant_records_deleted",
    ]
    assert sink.events[-2][3]["store"] == "keyring"
    assert s.region("jp").count("demo") == 0  # the records went all the same
    await s.close()


async def test_a_sweep_a_backup_blocks_is_logged_recorded_and_counted(
    tmp_path: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    regions = {"jp": Region("JP")}
    s = await Stores.open(
        regions, tmp_path, audit=sink, tenants={"demo": Tenant("jp", FULL_7)}, erase_wait=0.2
    )
    counted: list[tuple[str, str]] = []
    s.on_erasure_incomplete = lambda region, store: counted.append((region, store))
    await s.for_tenant("demo", "jp").put(exchange(created_at=datetime.now(UTC) - timedelta(days=9)))
    reader = _holding_a_snapshot(tmp_path / "store-jp.db")
    assert await s.sweep_once() == {"jp": {"demo": 1}}
    reader.close()
    assert sink.actions()[-2:] == ["store.retention_delete", "store.erasure_incomplete"]
    assert counted == [("jp", "records")]
    assert any(
        r.levelname == "ERROR" and "erasure incomplete" in r.getMessage() for r in caplog.records
    )
    await s.close()


async def test_each_record_refused_is_told_with_its_region_and_why(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the gateway counts in sekisho_store_refusals_total: a record a hanging store could
    not make durable by its deadline, and every record of a commit that failed."""
    jp = stores.region("jp")
    told: list[tuple[str, str, int]] = []
    jp.on_refused = lambda region, reason, records: told.append((region, reason, records))
    jp.deadline = 0.2
    holder = sqlite3.connect(jp.records_at.sqlite_path, timeout=1)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the file: the commit waits
    try:
        with pytest.raises(StoreError, match="slow or hanging"):
            await stores.for_tenant("demo", "jp").put(exchange(request_id="req-hung"))
    finally:
        holder.rollback()
        holder.close()
    assert told == [("jp", "deadline", 1)]

    def disk_full(conn: object, ids: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jp, "_insert_identifiers", disk_full)
    with pytest.raises(StoreError, match="is full"):
        await stores.for_tenant("demo", "jp").put(exchange(request_id="req-full"))
    assert told[1:] == [("jp", "storage_error", 1)]
