"""One key, one history: a gateway that lost its ledger does not start a second log under the
same signing key, and an operator can start a new log, under a new key, on purpose."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

import sekisho
from sekisho.config import Config, parse_config
from sekisho.ledger import CheckpointError, load_signer, open_checkpoint
from sekisho.ledger.cli import main
from sekisho.ledger.continuity import RECORD, SIGNED, LedgerBehind, LedgerLost
from sekisho.recorder import open_ledger

from .conftest import decision

ROOT = Path(sekisho.__file__).resolve().parents[2]


def _config(data: Path, **ledger: Any) -> Config:
    raw = yaml.safe_load((ROOT / "examples" / "sekisho.yaml").read_text(encoding="utf-8"))
    raw["server"]["data_dir"] = str(data)
    raw.setdefault("ledger", {}).update(ledger)
    return parse_config(yaml.safe_dump(raw, allow_unicode=True))


async def _serve_once(config: Config) -> str:
    ledger = await open_ledger(config)
    try:
        await ledger.append(decision("req-1"))
        return ledger.checkpoint_now()
    finally:
        await ledger.close()


def _lose_ledger(data: Path) -> None:
    for path in data.glob("ledger.sqlite3*"):
        path.unlink()


async def test_a_gateway_whose_ledger_was_deleted_refuses_to_start_a_second_history(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config = _config(data)
    await _serve_once(config)
    key = (data / "keys" / "ledger.key").read_bytes()
    _lose_ledger(data)
    with pytest.raises(LedgerLost) as refused:
        await open_ledger(config)
    message = str(refused.value)
    assert f"the ledger at {data / 'ledger.sqlite3'} is missing or empty" in message
    assert str(data / RECORD) in message and "sekisho ledger init --new-log" in message
    assert "Restore the ledger from its backup" in message
    assert not (data / "ledger.sqlite3").exists()  # nothing made in its place
    assert (data / "keys" / "ledger.key").read_bytes() == key


async def test_an_empty_ledger_file_in_place_of_the_log_is_refused_too(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = _config(data)
    await _serve_once(config)
    _lose_ledger(data)
    (data / "ledger.sqlite3").touch()
    with pytest.raises(LedgerLost, match="missing or empty"):
        await open_ledger(config)


async def test_a_log_kept_at_another_place_than_configured_is_named_with_the_way_on(
    tmp_path: Path,
) -> None:
    """`keys create --data-dir` before the first start, with ledger.url set in the config: the
    key's entry went to the data directory's own SQLite ledger, and the start on ledger.url
    said the ledger was "missing" and to restore it from backup."""
    data = tmp_path / "data"
    await _serve_once(_config(data))  # what the command run with --data-dir did
    configured = _config(data, url=f"sqlite:///{tmp_path / 'central.sqlite3'}")
    with pytest.raises(LedgerLost) as refused:
        await open_ledger(configured)
    message = str(refused.value)
    own = str((data / "ledger.sqlite3").resolve())
    assert f"is kept at {own}, not at" in message
    assert f"set ledger.url to sqlite:///{own}" in message and "--config FILE" in message
    assert "Restore the ledger from its backup" not in message
    # Gone from where the record says too: lost, as before.
    _lose_ledger(data)
    with pytest.raises(LedgerLost, match="Restore the ledger from its backup"):
        await open_ledger(configured)


async def test_a_data_dir_from_before_the_record_counts_the_key_and_policies_in_force(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config = _config(data)
    await _serve_once(config)
    (data / RECORD).unlink()  # as an older sekisho left it
    (data / "policies-in-force.json").write_text("{}", encoding="utf-8")
    _lose_ledger(data)
    with pytest.raises(LedgerLost, match=r"policies-in-force\.json"):
        await open_ledger(config)


async def test_a_key_made_before_the_first_start_starts_the_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert main(["keys", "ledger", "--data-dir", str(data), "--create", "--name", "a/b"]) == 0
    config = _config(data, origin="a/b")
    assert (await _serve_once(config)).startswith("a/b\n1\n")
    record = json.loads((data / RECORD).read_text(encoding="utf-8"))
    assert record["origin"] == "a/b" and record["ledger"] == str(
        (data / "ledger.sqlite3").resolve()
    )


async def test_ledger_init_new_log_retires_the_old_key_and_the_next_start_makes_a_new_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    config = _config(data)
    await _serve_once(config)
    old = load_signer(data / "keys" / "ledger.key")
    _lose_ledger(data)
    assert main(["ledger", "init", "--new-log", "--data-dir", str(data)]) == 0
    said = capsys.readouterr().out
    new = load_signer(data / "keys" / "ledger.key")
    assert new.verifier().key_string() != old.verifier().key_string()
    assert new.verifier().key_string() in said
    (retired,) = (data / "keys").glob("ledger.key.retired-*")
    assert load_signer(retired).verifier().key_string() == old.verifier().key_string()
    assert str(retired) in said and "signs nothing more" in said
    checkpoint = await _serve_once(config)
    assert open_checkpoint(checkpoint, [new.verifier()]).size == 1  # a new log, the new key's
    with pytest.raises(CheckpointError):
        open_checkpoint(checkpoint, [old.verifier()])


async def test_after_ledger_init_new_log_a_gateway_that_ran_here_starts_and_only_once(
    tmp_path: Path,
) -> None:
    """A real gateway leaves policies-in-force.json beside the key: the new key made by
    init --new-log then looked like an older gateway's traces, and the start that the command
    promised was refused again (pointing back at the same command)."""
    data = tmp_path / "data"
    config = _config(data)
    await _serve_once(config)
    (data / "policies-in-force.json").write_text("{}", encoding="utf-8")  # as serve writes it
    _lose_ledger(data)
    assert main(["ledger", "init", "--new-log", "--data-dir", str(data)]) == 0
    assert (await _serve_once(config)).count("\n") > 2  # it started: a new log
    _lose_ledger(data)  # and lost again: the new log is protected as the old one was
    with pytest.raises(LedgerLost):
        await open_ledger(config)


def test_ledger_init_new_log_refuses_where_the_log_is_not_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    data = tmp_path / "data"
    asyncio.run(_serve_once(_config(data)))
    key = (data / "keys" / "ledger.key").read_bytes()
    assert main(["ledger", "init", "--new-log", "--data-dir", str(data)]) == 1
    assert "holds a log of 1 entries: it is not lost" in capsys.readouterr().err
    assert (data / "keys" / "ledger.key").read_bytes() == key
    assert list((data / "keys").glob("*.retired-*")) == []


async def test_a_gateway_on_a_ledger_restored_from_an_older_backup_refuses_to_sign_a_fork(
    tmp_path: Path,
) -> None:
    """A ledger put back from a backup taken before the newest checkpoint the gateway signed
    was served from: the gateway went on from the backup's size and signed other entries at
    sizes it had signed already, under the same key (a fork every kept receipt exposes). It
    now refuses to start, saying how far behind the copy is and what to do."""
    import sqlite3

    data = tmp_path / "data"
    config = _config(data)
    await _serve_once(config)
    ledger_file = data / "ledger.sqlite3"
    backup = tmp_path / "backup.sqlite3"
    with sqlite3.connect(ledger_file) as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    newest = await _serve_once(config)  # signed after the backup was taken
    newest_size = int(newest.split("\n")[1])
    for path in data.glob("ledger.sqlite3*"):
        path.unlink()
    backup.replace(ledger_file)
    held = sqlite3.connect(ledger_file).execute("SELECT size FROM tree").fetchone()[0]
    assert held < newest_size

    with pytest.raises(LedgerBehind) as refused:
        await open_ledger(config)
    message = str(refused.value)
    assert f"holds {held} entries" in message and f"size {newest_size}" in message
    assert "sekisho ledger audit" in message and "sekisho ledger init --new-log" in message
    # Nothing was signed on the restored copy.
    signed = sqlite3.connect(ledger_file).execute("SELECT max(size) FROM checkpoints").fetchone()
    assert signed[0] == held

    # A copy as large as the newest signed checkpoint but with other entries is refused too.
    record = json.loads((data / SIGNED).read_text(encoding="utf-8"))
    (note,) = (
        sqlite3.connect(ledger_file)
        .execute("SELECT note FROM checkpoints WHERE size = ?", (held,))
        .fetchone()
    )
    record.update(size=held, root=note.split("\n")[2])
    (data / SIGNED).write_text(json.dumps(record), encoding="utf-8")
    with sqlite3.connect(ledger_file) as db:
        db.execute("UPDATE entries SET leaf_hash = zeroblob(32)")  # other entries: their
        db.execute("UPDATE nodes SET hash = zeroblob(32)")  # hashes, and the tree above them
    with pytest.raises(LedgerBehind, match=f"its first {held} entries are not those"):
        await open_ledger(config)


async def test_a_ledger_restored_from_a_backup_that_reaches_the_newest_checkpoint_starts(
    tmp_path: Path,
) -> None:
    import sqlite3

    data = tmp_path / "data"
    config = _config(data)
    await _serve_once(config)
    await _serve_once(config)
    backup = tmp_path / "backup.sqlite3"
    with sqlite3.connect(data / "ledger.sqlite3") as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    for path in data.glob("ledger.sqlite3*"):
        path.unlink()
    backup.replace(data / "ledger.sqlite3")
    (data / "ledger.sqlite3").chmod(0o600)
    assert int((await _serve_once(config)).split("\n")[1]) > 2


def _killed_after_appending(config_file: Path, request_ids: list[str]) -> None:
    """A gateway that appended entries and was killed before its next checkpoint (it signs
    one a second and at shutdown; a kill in between leaves the tree larger than any signed)."""
    import subprocess
    import sys

    script = (
        "import asyncio, os, sys\n"
        "from sekisho.config import load_config\n"
        "from sekisho.recorder import open_ledger\n"
        "from ledger.conftest import decision\n"
        "async def go():\n"
        "    ledger = await open_ledger(load_config(sys.argv[1]))\n"
        "    for request_id in sys.argv[2:]:\n"
        "        await ledger.append(decision(request_id))\n"
        "    os._exit(0)\n"
        "asyncio.run(go())\n"
    )
    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{tests}"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(config_file), *request_ids],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


async def test_a_checkpoint_ledger_checkpoint_signed_stops_a_start_on_an_older_restore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gateway was killed after appending, and the operator kept (published) the tree head
    with `ledger checkpoint --keep`: that command signed it but did not record it in
    ledger-signed.json, so a ledger restored from a backup older than that checkpoint (but not
    older than the gateway's own last one) was served from, and the same key signed a fork."""
    import sqlite3

    data = tmp_path / "data"
    config = _config(data, checkpoint_interval_ms=3_600_000)
    config_file = tmp_path / "sekisho.yaml"
    raw = yaml.safe_load((ROOT / "examples" / "sekisho.yaml").read_text(encoding="utf-8"))
    raw["server"]["data_dir"] = str(data)
    raw.setdefault("ledger", {})["checkpoint_interval_ms"] = 3_600_000
    config_file.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    await _serve_once(config)
    backup = tmp_path / "backup.sqlite3"
    with sqlite3.connect(data / "ledger.sqlite3") as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    held = sqlite3.connect(backup).execute("SELECT size FROM tree").fetchone()[0]

    _killed_after_appending(config_file, ["req-2", "req-3"])
    kept = tmp_path / "kept.jsonl"
    assert main(["ledger", "checkpoint", "--config", str(config_file), "--keep", str(kept)]) == 0
    published = capsys.readouterr().out
    published_size = int(published.split("\n")[1])
    assert published_size > held
    record = json.loads((data / SIGNED).read_text(encoding="utf-8"))
    assert record["size"] == published_size
    assert record["key"] == load_signer(data / "keys" / "ledger.key").verifier().key_string()

    for path in data.glob("ledger.sqlite3*"):
        path.unlink()
    backup.replace(data / "ledger.sqlite3")
    (data / "ledger.sqlite3").chmod(0o600)
    with pytest.raises(LedgerBehind, match=f"holds {held} entries.*size {published_size}"):
        await open_ledger(config)


async def test_ledger_checkpoint_signs_no_fork_of_a_ledger_restored_from_an_older_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ledger checkpoint` refuses what the gateway refuses: a ledger behind the newest
    checkpoint signed, or whose entries at that size are others; and a data directory of
    another log's key, where its checkpoint could not be recorded for the gateway."""
    import sqlite3

    data = tmp_path / "data"
    config = _config(data, checkpoint_interval_ms=3_600_000)
    config_file = tmp_path / "sekisho.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                **yaml.safe_load((ROOT / "examples" / "sekisho.yaml").read_text("utf-8")),
                "server": {"data_dir": str(data)},
                "ledger": {"checkpoint_interval_ms": 3_600_000},
            },
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    await _serve_once(config)
    backup = tmp_path / "backup.sqlite3"
    with sqlite3.connect(data / "ledger.sqlite3") as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    await _serve_once(config)
    newest = json.loads((data / SIGNED).read_text(encoding="utf-8"))
    for path in data.glob("ledger.sqlite3*"):
        path.unlink()
    backup.replace(data / "ledger.sqlite3")
    (data / "ledger.sqlite3").chmod(0o600)
    held = sqlite3.connect(data / "ledger.sqlite3").execute("SELECT size FROM tree").fetchone()
    # As if the copy's last checkpoint had not been signed (a gateway killed before it): the
    # command would sign one.
    with sqlite3.connect(data / "ledger.sqlite3") as db:
        db.execute("DELETE FROM checkpoints WHERE size > 0")

    def signed_sizes() -> list[int]:
        with sqlite3.connect(data / "ledger.sqlite3") as db:
            return [row[0] for row in db.execute("SELECT size FROM checkpoints ORDER BY size")]

    before = signed_sizes()
    assert main(["ledger", "checkpoint", "--config", str(config_file)]) == 1
    err = capsys.readouterr().err
    assert f"holds {held[0]} entries" in err and f"size {newest['size']}" in err
    assert "so no checkpoint was signed" in err and "sekisho ledger audit" in err
    assert signed_sizes() == before
    assert json.loads((data / SIGNED).read_text(encoding="utf-8")) == newest  # not lowered

    # The data directory of another log (its own key) is not written to, nor signed for.
    other = tmp_path / "other"
    other_config = _config(other)
    await _serve_once(other_config)
    theirs = (other / SIGNED).read_text(encoding="utf-8")
    key_file = data / "keys" / "ledger.key"
    url = f"sqlite:///{data / 'ledger.sqlite3'}"
    monkeypatch.setenv("SEKISHO_DATA_DIR", str(other))  # a bare --url: the default data dir
    assert main(["ledger", "checkpoint", "--url", url, "--key-file", str(key_file)]) == 1
    err = capsys.readouterr().err
    assert f"the data directory {other} is that of the log signed by key" in err
    assert "pass --config FILE" in err
    assert (other / SIGNED).read_text(encoding="utf-8") == theirs
    assert signed_sizes() == before


def test_the_record_of_the_newest_checkpoint_signed_never_goes_back(tmp_path: Path) -> None:
    """A gateway's workers and `ledger checkpoint` sign side by side: the one recording last
    may have signed a smaller tree, and must not lower the size a restore has to reach."""
    from sekisho.ledger.continuity import record_signed

    record_signed(tmp_path, "log+1+key", 7, b"\x07" * 32)
    record_signed(tmp_path, "log+1+key", 5, b"\x05" * 32)
    assert json.loads((tmp_path / SIGNED).read_text(encoding="utf-8"))["size"] == 7
    record_signed(tmp_path, "log+1+key", 9, b"\x09" * 32)
    assert json.loads((tmp_path / SIGNED).read_text(encoding="utf-8"))["size"] == 9
    record_signed(tmp_path, "new-log+2+key", 1, b"\x01" * 32)  # a new log's key: its own record
    assert json.loads((tmp_path / SIGNED).read_text(encoding="utf-8"))["size"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [SIGNED]  # no lock or temporary file


async def test_a_gateway_records_a_checkpoint_outside_the_ledger_before_it_signs_it(
    tmp_path: Path,
) -> None:
    """A crash between signing and recording would leave a signature that ledger-signed.json
    does not know, so a ledger restored from behind it would start and sign a fork. The record
    is written first: when it is, no checkpoint of that size is signed yet."""
    data = tmp_path / "data"
    ledger = await open_ledger(_config(data))
    try:
        await ledger.append(decision("req-1"))
        record = ledger.on_signed
        assert record is not None
        seen: list[tuple[int, int | None]] = []

        def observe(size: int, root: bytes) -> None:
            latest = ledger.storage.latest_checkpoint()
            seen.append((size, latest.size if latest is not None else None))
            record(size, root)

        ledger.on_signed = observe
        ledger.checkpoint_now()
        latest = ledger.storage.latest_checkpoint()
        assert latest is not None
        size = latest.size
    finally:
        await ledger.close()
    assert seen and all(signed is None or signed < size for size, signed in seen), seen
    assert json.loads((data / SIGNED).read_text())["size"] == size


def test_the_record_of_a_checkpoint_signed_is_on_disk_before_it_replaces_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record that a power cut left empty proves nothing, and a restore behind it would
    start unnoticed: the new record's content is synced before it takes the old one's place."""
    from sekisho.ledger import continuity

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(f"replace {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(continuity.os, "fsync", fsync)
    monkeypatch.setattr(continuity.os, "replace", replace)
    continuity.record_signed(tmp_path, "key+1+AAAA", 5, b"\x01" * 32)
    assert events == ["fsync", f"replace {SIGNED}"]
    assert json.loads((tmp_path / SIGNED).read_text())["size"] == 5
