"""`sekisho keys rotate-api` and `sekisho usage`, through their argparse registration."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from sekisho.identity import KeyStore
from sekisho.identity.cli import register, register_keys
from sekisho.identity.usage import SQLiteUsage


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    register(sub)
    keys = sub.add_parser("keys")
    register_keys(keys.add_subparsers())
    return p


def run(*argv: str) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


def test_rotate_api_prints_the_successor_once_and_keeps_the_old_key_for_the_overlap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = KeyStore(tmp_path / "identity.db")
    old, info = store.create("acme", role="developer")
    assert run("keys", "rotate-api", info.key_id, "--overlap-hours", "2",
               "--data-dir", str(tmp_path)) == 0  # fmt: skip
    out = capsys.readouterr()
    new = out.out.strip()
    assert new.startswith("sk-sekisho-") and new != old
    assert "the old key works until" in out.err
    assert store.authenticate(new).role == "developer"
    store.authenticate(old)


def test_rotate_api_of_an_unknown_key_fails_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("keys", "rotate-api", "0123456789ab", "--data-dir", str(tmp_path)) == 1
    assert "no API key with id '0123456789ab'" in capsys.readouterr().err


def test_usage_lists_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = SQLiteUsage(tmp_path / "usage.db")

    async def record() -> None:
        await store.record("2025-03-02", "acme", "aaaaaaaaaaaa", "gpt-4o", 12, 30)
        await store.close()  # counters reach the file at the latest when the gateway stops

    asyncio.run(record())
    assert run("usage", "--since", "2025-03-01", "--until", "2025-03-31",
               "--data-dir", str(tmp_path)) == 0  # fmt: skip
    line = capsys.readouterr().out.splitlines()[-1].split()
    assert line == ["acme", "aaaaaaaaaaaa", "gpt-4o", "1", "12", "30"]
    assert run("usage", "--since", "March", "--data-dir", str(tmp_path)) == 2


def test_a_key_that_would_be_born_expired_is_not_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sekisho.cli import main

    for days in ("-3", "0"):
        assert main(["keys", "create", "--tenant", "demo", "--data-dir", str(tmp_path),
                     "--expires-in-days", days]) == 2  # fmt: skip
        assert "--expires-in-days must be more than 0" in capsys.readouterr().err
    assert KeyStore(tmp_path / "identity.db").list() == []


def test_a_key_for_more_than_100_years_is_not_made_and_one_stored_before_still_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--expires-in-days 1e15 was stored, and `keys list` then crashed (OverflowError)."""
    from sekisho.cli import main

    for days in ("1e15", "inf", "36501"):
        assert main(["keys", "create", "--tenant", "demo", "--data-dir", str(tmp_path),
                     "--expires-in-days", days]) == 2  # fmt: skip
        assert "--expires-in-days may be at most 36500" in capsys.readouterr().err
    store = KeyStore(tmp_path / "identity.db")
    assert store.list() == []
    _, info = store.create("demo", name="old")
    store._conn().execute("UPDATE api_keys SET expires_at = 1e20 WHERE key_id = ?", (info.key_id,))
    assert main(["keys", "list", "--data-dir", str(tmp_path)]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith(info.key_id)]
    assert "9999-12-31 23:59:59" in row
    # rotating it gives the successor 100 years, not another 1e20
    assert main(["keys", "rotate-api", info.key_id, "--data-dir", str(tmp_path)]) == 0
    [successor] = [k for k in store.list() if k.rotated_from == info.key_id]
    assert successor.expires_at is not None and successor.expires_at < 2 * 10**9 + 100 * 365 * 86400
    for hours in ("1e20", "2161"):
        assert main(["keys", "rotate-api", successor.key_id, "--overlap-hours", hours,
                     "--data-dir", str(tmp_path)]) == 2  # fmt: skip
        assert "--overlap-hours must be from 0 to 2160" in capsys.readouterr().err


def test_listing_or_revoking_keys_where_there_are_none_makes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sekisho.cli import main

    typo = tmp_path / "dat"
    for argv in (["keys", "list"], ["keys", "revoke", "3f2a9c01b7de"]):
        assert main([*argv, "--data-dir", str(typo)]) == 1
        assert "there are no API keys at" in capsys.readouterr().err
    assert not typo.exists()


def test_keys_list_says_when_a_rotated_key_stops_working(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After rotate-api the old key is still "active" for its overlap: EXPIRES says until
    when (the list said only "active")."""
    from sekisho.cli import main

    store = KeyStore(tmp_path / "identity.db")
    _, info = store.create("acme", name="billing")
    assert main(["keys", "rotate-api", info.key_id, "--overlap-hours", "24",
                 "--data-dir", str(tmp_path)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["keys", "list", "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "EXPIRES (UTC)" in lines[0]
    old = next(line for line in lines if line.startswith(info.key_id))
    assert " active " in old and old.split()[7].count(":") == 2  # a date and a time, not "-"
    successor = next(line for line in lines[1:] if not line.startswith(info.key_id))
    assert successor.split()[6] == "-"  # no expiry


def test_key_acts_of_the_command_line_are_in_the_ledger_before_they_happen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An admin key minted on the host with `keys create` left no trace in the tamper-evident
    log (keys made over the admin API did)."""
    from sekisho.cli import main
    from sekisho.ledger import parse_record
    from sekisho.ledger.storage import open_storage

    data = str(tmp_path)
    assert main(["keys", "create", "--tenant", "acme", "--role", "admin", "--actor",
                 "ops@bank.example", "--data-dir", data]) == 0  # fmt: skip
    key_id = capsys.readouterr().out.strip().split("-")[2]
    assert run("keys", "rotate-api", key_id, "--data-dir", data) == 0
    successor = capsys.readouterr().out.strip().split("-")[2]
    assert main(["keys", "revoke", successor, "--data-dir", data]) == 0
    assert main(["keys", "revoke", "ffffffffffff", "--data-dir", data]) == 1  # none: nothing
    storage = open_storage(tmp_path)
    try:
        records = [parse_record(leaf) for _, leaf, _, _, _ in storage.scan(0, storage.tree_size())]
    finally:
        storage.close()
    acts = [(r.action, r.target, r.actor) for r in records if r.kind == "admin"]  # type: ignore[union-attr]
    assert acts == [
        ("keys.create", f"key/{key_id}", "ops@bank.example"),
        ("keys.rotate", f"key/{key_id}", "operator"),
        ("keys.revoke", f"key/{successor}", "operator"),
    ]
    created = next(r for r in records if r.kind == "admin")
    assert created.details["role"] == "admin" and created.details["via"] == "cli"  # type: ignore[union-attr]


def test_usage_with_the_config_uses_its_day_and_refuses_what_it_does_not_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --config, a typo in --tenant or --model printed an empty table (rc 0), and the
    default day was UTC's while the gateway records days in limits.timezone."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    import yaml

    from harness import example_config

    raw = example_config()
    raw["server"]["data_dir"] = str(tmp_path / "data")
    raw.setdefault("limits", {})["timezone"] = "Pacific/Kiritimati"  # UTC+14: another day
    cfg = tmp_path / "sekisho.yaml"
    cfg.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    assert run("usage", "--config", str(cfg), "--tenant", "dmeo") == 2
    assert "has no tenant 'dmeo'" in capsys.readouterr().err
    assert run("usage", "--config", str(cfg), "--model", "gpt-5") == 2
    assert run("usage", "--config", str(cfg)) == 0
    today = dt.datetime.now(ZoneInfo("Pacific/Kiritimati")).date()
    assert capsys.readouterr().out.splitlines()[0].endswith(str(today))


def test_key_acts_find_the_ledger_serve_keeps_however_its_data_directory_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve` given a relative data directory (the README's ./data) recorded its ledger as
    data/ledger.sqlite3, and `keys create` given the same directory as an absolute path (as
    ./run passes it) was refused: "the gateway's ledger is data/ledger.sqlite3, not this data
    directory's"."""
    import json

    from sekisho.cli import main
    from sekisho.config import LedgerConfig
    from sekisho.ledger.continuity import RECORD
    from sekisho.recorder import open_ledger_at

    async def serve_once() -> None:
        await (await open_ledger_at(Path("data"), LedgerConfig())).close()

    monkeypatch.chdir(tmp_path)
    asyncio.run(serve_once())
    data = tmp_path / "data"
    record = data / RECORD
    assert json.loads(record.read_text(encoding="utf-8"))["ledger"] == str(
        (data / "ledger.sqlite3").resolve()
    )
    for where in (str(data), "data", "./data/"):
        assert main(["keys", "create", "--tenant", "demo", "--data-dir", where]) == 0
    monkeypatch.chdir(data / "keys")  # from elsewhere
    assert main(["keys", "create", "--tenant", "demo", "--data-dir", str(data)]) == 0
    # as an older gateway recorded it: the path serve was given, relative to where it ran
    kept = json.loads(record.read_text(encoding="utf-8"))
    for relative in ("data/ledger.sqlite3", "./data/ledger.sqlite3", "ledger.sqlite3"):
        record.write_text(json.dumps({**kept, "ledger": relative}), encoding="utf-8")
        assert main(["keys", "create", "--tenant", "demo", "--data-dir", str(data)]) == 0
    capsys.readouterr()
    # another ledger than this directory's own: still refused, nothing made
    for other in (
        "postgresql://sekisho@db.example/sekisho",
        str(tmp_path / "elsewhere" / "ledger.sqlite3"),
        "elsewhere/ledger.sqlite3",
        "data/other.sqlite3",
    ):
        record.write_text(json.dumps({**kept, "ledger": other}), encoding="utf-8")
        assert main(["keys", "create", "--tenant", "demo", "--data-dir", str(data)]) == 1
        assert f"the gateway's ledger is {other}" in capsys.readouterr().err
    assert len(KeyStore(data / "identity.db").list("demo")) == 7


def test_usage_of_a_tenant_abroad_ends_on_today_in_its_own_zone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tenant with its own limits.timezone records usage under its own days, so its report
    ends on its today, not the gateway's."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    import yaml

    from harness import example_config

    raw = example_config()
    raw["server"]["data_dir"] = str(tmp_path / "data")
    raw.setdefault("limits", {})["timezone"] = "Pacific/Pago_Pago"  # UTC-11
    raw["tenants"]["demo"]["limits"] = {"timezone": "Pacific/Kiritimati"}  # UTC+14: a day on
    cfg = tmp_path / "sekisho.yaml"
    cfg.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    assert run("usage", "--config", str(cfg), "--tenant", "demo") == 0
    today = dt.datetime.now(ZoneInfo("Pacific/Kiritimati")).date()
    assert capsys.readouterr().out.splitlines()[0].endswith(str(today))


def test_keys_create_on_the_host_goes_past_a_tenants_key_cap_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cap (tenants.NAME.limits.max_active_keys) holds every caller of the admin API; the
    operator's command line on the gateway's host is its way past it, and it says so."""
    import yaml

    from harness import example_config
    from sekisho.cli import main

    raw = example_config()
    raw["server"]["data_dir"] = str(tmp_path / "data")
    raw["tenants"]["demo"]["limits"] = {"max_active_keys": 1}
    cfg = tmp_path / "sekisho.yaml"
    cfg.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    for n in range(2):
        assert main(["keys", "create", "--tenant", "demo", "--config", str(cfg)]) == 0
        err = " ".join(capsys.readouterr().err.split())
        assert ("at or past its limit of 1" in err) is (n == 1), err
    assert KeyStore(tmp_path / "data" / "identity.db").active_count("demo") == 2
