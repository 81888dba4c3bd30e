"""The command line answers data-subject requests and deletes tenants, recording who asked."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

import pytest
import yaml

from harness import example_config
from sekisho.store import Stores, database
from sekisho.store.cli import main
from sekisho.store.errors import StoreMisconfigured
from store.helpers import FULL_7, Region, Sink, Tenant, exchange


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    raw = example_config()
    raw.setdefault("server", {})["data_dir"] = str(tmp_path / "data")
    path = tmp_path / "sekisho.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


async def seed(data_dir: Path) -> None:
    s = await Stores.open(
        {"jp": Region("JP")}, data_dir, audit=Sink(), tenants={"demo": Tenant("jp", FULL_7)}
    )
    await s.for_tenant("demo", "jp").put(exchange(request_id="req-a"))
    await s.for_tenant("demo", "jp").put(
        exchange(request_id="req-b", identifiers=(("EMAIL", "hanako@example.jp"),))
    )
    await s.close()


def audit_lines(config_file: Path) -> list[dict[str, object]]:
    recorded = config_file.parent / "data" / "store-admin.jsonl"
    if not recorded.exists():
        return []
    text = recorded.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def run(config_file: Path, *argv: str) -> int:
    return main([*argv[:2], "--config", str(config_file), *argv[2:]])


def test_db_upgrade_creates_each_regions_store(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config_file, "db", "upgrade") == 0
    out = capsys.readouterr().out
    assert "region jp records" in out and "empty -> 0001" in out
    assert run(config_file, "db", "upgrade") == 0
    assert "up to date" in capsys.readouterr().out


def test_the_known_head_is_the_newest_migration_and_an_up_to_date_store_skips_alembic(
    config_file: Path,
) -> None:
    # database.HEAD lets a gateway whose stores are current never import Alembic; a new
    # migration that forgets to move it would make every start refuse the store.
    assert database.alembic_head() == database.HEAD
    assert database.alembic_revisions() == database.REVISIONS
    assert run(config_file, "db", "upgrade") == 0
    code = (
        "import sys; from pathlib import Path; from sekisho.store import database; "
        f"at = database.locate('jp', 'sqlite', Path({str(config_file.parent / 'data')!r}))[0]; "
        "print(database.upgrade(database.create(at), at)); "
        "print('alembic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["('0001', '0001')", "False"]


def test_a_store_a_newer_sekisho_migrated_is_refused_and_never_migrated_back(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A rollback after an upgrade, or an old process restarted while a newer one already
    # migrated: the store is at a revision this sekisho has no script for. Alembic's own
    # "Can't locate revision" traceback said nothing of what happened or what to do.
    assert run(config_file, "db", "upgrade") == 0
    capsys.readouterr()
    data_dir = config_file.parent / "data"
    db = data_dir / "store-jp.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sekisho_store_version SET version_num = '0999'")
    conn.close()

    assert run(config_file, "db", "upgrade") == 1
    err = capsys.readouterr().err
    assert "region 'jp'" in err and "schema revision 0999" in err
    assert "a newer version of sekisho migrated it" in err
    assert "backup from before the upgrade" in err and "Traceback" not in err
    with pytest.raises(StoreMisconfigured, match="a newer version of sekisho migrated it"):
        asyncio.run(seed(data_dir))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM sekisho_store_version").fetchall() == [
            ("0999",)
        ]
    conn.close()


def test_processes_starting_on_one_fresh_store_at_once_all_find_it_migrated(
    tmp_path: Path,
) -> None:
    # Two gateways (or a gateway and `sekisho db upgrade`) on a fresh data directory: one
    # migrates, the others wait and find it done; none fails on "table already exists".
    start = time.time() + 1.5
    code = (
        "import sys, time; from pathlib import Path; from sekisho.store import database; "
        f"at = database.locate('jp', 'sqlite', Path({str(tmp_path)!r}))[0]; "
        "engine = database.create(at); "
        f"time.sleep(max(0, {start} - time.time())); "
        "print(database.upgrade(engine, at)[1])"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=PIPE, stderr=PIPE) for _ in range(6)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [err.decode() for _, err in results]
    assert {out.decode().strip() for out, _ in results} == {database.HEAD}


def test_subject_find_export_restrict_delete(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(seed(config_file.parent / "data"))
    base = ["--tenant", "demo", "--actor", "dpo@example.jp"]
    assert (
        run(
            config_file,
            "subject",
            "find",
            *base,
            "--phone",
            "０９０－１２３４－５６７８",
        )
        == 0
    )
    assert "1 record(s) of tenant demo mention this PHONE_JP" in capsys.readouterr().out
    out = config_file.parent / "export.json"
    assert (
        run(
            config_file,
            "subject",
            "export",
            *base,
            "--email",
            "Hanako@Example.jp",
            "--out",
            str(out),
        )
        == 0
    )
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert [r["request_id"] for r in doc["records"]] == ["req-b"]
    assert os.stat(out).st_mode & 0o777 == 0o600
    os.chmod(out, 0o644)  # an existing, world-readable file is written 0600 too, as it says
    assert run(config_file, "subject", "export", *base, "--email", "hanako@example.jp",
               "--out", str(out)) == 0  # fmt: skip
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert run(config_file, "subject", "restrict", *base, "--email", "hanako@example.jp") == 0
    assert (
        run(
            config_file,
            "subject",
            "export",
            *base,
            "--email",
            "hanako@example.jp",
            "--out",
            str(out),
        )
        == 0
    )
    assert json.loads(out.read_text(encoding="utf-8"))["records"] == []
    assert run(config_file, "subject", "delete", *base, "--phone", "09012345678") == 2  # no --yes
    assert run(config_file, "subject", "delete", *base, "--phone", "09012345678", "--yes") == 0
    assert "deleted 1 record(s)" in capsys.readouterr().out
    acts = audit_lines(config_file)
    assert [a["action"] for a in acts] == [
        "store.subject_find",
        "store.subject_export",
        "store.subject_export",
        "store.subject_restrict",
        "store.subject_export",
        "store.subject_delete",
    ]
    assert all(a["actor"] == "dpo@example.jp" for a in acts)
    assert "hanako" not in json.dumps(acts) and "5678" not in json.dumps(acts)


def test_subject_commands_need_one_identifier(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(seed(config_file.parent / "data"))
    assert run(config_file, "subject", "find", "--tenant", "demo", "--actor", "x") == 1
    assert "exactly one identifier" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(config_file, "subject", "find", "--tenant", "demo", "--email", "a@b.jp")  # no --actor


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--my-number", "12", "12 digits"),
        ("--my-number", "123456789012", "check digit"),  # 123456789018 is the valid one
        ("--phone", "1", "10 or 11 digits"),
        ("--email", "notanemail", "local@domain"),
        ("--type", "FOO", "not a finding type"),
    ],
)
def test_an_identifier_that_can_match_nothing_is_an_error_not_zero_records(
    config_file: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, says: str
) -> None:
    """Each of these answered "0 record(s)", exit 0, and was recorded as a search: a typo in a
    data subject's identifier answered the person falsely."""
    asyncio.run(seed(config_file.parent / "data"))
    given = [flag, value] if flag != "--type" else ["--type", value, "--value", "x"]
    assert run(config_file, "subject", "find", "--tenant", "demo", "--actor", "x", *given) == 1
    err = capsys.readouterr().err
    assert says in err
    assert "nothing was searched" in err or "not a finding type" in err
    recorded = config_file.parent / "data" / "store-admin.jsonl"
    assert not recorded.exists() or not [
        a for a in audit_lines(config_file) if a["action"] == "store.subject_find"
    ]


def test_a_tenant_the_config_does_not_name_is_said_to_be_one(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped tenant finds nothing; "0 records" alone would answer a data subject's
    request falsely."""
    asyncio.run(seed(config_file.parent / "data"))
    args = ["--tenant", "dmeo", "--actor", "dpo@example.jp", "--email", "a@b.jp"]
    assert run(config_file, "subject", "find", *args) == 0
    captured = capsys.readouterr()
    assert "0 record(s)" in captured.out
    assert "warning: tenant 'dmeo' is not in" in captured.err and "demo" in captured.err


def test_tenant_delete_and_key_rotation(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(seed(config_file.parent / "data"))
    assert run(config_file, "keys", "rotate", "--region", "jp", "--actor", "ops") == 0
    assert "KEK version 2" in capsys.readouterr().out
    assert run(config_file, "tenant", "delete", "--tenant", "demo", "--actor", "admin") == 2
    assert (
        run(config_file, "tenant", "delete", "--tenant", "demo", "--actor", "admin", "--yes") == 0
    )
    assert "deleted 2 record(s)" in capsys.readouterr().out
    assert [a["action"] for a in audit_lines(config_file)][-3:] == [
        "store.kek_rotated",
        "store.data_key_destroyed",
        "store.tenant_records_deleted",
    ]
    # Again, or a name with a typo: nothing is there, and it says so instead of "destroyed".
    recorded = len(audit_lines(config_file))
    for tenant in ("demo", "dmeo"):
        args = ["--tenant", tenant, "--actor", "admin", "--yes"]
        assert run(config_file, "tenant", "delete", *args) == 1
        err = capsys.readouterr().err
        assert f"tenant {tenant} has no data key and no record in any region" in err
    assert len(audit_lines(config_file)) == recorded  # nothing more recorded


def test_tenant_delete_refuses_while_a_gateway_serves_the_data_directory(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A running gateway keeps the tenant's data key in memory and went on sealing records
    under the destroyed key: records no subject request could find again."""
    from sekisho import _serving

    data = config_file.parent / "data"
    asyncio.run(seed(data))
    fd = _serving.hold(data)  # what every gateway process holds while it serves
    try:
        args = ["--tenant", "demo", "--actor", "admin", "--yes"]
        assert run(config_file, "tenant", "delete", *args) == 1
        assert "a gateway is serving" in capsys.readouterr().err
    finally:
        os.close(fd)
    assert not _serving.in_use(data)
    assert (
        run(config_file, "tenant", "delete", "--tenant", "demo", "--actor", "admin", "--yes") == 0
    )


def test_an_expired_record_is_not_disclosed_while_it_waits_for_the_sweeper(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gateway refuses a record past its expiry, but subject export decrypted it for up to
    the sweeper's interval: kept "for exactly as long as the retention says" held only there."""
    import sqlite3

    data = config_file.parent / "data"
    asyncio.run(seed(data))
    base = ["--tenant", "demo", "--actor", "dpo@example.jp", "--email", "hanako@example.jp"]
    assert run(config_file, "subject", "find", *base) == 0
    assert "1 record(s)" in capsys.readouterr().out
    conn = sqlite3.connect(data / "store-jp.db")
    with conn:
        conn.execute("UPDATE records SET expires_at = 1000 WHERE request_id = 'req-b'")
    conn.close()
    assert run(config_file, "subject", "find", *base) == 0
    assert "0 record(s)" in capsys.readouterr().out
    out = config_file.parent / "export.json"
    assert run(config_file, "subject", "export", *base, "--out", str(out)) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["records"] == []


def test_a_subject_request_on_a_data_directory_that_is_not_there_makes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It created a ledger and a signing key in the missing directory (an unmounted volume)
    before failing."""
    raw = example_config()
    missing = tmp_path / "not-mounted"
    raw.setdefault("server", {})["data_dir"] = str(missing)
    cfg = tmp_path / "sekisho.yaml"
    cfg.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    base = ["--tenant", "demo", "--actor", "dpo@example.jp", "--email", "a@b.jp"]
    assert run(cfg, "subject", "find", *base) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists()


def test_a_gateway_starting_during_tenant_delete_waits_until_it_is_over(
    config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tenant delete` checked the serving lock and let go of it at once: a gateway started
    during the deletion and made a new data key for the tenant being destroyed. The lock is
    now held for the whole deletion; a gateway starting meanwhile waits for it to end."""
    from sekisho import _serving

    data = config_file.parent / "data"
    asyncio.run(seed(data))
    delete_tenant = Stores.delete_tenant
    seen: dict[str, object] = {}

    async def deleting(self: Stores, tenant: str, *, actor: str) -> dict[str, int]:
        try:
            _serving.hold(data)  # a gateway process starting now
        except _serving.Busy:
            seen["refused"] = True
        else:
            seen["refused"] = False
        waiting = asyncio.ensure_future(_serving.hold_when_free(data, poll=0.01))
        await asyncio.sleep(0.2)
        seen["waited"] = not waiting.done()
        waiting.cancel()
        return await delete_tenant(self, tenant, actor=actor)

    monkeypatch.setattr(Stores, "delete_tenant", deleting)
    args = ["--tenant", "demo", "--actor", "admin", "--yes"]
    assert run(config_file, "tenant", "delete", *args) == 0
    assert "deleted 2 record(s)" in capsys.readouterr().out
    assert seen == {"refused": True, "waited": True}
    fd = _serving.hold(data)  # once it is over, a gateway starts
    os.close(fd)


async def test_a_waiting_gateway_starts_as_soon_as_the_deletion_ends(tmp_path: Path) -> None:
    from sekisho import _serving

    tmp_path.joinpath("data").mkdir()
    data = tmp_path / "data"
    with _serving.exclusively(data) as alone:
        assert alone
        waiting = asyncio.ensure_future(_serving.hold_when_free(data, poll=0.01))
        await asyncio.sleep(0.1)
        assert not waiting.done()
    fd = await asyncio.wait_for(waiting, 2)
    try:
        with _serving.exclusively(data) as alone:
            assert not alone  # and `tenant delete` refuses while it serves
    finally:
        os.close(fd)


def test_db_checkpoint_completes_an_erasure_once_the_backup_lets_go(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    data = config_file.parent / "data"
    asyncio.run(seed(data))
    reader = sqlite3.connect(data / "store-jp.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM records").fetchall()
    # A write after the reader's snapshot: the log cannot be emptied while it holds it.
    writer = sqlite3.connect(data / "store-jp.db", isolation_level=None)
    writer.execute("UPDATE records SET restricted_by = 'x'")
    writer.close()
    assert run(config_file, "db", "checkpoint", "--wait", "0.2", "--actor", "ops") == 1
    err = capsys.readouterr().err
    assert "Erasure incomplete in region 'jp'" in err and "a running backup" in err
    # The attempt is in the ledger, as the erasure it was to complete is: not complete yet.
    (failed,) = [a for a in audit_lines(config_file) if a["details"].get("store") == "records"]
    assert (failed["action"], failed["target"], failed["actor"]) == (
        "store.checkpoint",
        "region:jp",
        "ops",
    )
    assert (
        failed["details"]["complete"] is False and "a running backup" in failed["details"]["reason"]
    )
    reader.close()
    assert run(config_file, "db", "checkpoint", "--actor", "ops") == 0
    assert "region jp records: " in capsys.readouterr().out
    wal = data / "store-jp.db-wal"
    assert not wal.exists() or os.path.getsize(wal) == 0  # emptied (or gone with the last user)
    # Each SQLite database checkpointed says so: what an erasure recorded as incomplete waited for.
    done = [a for a in audit_lines(config_file) if a["action"] == "store.checkpoint"][1:]
    assert {(a["target"], a["details"]["store"], a["details"]["complete"]) for a in done} == {
        ("region:jp", "records", True),
        ("region:jp", "keyring", True),
    }
    assert all(a["details"]["database"].endswith("-jp.db") for a in done)


def test_an_unreadable_record_does_not_block_the_rest_of_an_export(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One altered record made `subject export` fail as a whole, leave the out file empty,
    and still record store.subject_export {"records": N} in the ledger."""
    import sqlite3

    data = config_file.parent / "data"
    asyncio.run(seed(data))

    async def more() -> None:
        s = await Stores.open({"jp": Region("JP")}, data, audit=Sink())
        await s.for_tenant("demo", "jp").put(
            exchange(request_id="req-c", identifiers=(("EMAIL", "hanako@example.jp"),))
        )
        await s.close()

    asyncio.run(more())
    db = sqlite3.connect(data / "store-jp.db")
    with db:
        (prompt,) = db.execute("SELECT prompt FROM records WHERE request_id = 'req-b'").fetchone()
        altered = prompt[:20] + bytes([prompt[20] ^ 1]) + prompt[21:]
        db.execute("UPDATE records SET prompt = ? WHERE request_id = 'req-b'", (altered,))
    db.close()
    out = config_file.parent / "export.json"
    base = ["--tenant", "demo", "--actor", "dpo@example.jp", "--email", "hanako@example.jp"]
    assert run(config_file, "subject", "export", *base, "--out", str(out)) == 3
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert [r["request_id"] for r in doc["records"]] == ["req-c"]
    [bad] = doc["unreadable"]
    assert bad["request_id"] == "req-b" and bad["error"] == "store_record_unreadable"
    assert "failed authentication" in bad["reason"]
    err = capsys.readouterr().err
    assert f"record {bad['record_id']} (request req-b" in err
    assert "1 record(s) that mention this EMAIL are unreadable" in err
    last = audit_lines(config_file)[-1]
    assert last["action"] == "store.subject_export"
    assert last["details"]["records"] == 1 and last["details"]["unreadable"] == 1


def _seal_as_v1(data_dir: Path) -> list[str]:
    """Every field of every record sealed again as sekisho sealed it before request ids were
    bound (associated data record/v1), as a store written by an older gateway holds them."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from sqlalchemy import select, update

    from sekisho.store.crypto import record_aad_v1
    from sekisho.store.schema import records

    async def go() -> list[str]:
        s = await Stores.open({"jp": Region("JP")}, data_dir, audit=Sink())
        jp = s.region("jp")
        with jp.records_db.begin() as conn:
            rows = conn.execute(select(records)).all()
            for row in rows:
                keys = jp.keys_at(row.tenant, row.key_generation)
                values = {}
                for name in ("prompt", "output", "pseudonym_map"):
                    sealed = getattr(row, name)
                    if sealed is None:
                        continue
                    plain = keys.open(row.record_id, name, sealed, request_id=row.request_id)
                    nonce = os.urandom(12)
                    aad = record_aad_v1("jp", row.tenant, row.record_id, name)
                    values[name] = nonce + AESGCM(keys.seal_key).encrypt(nonce, plain, aad)
                conn.execute(
                    update(records).where(records.c.record_id == row.record_id).values(values)
                )
        await s.close()
        return [str(r.request_id) for r in rows]

    return asyncio.run(go())


def _swap_request_ids(data_dir: Path, a: str, b: str) -> None:
    import sqlite3

    db = sqlite3.connect(data_dir / "store-jp.db")
    with db:
        db.execute("UPDATE records SET request_id = 'x' WHERE request_id = ?", (a,))
        db.execute("UPDATE records SET request_id = ? WHERE request_id = ?", (a, b))
        db.execute("UPDATE records SET request_id = ? WHERE request_id = 'x'", (b,))
    db.close()


def _kept(data_dir: Path, request_id: str) -> bytes | None:
    async def go() -> bytes | None:
        s = await Stores.open({"jp": Region("JP")}, data_dir, audit=Sink())
        try:
            kept = await s.for_tenant("demo", "jp").kept(request_id)
            return kept.prompt if kept is not None else None
        finally:
            await s.close()

    return asyncio.run(go())


def test_key_rotation_binds_records_sealed_before_request_ids_to_theirs(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records sealed under record/v1 could be given another request's id unnoticed until they
    expired. `keys rotate` seals them again bound to their request id: after it none is left,
    and a swap of two records' request ids is detected."""
    from sekisho.store import RecordUnreadable

    data = config_file.parent / "data"
    asyncio.run(seed(data))
    assert sorted(_seal_as_v1(data)) == ["req-a", "req-b"]
    _swap_request_ids(data, "req-a", "req-b")
    assert _kept(data, "req-a") is not None  # a v1 record: the swap goes unseen
    _swap_request_ids(data, "req-a", "req-b")  # as it was

    assert run(config_file, "keys", "rotate", "--region", "jp", "--actor", "ops") == 0
    out = capsys.readouterr().out
    assert "re-sealed 2 record(s)" in out
    resealed = audit_lines(config_file)[-1]
    assert (resealed["action"], resealed["target"], resealed["actor"]) == (
        "store.records_resealed",
        "region:jp",
        "ops",
    )
    assert resealed["details"] == {"records_resealed": 2, "records_unreadable": 0}

    # Every field now opens only as its own request's (record/v2).
    async def opens_as_v1() -> bool:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from sqlalchemy import select

        from sekisho.store.crypto import record_aad_v1
        from sekisho.store.schema import records

        s = await Stores.open({"jp": Region("JP")}, data, audit=Sink())
        jp = s.region("jp")
        with jp.records_db.connect() as conn:
            rows = conn.execute(select(records)).all()
        any_v1 = False
        for row in rows:
            keys = jp.keys_at(row.tenant, row.key_generation)
            aad = record_aad_v1("jp", row.tenant, row.record_id, "prompt")
            try:
                AESGCM(keys.seal_key).decrypt(row.prompt[:12], row.prompt[12:], aad)
                any_v1 = True
            except InvalidTag:
                pass
        await s.close()
        return any_v1

    assert not asyncio.run(opens_as_v1())
    assert _kept(data, "req-a") is not None
    _swap_request_ids(data, "req-a", "req-b")
    for request_id in ("req-a", "req-b"):
        with pytest.raises(RecordUnreadable, match="another record or request"):
            _kept(data, request_id)

    # Rotated again: records that open under neither binding are named and left as they are.
    assert run(config_file, "keys", "rotate", "--region", "jp", "--actor", "ops") == 0
    err = capsys.readouterr().err
    assert "2 record(s) fail authentication" in err and "left as they are" in err
    assert audit_lines(config_file)[-1]["details"] == {
        "records_resealed": 0,
        "records_unreadable": 2,
    }
    # Put back, and again: nothing is left to re-seal, and no entry says otherwise.
    _swap_request_ids(data, "req-a", "req-b")
    recorded = len(audit_lines(config_file))
    assert run(config_file, "keys", "rotate", "--region", "jp", "--actor", "ops") == 0
    assert "re-sealed" not in capsys.readouterr().out
    assert [a["action"] for a in audit_lines(config_file)[recorded:]] == ["store.kek_rotated"]


def test_a_serving_gateway_follows_a_key_rotation_made_beside_it(tmp_path: Path) -> None:
    """`keys rotate` on a local key file while a gateway serves: the gateway kept the old
    version current in memory. A data key it made afterwards (a tenant's next generation) was
    wrapped under the version just rotated out, and a data key the rotation re-wrapped did not
    open when the gateway read it from the database (an older generation's records)."""
    from sekisho.store.errors import KeyProviderError
    from sekisho.store.keys import LocalKeyFile

    kek = tmp_path / "keys" / "region-jp.kek"
    gateway = LocalKeyFile.open(kek, "jp")
    before = gateway.wrap(b"g" * 32, b"ctx")
    cli = LocalKeyFile.open(kek, "jp")
    assert cli.rotate() == 2
    rewrapped = cli.rewrap(before, b"ctx")  # what `keys rotate` stores in the database
    assert rewrapped.startswith("sekisho:v2:")
    assert gateway.unwrap(rewrapped, b"ctx") == b"g" * 32
    assert gateway.wrap(b"x" * 32, b"ctx").startswith("sekisho:v2:")
    cli.retire(1)  # `keys kek-retire` (refused while serving; followed all the same)
    assert gateway.versions() == (2, [2])
    with pytest.raises(KeyProviderError, match="Key version 1 is not in"):
        gateway.unwrap(before, b"ctx")


def test_an_old_kek_version_is_listed_and_retired_once_no_data_key_needs_it(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Old KEK versions stayed in the key file for good after `keys rotate`. `keys
    kek-versions` says which still wrap data keys; `keys kek-retire` deletes one no data key
    needs, recorded as a rotation is, and refuses (nothing changed) while one does."""
    from sekisho import _serving
    from sekisho.store.keys import LocalKeyFile

    data = config_file.parent / "data"
    kek = data / "keys" / "region-jp.kek"
    asyncio.run(seed(data))

    def held() -> list[str]:
        return sorted(json.loads(kek.read_text())["keys"])

    def retire(version: int) -> int:
        return run(config_file, "keys", "kek-retire", "--region", "jp", "--version",
                   str(version), "--actor", "ops", "--yes")  # fmt: skip

    assert run(config_file, "keys", "kek-versions") == 0
    assert "version 1: wraps 1 data key(s) (demo); current" in capsys.readouterr().out
    assert retire(1) == 1
    assert "is the current one" in capsys.readouterr().err and held() == ["1"]

    # A new version made current, the data key not yet re-wrapped (a rotation cut short):
    # version 1 is still needed, and retiring it is refused with nothing changed.
    LocalKeyFile.open(kek, "jp").rotate()
    assert run(config_file, "keys", "kek-versions", "--region", "jp") == 0
    out = capsys.readouterr().out
    assert "version 1: wraps 1 data key(s) (demo); in use" in out
    assert "version 2: wraps 0 data key(s); current" in out
    recorded = len(audit_lines(config_file))
    assert retire(1) == 1
    err = capsys.readouterr().err
    assert "still wraps 1 data key(s): demo (generation 1)" in err and "keys rotate" in err
    assert held() == ["1", "2"] and len(audit_lines(config_file)) == recorded
    assert _kept(data, "req-a") is not None

    assert run(config_file, "keys", "rotate", "--region", "jp", "--actor", "ops") == 0
    assert run(config_file, "keys", "kek-versions", "--region", "jp") == 0
    out = capsys.readouterr().out
    assert "version 1: wraps 0 data key(s); unused: can be retired" in out
    assert "version 3: wraps 1 data key(s) (demo); current" in out

    # Unconfirmed, or while a gateway serves the data directory: refused.
    assert run(config_file, "keys", "kek-retire", "--region", "jp", "--version", "1") == 2
    assert "--yes" in capsys.readouterr().err
    fd = _serving.hold(data)
    try:
        assert retire(1) == 1
        assert "a gateway is serving" in capsys.readouterr().err
    finally:
        os.close(fd)
    assert held() == ["1", "2", "3"]

    assert retire(1) == 0
    assert "KEK version 1 retired" in capsys.readouterr().out
    assert held() == ["2", "3"]
    entry = audit_lines(config_file)[-1]
    assert (entry["action"], entry["target"], entry["actor"]) == (
        "store.kek_retired",
        "region:jp",
        "ops",
    )
    assert entry["details"]["kek_version"] == 1 and entry["details"]["complete"] is True
    assert str(kek) in str(entry["details"]["kek"])
    assert _kept(data, "req-a") is not None  # nothing needed it: every record still reads
    assert retire(1) == 1
    assert "no KEK version 1 to retire" in capsys.readouterr().err


def test_subject_find_by_a_phone_number_abroad(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--phone +49 … looks for the PHONE_INTL the classifier indexed, however the number was
    written (+49 (0)30 …, 0049 30 …), where it answered that it is not a Japanese number."""
    from sekisho.store.identifiers import normalise

    written = ("+49 (0)30 1234 5678", "+49 30 12345678", "0049 30 12345678", "+49-30-1234-5678")
    same = {normalise("PHONE_INTL", v) for v in written}
    assert same == {"493012345678"}

    async def kept() -> None:
        s = await Stores.open(
            {"jp": Region("JP")},
            config_file.parent / "data",
            audit=Sink(),
            tenants={"demo": Tenant("jp", FULL_7)},
        )
        found = (("PHONE_INTL", "+49 (0)30 1234 5678"),)  # as the prompt wrote it
        await s.for_tenant("demo", "jp").put(exchange(request_id="req-eu", identifiers=found))
        await s.close()

    asyncio.run(kept())
    base = ["--tenant", "demo", "--actor", "dpo@example.eu"]
    assert run(config_file, "subject", "find", *base, "--phone", "+49 30 12345678") == 0
    assert "1 record(s) of tenant demo mention this PHONE_INTL" in capsys.readouterr().out
    assert run(config_file, "subject", "find", *base, "--phone", "+49 30") == 1
    assert "8 to 15 digits" in capsys.readouterr().err


def test_keys_help_says_rotate_reseals_old_records_and_who_each_act_is_recorded_as(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An operator reads --help before running a key command: rotate also re-seals record/v1
    records (once after an upgrade, as operations.md says), and each act names its actor."""
    with pytest.raises(SystemExit):
        main(["keys", "--help"])
    listing = " ".join(capsys.readouterr().out.split())
    assert "re-seal records sealed before request ids were bound (record/v1)" in listing
    for command in (["keys", "rotate"], ["keys", "kek-retire"], ["db", "checkpoint"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(recorded in the ledger; default: $USER, else operator)" in text, command
        if command[0] == "keys":
            assert "--region REGION the region, as the config's regions name it" in text
