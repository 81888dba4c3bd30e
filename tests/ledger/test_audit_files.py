"""`ledger audit` on the files an auditor is handed: a damaged page is a violation, and a copy
it may not write (a backup mounted read-only) is audited without writing beside it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sekisho.ledger import Ledger, load_signer
from sekisho.ledger.cli import main

from .test_cli import ORIGIN, _log_some, run


@pytest.fixture
def logged(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    assert run("keys", "ledger", "--data-dir", str(data), "--name", ORIGIN).returncode == 0
    return data


def _audit(data: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object], str]:
    status = main(["ledger", "audit", "--data-dir", str(data), "--json"])
    out, err = capsys.readouterr()
    return status, (json.loads(out) if out else {}), err


async def test_a_damaged_page_is_a_violation_not_an_ok(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _log_some(logged, 60)
    path = logged / "ledger.sqlite3"
    with path.open("r+b") as f:  # dd bs=1024 seek=8 count=4 conv=notrunc, made repeatable
        f.seek(8 * 1024)
        f.write(b"\xa5" * 4 * 1024)
    status, report, _ = _audit(logged, capsys)
    assert status == 1
    assert report["ok"] is False
    (problem,) = report["problems"]  # type: ignore[misc]
    assert problem["kind"] == "corrupt_database"
    assert f"{path} is damaged" in problem["detail"] and "restore the ledger" in problem["detail"]


@contextlib.contextmanager
def _read_only(directory: Path) -> Iterator[None]:
    """``directory`` as a backup mounted read-only is: root too cannot write in it (a bind
    mount remounted ro; for other users, mode 0555 does it)."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(directory), str(directory)], check=False)
    if mounted.returncode != 0:
        pytest.skip("running as root without the right to mount: cannot make a read-only dir")
    try:
        remount = ["mount", "-o", "remount,bind,ro", str(directory)]
        subprocess.run(remount, check=True)
        with pytest.raises(OSError):
            (directory / "probe").touch()
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


async def test_a_read_only_copy_is_audited_and_nothing_is_written_beside_it(
    logged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _log_some(logged, 5)
    copy = tmp_path / "backup"
    copy.mkdir()
    shutil.copy2(logged / "ledger.sqlite3", copy / "ledger.sqlite3")
    (copy / "ledger.sqlite3").chmod(0o444)
    verifier = load_signer(logged / "keys" / "ledger.key").verifier().key_string()
    with _read_only(copy):
        status = main(["ledger", "audit", "--data-dir", str(copy), "--key", verifier, "--json"])
        out, err = capsys.readouterr()
        assert status == 0, err
        report = json.loads(out)
        assert report["ok"] is True and report["tree_size"] == 10
        assert report["checkpoints_checked"] >= 1
    assert sorted(p.name for p in copy.iterdir()) == ["ledger.sqlite3"]


async def test_a_read_only_copy_with_its_write_ahead_log_is_refused_not_misread(
    logged: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Copied while the gateway ran: commits still in the -wal file, which SQLite reads only
    through a -shm it cannot make here; reading the main file alone would miss them."""
    await _log_some(logged, 2)
    signer = load_signer(logged / "keys" / "ledger.key")
    ledger = await Ledger.open(str(logged), signer, origin=ORIGIN)
    try:
        await _append_some(ledger)
        copy = tmp_path / "hot-copy"
        copy.mkdir()
        for name in ("ledger.sqlite3", "ledger.sqlite3-wal"):
            shutil.copy2(logged / name, copy / name)
    finally:
        await ledger.close()
    assert (copy / "ledger.sqlite3-wal").stat().st_size > 0
    with _read_only(copy):
        status, _, err = _audit(copy, capsys)
    assert status == 1
    assert "ledger.sqlite3-wal" in err and "holds commits" in err and ".backup" in err


async def _append_some(ledger: Ledger) -> None:
    from .conftest import decision

    for i in range(3):
        await ledger.append(decision(f"hot-{i}"))
