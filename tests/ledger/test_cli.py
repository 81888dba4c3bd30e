"""The ledger's commands: keys ledger, verify (offline), ledger checkpoint --keep, ledger audit."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import sekisho
from sekisho.ledger import KeyFileError, Ledger, create_signing_key, load_signer
from sekisho.ledger.cli import main

from .conftest import decision, outcome

SRC = str(Path(sekisho.__file__).parent.parent)
ORIGIN = "cli.test.example/log"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sekisho.ledger.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=60,
    )


@pytest.fixture
def keyed_data_dir(data_dir: Path) -> tuple[Path, str]:
    result = run("keys", "ledger", "--data-dir", str(data_dir), "--name", ORIGIN)
    assert result.returncode == 0, result.stderr
    verifier = result.stdout.strip().splitlines()[-1]
    return data_dir, verifier


def test_keys_ledger_writes_a_private_key_and_prints_the_verifier(
    keyed_data_dir: tuple[Path, str],
) -> None:
    data_dir, verifier = keyed_data_dir
    key_file = data_dir / "keys" / "ledger.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert verifier.startswith(ORIGIN + "+")
    assert load_signer(key_file).verifier().key_string() == verifier
    again = run("keys", "ledger", "--data-dir", str(data_dir), "--name", ORIGIN)
    assert again.returncode == 0  # an existing key is never overwritten: its verifier is shown
    assert "not overwritten" in again.stderr
    assert again.stdout.strip().splitlines()[-1] == verifier
    assert load_signer(key_file).verifier().key_string() == verifier


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.key"
    create_signing_key(path, ORIGIN)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_signer(path)
    with pytest.raises(KeyFileError, match="sekisho keys ledger"):
        load_signer(tmp_path / "missing.key")


async def _log_some(
    data_dir: Path, requests: int, *, start: int = 0, consistency_with: int | None = None
) -> None:
    signer = load_signer(data_dir / "keys" / "ledger.key")
    ledger = await Ledger.open(str(data_dir), signer, origin=ORIGIN)
    for i in range(start, start + requests):
        await ledger.append(decision(f"cli-{i}"))
        await ledger.append(outcome(f"cli-{i}"))
    receipt = ledger.receipt(f"cli-{start}", consistency_with=consistency_with)
    (data_dir / f"receipt-{start}.json").write_text(json.dumps(receipt))
    (data_dir / f"receipt-{start}.tlog-proof").write_text(
        ledger.receipt(f"cli-{start}")["tlog_proof"]
    )
    await ledger.close()


async def test_verify_checks_a_receipt_offline_and_names_what_failed(
    keyed_data_dir: tuple[Path, str],
) -> None:
    data_dir, verifier = keyed_data_dir
    await _log_some(data_dir, 5)
    ok = run("verify", str(data_dir / "receipt-0.json"), "--key", verifier)
    assert ok.returncode == 0, ok.stderr
    assert "ok  checkpoint signature" in ok.stdout
    assert "outcome of the same request" in ok.stdout
    plain = run("verify", str(data_dir / "receipt-0.tlog-proof"), "--key", verifier)
    assert plain.returncode == 0, plain.stderr
    # As `jq -r .tlog_proof receipt.json > r.tlog-proof` writes it: one newline more.
    proof = (data_dir / "receipt-0.tlog-proof").read_text()
    (data_dir / "jq.tlog-proof").write_text(proof + "\n")
    assert run("verify", str(data_dir / "jq.tlog-proof"), "--key", verifier).returncode == 0

    receipt = json.loads((data_dir / "receipt-0.json").read_text())
    receipt["index"] = 3
    (data_dir / "bad.json").write_text(json.dumps(receipt))
    bad = run("verify", str(data_dir / "bad.json"), "--key", verifier)
    assert bad.returncode == 1
    assert "FAILED: decision entry: index 3 differs" in bad.stderr

    wrong_key = create_signing_key(data_dir / "other.key", ORIGIN)
    unsigned = run("verify", str(data_dir / "receipt-0.json"), "--key", wrong_key)
    assert unsigned.returncode == 1
    assert "not signed by any known key" in unsigned.stderr


async def test_verify_fails_a_receipt_of_another_log_signed_with_the_key_it_trusts(
    keyed_data_dir: tuple[Path, str], tmp_path: Path
) -> None:
    """One key file shared by two deployments (ledger.key_file) signs two logs: a receipt of
    the staging log verified as one of production's, under production's pinned key. verify
    now expects the log the key is named after, or the one --origin names."""
    data_dir, verifier = keyed_data_dir
    await _log_some(data_dir, 2)
    staging = tmp_path / "staging"
    staging.mkdir()
    ledger = await Ledger.open(
        str(staging), load_signer(data_dir / "keys" / "ledger.key"), origin="staging.example/log"
    )
    await ledger.append(decision("staging-1"))
    await ledger.append(outcome("staging-1"))
    (tmp_path / "staging.json").write_text(json.dumps(ledger.receipt("staging-1")))
    (tmp_path / "staging.tlog-proof").write_text(ledger.receipt("staging-1")["tlog_proof"])
    await ledger.close()
    kept = tmp_path / "kept-staging.jsonl"  # an auditor of the staging log keeps its head
    assert main(["ledger", "checkpoint", "--data-dir", str(staging), "--keep", str(kept)]) == 0

    for receipt in ("staging.json", "staging.tlog-proof"):
        other = run("verify", str(tmp_path / receipt), "--key", verifier)
        assert other.returncode == 1, other.stdout
        assert "verified" not in other.stdout
        said = " ".join(other.stderr.split())
        assert f"the checkpoint is of the log 'staging.example/log', not of '{ORIGIN}'" in said
        assert f"the verifier key is named after ('{ORIGIN}')" in said
        assert "pass --origin ORIGIN; never take it from the receipt" in said
    genuine = data_dir / "receipt-0.json"
    with_kept = run("verify", str(genuine), "--key", verifier, "--checkpoints", str(kept))
    assert with_kept.returncode == 1
    assert "kept-staging.jsonl:1: the checkpoint is of the log 'staging" in with_kept.stderr

    # The log's operator says the log's origin differs from its key's name: --origin pins it.
    pinned = run("verify", str(tmp_path / "staging.json"), "--key", verifier, "--origin",
                 "staging.example/log")  # fmt: skip
    assert pinned.returncode == 0, pinned.stderr
    assert "ok  origin: staging.example/log, the log expected" in pinned.stdout
    wrong = run("verify", str(genuine), "--key", verifier, "--origin", "staging.example/log")
    assert wrong.returncode == 1
    assert "named by --origin" in wrong.stderr
    ours = run("verify", str(genuine), "--key", verifier)
    assert ours.returncode == 0, ours.stderr
    assert f"ok  origin: {ORIGIN}, the log expected" in ours.stdout


async def test_verify_fails_a_receipt_whose_request_id_or_extra_fields_no_proof_covers(
    keyed_data_dir: tuple[Path, str],
) -> None:
    """A client looks its receipt up by the top-level request_id: a receipt naming another
    request than the entry it proves is not "verified", nor one with claims beside the proof."""
    data_dir, verifier = keyed_data_dir
    await _log_some(data_dir, 1)
    genuine = json.loads((data_dir / "receipt-0.json").read_text())
    forged: list[tuple[dict[str, object], str]] = [
        ({**genuine, "request_id": "req_FAKE"}, "the receipt's request_id 'req_FAKE' is not"),
        ({**genuine, "request_id": None}, "the receipt's request_id None is not"),
        ({**genuine, "tenant": "acme"}, "the receipt carries 'tenant', which no proof covers"),
        (
            {**genuine, "outcome": {**genuine["outcome"], "status": 200}},
            "the receipt's outcome carries 'status', which no proof covers",
        ),
    ]
    for n, (receipt, said) in enumerate(forged):
        (data_dir / f"forged-{n}.json").write_text(json.dumps(receipt))
        out = run("verify", str(data_dir / f"forged-{n}.json"), "--key", verifier)
        assert out.returncode == 1 and said in out.stderr, (receipt, out.stdout, out.stderr)
        assert "verified" not in out.stdout.lower()
    assert run("verify", str(data_dir / "receipt-0.json"), "--key", verifier).returncode == 0


async def test_a_receipt_with_fields_a_newer_gateway_added_is_said_to_need_a_newer_verify(
    keyed_data_dir: tuple[Path, str],
) -> None:
    # An auditor's sekisho older than the gateway: the proof holds, but the entry carries a
    # field added since. Told as that (and what to do), not as a damaged entry.
    data_dir, verifier = keyed_data_dir
    signer = load_signer(data_dir / "keys" / "ledger.key")
    ledger = await Ledger.open(str(data_dir), signer, origin=ORIGIN)
    later = {**decision("cli-new").to_json(), "added_later": "x"}
    await ledger.append(orjson.dumps(later, option=orjson.OPT_SORT_KEYS))
    await ledger.append(outcome("cli-new"))
    (data_dir / "newer.json").write_text(json.dumps(ledger.receipt("cli-new")))
    await ledger.close()
    out = run("verify", str(data_dir / "newer.json"), "--key", verifier)
    assert out.returncode == 1
    assert "decision entry has fields this sekisho does not know ('added_later')" in out.stderr
    assert "check it with a version at least as new as the gateway's" in out.stderr


async def test_kept_checkpoints_link_old_and_new_tree_heads(
    keyed_data_dir: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, verifier = keyed_data_dir
    kept = data_dir / "kept.jsonl"
    await _log_some(data_dir, 3)
    assert main(["ledger", "checkpoint", "--data-dir", str(data_dir), "--keep", str(kept)]) == 0
    await _log_some(data_dir, 4, start=3)
    assert main(["ledger", "checkpoint", "--data-dir", str(data_dir), "--keep", str(kept)]) == 0
    lines = kept.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["consistency_from_previous"]
    same = run(
        "verify", str(data_dir / "receipt-3.json"), "--key", verifier, "--checkpoints", str(kept)
    )
    assert same.returncode == 0, same.stderr
    assert "same tree head as kept checkpoint of size 14" in same.stdout
    same_as_first = run(
        "verify", str(data_dir / "receipt-0.json"), "--key", verifier, "--checkpoints", str(kept)
    )
    assert "same tree head as kept checkpoint of size 6" in same_as_first.stdout

    await _log_some(data_dir, 2, start=7)  # a newer tree head the auditor has not kept
    newer = run(
        "verify", str(data_dir / "receipt-7.json"), "--key", verifier, "--checkpoints", str(kept)
    )
    assert newer.returncode == 1
    assert "nothing links the receipt's checkpoint (size 18)" in newer.stderr
    await _log_some(data_dir, 1, start=9, consistency_with=14)
    linked = run(
        "verify", str(data_dir / "receipt-9.json"), "--key", verifier, "--checkpoints", str(kept)
    )
    assert linked.returncode == 0, linked.stderr
    assert "kept tree (size 14) are one append-only log" in linked.stdout

    # A log that rewrites its history after an auditor kept a checkpoint is caught.
    with sqlite3.connect(data_dir / "ledger.sqlite3") as db:
        db.execute("DELETE FROM checkpoints")
        db.execute("UPDATE nodes SET hash = zeroblob(32) WHERE level = 3 AND idx = 0")
    assert main(["ledger", "checkpoint", "--data-dir", str(data_dir), "--keep", str(kept)]) == 1
    assert "not consistent with the last checkpoint you kept" in capsys.readouterr().err
    # ... before the rewritten tree is signed: no checkpoint of it exists to be published.
    with sqlite3.connect(data_dir / "ledger.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 0


async def test_ledger_audit_exit_status_says_whether_the_log_is_intact(
    keyed_data_dir: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, verifier = keyed_data_dir
    await _log_some(data_dir, 4)
    assert main(["ledger", "audit", "--data-dir", str(data_dir)]) == 0
    assert "audit: OK" in capsys.readouterr().out
    with sqlite3.connect(data_dir / "ledger.sqlite3") as db:
        db.execute("UPDATE entries SET leaf = CAST('{}' AS BLOB) WHERE idx = 2")
    assert main(["ledger", "audit", "--data-dir", str(data_dir), "--key", verifier, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["problems"][0]["index"] == 2


async def test_ledger_audit_reports_an_entry_rewritten_as_text_by_its_index(
    keyed_data_dir: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite's replace() on a BLOB gives TEXT: the audit names the edited entry, as for
    bytes (it stopped with "TypeError: string argument without an encoding")."""
    data_dir, verifier = keyed_data_dir
    await _log_some(data_dir, 4)
    with sqlite3.connect(data_dir / "ledger.sqlite3") as db:
        db.execute("UPDATE entries SET leaf = replace(leaf, 'allow', 'deny_') WHERE idx = 0")
    assert main(["ledger", "audit", "--data-dir", str(data_dir), "--key", verifier, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    first = report["problems"][0]
    assert (first["index"], first["kind"]) == (0, "leaf_hash_mismatch"), report["problems"]
    assert "text" in first["detail"]


async def test_ledger_commands_find_the_ledger_through_the_gateways_config(
    keyed_data_dir: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An operator passes the file ``serve`` runs with, from any directory, and the commands
    work on that gateway's ledger and key, not on a ``./data`` that happens to be there."""
    import yaml

    from harness import example_config

    data_dir, verifier = keyed_data_dir
    await _log_some(data_dir, 3)
    raw = example_config()
    raw["server"]["data_dir"] = str(data_dir)
    config = tmp_path / "sekisho.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    assert main(["ledger", "audit", "--config", str(config), "--key", verifier]) == 0
    assert "audit: OK" in capsys.readouterr().out
    assert main(["ledger", "checkpoint", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith(ORIGIN + "\n6\n")  # 3 decisions, 3 outcomes
    assert main(["keys", "ledger", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == verifier
    assert list(elsewhere.iterdir()) == []  # no stray ./data was made

    # --data-dir still wins over the config's, as with `serve`; where there is no ledger the
    # commands say so, and make none.
    for command in ("audit", "checkpoint"):
        args = ["ledger", command, "--config", str(config), "--data-dir", str(elsewhere)]
        assert main(args) == 1
        assert f"there is no ledger at {elsewhere / 'ledger.sqlite3'}" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


def test_a_file_that_is_not_a_ledger_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "identity.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE api_keys (id TEXT)")
    assert main(["ledger", "audit", "--url", f"sqlite:///{other}"]) == 1
    assert "does not hold a sekisho ledger" in capsys.readouterr().err


async def test_a_restarted_gateway_on_another_host_name_keeps_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ledger.origin, the log is named after the host that made it; a container
    restarted under a new host name (every Kubernetes pod) opens the same log, named as its
    signing key is, instead of refusing to start."""
    import socket

    import yaml

    from sekisho.config import parse_config
    from sekisho.recorder import open_ledger

    root = Path(sekisho.__file__).resolve().parents[2]
    text = (root / "examples" / "sekisho.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    raw["server"]["data_dir"] = str(tmp_path / "data")
    raw.get("ledger", {}).pop("origin", None)
    config = parse_config(yaml.safe_dump(raw, allow_unicode=True))
    monkeypatch.setattr(socket, "gethostname", lambda: "sekisho-7d9f-aaaaa")
    ledger = await open_ledger(config)
    first = ledger.latest_checkpoint()
    await ledger.close()
    monkeypatch.setattr(socket, "gethostname", lambda: "sekisho-7d9f-bbbbb")
    ledger = await open_ledger(config)
    assert ledger.latest_checkpoint().splitlines()[0] == "sekisho-7d9f-aaaaa/sekisho-ledger"
    assert first.splitlines()[0] == "sekisho-7d9f-aaaaa/sekisho-ledger"
    await ledger.close()


def test_keys_ledger_prints_and_makes_a_key_only_when_asked(tmp_path: Path) -> None:
    empty = tmp_path / "typo"
    result = run("keys", "ledger", "--data-dir", str(empty))
    assert result.returncode == 1
    assert "there is no ledger signing key" in result.stderr and "--create" in result.stderr
    assert not (empty / "keys" / "ledger.key").exists()
    made = run("keys", "ledger", "--data-dir", str(empty), "--create")
    assert made.returncode == 0, made.stderr
    assert (empty / "keys" / "ledger.key").exists()


async def test_audit_against_kept_checkpoints_says_a_restored_ledger_is_behind_or_forked(
    keyed_data_dir: tuple[Path, str], tmp_path: Path
) -> None:
    """Restoring a backup older than the newest published checkpoint and serving from it made
    one signing key sign two histories; `ledger audit` had no way to say the ledger was
    behind what was kept."""
    data_dir, verifier = keyed_data_dir
    kept = tmp_path / "kept.jsonl"
    ledger_file = data_dir / "ledger.sqlite3"
    await _log_some(data_dir, 3)
    assert main(["ledger", "checkpoint", "--data-dir", str(data_dir), "--keep", str(kept)]) == 0
    backup = tmp_path / "backup.sqlite3"
    with sqlite3.connect(ledger_file) as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    await _log_some(data_dir, 2, start=3)
    assert main(["ledger", "checkpoint", "--data-dir", str(data_dir), "--keep", str(kept)]) == 0
    args = ["ledger", "audit", "--data-dir", str(data_dir), "--checkpoints", str(kept)]
    ok = run(*args)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "kept checkpoints:    2" in ok.stdout and "newest size 10" in ok.stdout

    for side in ("-wal", "-shm"):  # restored as operations.md says: no stale -wal/-shm
        ledger_file.with_name(ledger_file.name + side).unlink(missing_ok=True)
    backup.replace(ledger_file)
    behind = run(*args)
    assert behind.returncode == 1
    assert "behind_kept_checkpoint" in behind.stdout
    assert "the ledger holds 6 entries, but a checkpoint you kept covers 10" in behind.stdout
    assert "sekisho ledger init --new-log" in behind.stdout
    as_json = json.loads(run(*args, "--json").stdout)
    assert [p["kind"] for p in as_json["problems"]] == ["behind_kept_checkpoint"]

    await _log_some(data_dir, 3, start=100)  # served from it: another history past entry 6
    forked = run(*args)
    assert forked.returncode == 1
    assert "inconsistent_with_kept_checkpoint" in forked.stdout
    assert "first 10 entries are not those of the checkpoint of size 10" in forked.stdout
    with_key = run(*args, "--key", verifier)  # an auditor's copy, with the published key
    assert with_key.returncode == 1 and "inconsistent_with_kept_checkpoint" in with_key.stdout


async def test_a_receipt_from_a_restored_ledger_that_forked_fails_against_kept_checkpoints(
    keyed_data_dir: tuple[Path, str], tmp_path: Path
) -> None:
    """A gateway started on a backup older than the newest kept checkpoint signs a fork. Its
    receipts carried a consistency proof to an older kept checkpoint the fork does extend
    (size 6), and verify said "one append-only log" although the fork contradicts the newer
    kept checkpoint (size 10): the receipt must be linked to the kept checkpoint next to it."""
    data_dir, verifier = keyed_data_dir
    kept = tmp_path / "kept.jsonl"
    ledger_file = data_dir / "ledger.sqlite3"
    await _log_some(data_dir, 3)
    assert main(["ledger", "checkpoint", "--data-dir", str(data_dir), "--keep", str(kept)]) == 0
    backup = tmp_path / "backup.sqlite3"
    with sqlite3.connect(ledger_file) as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    await _log_some(data_dir, 2, start=3)
    assert main(["ledger", "checkpoint", "--data-dir", str(data_dir), "--keep", str(kept)]) == 0
    for side in ("-wal", "-shm"):
        ledger_file.with_name(ledger_file.name + side).unlink(missing_ok=True)
    backup.replace(ledger_file)  # restored from the older backup, and served from: a fork
    await _log_some(data_dir, 3, start=20, consistency_with=6)

    forked = run(
        "verify", str(data_dir / "receipt-20.json"), "--key", verifier, "--checkpoints", str(kept)
    )
    assert forked.returncode == 1, forked.stdout
    assert "verified" not in forked.stdout
    assert "kept checkpoint of size 10" in forked.stderr and "?since=10" in forked.stderr
    # Asked for as the message says, the fork's own proof cannot link it to size 10.
    await _log_some(data_dir, 1, start=30, consistency_with=10)
    relinked = run(
        "verify", str(data_dir / "receipt-30.json"), "--key", verifier, "--checkpoints", str(kept)
    )
    assert relinked.returncode == 1, relinked.stdout
    assert "consistency with kept checkpoint" in relinked.stderr


async def test_verify_names_a_file_it_cannot_read_instead_of_a_traceback(
    keyed_data_dir: tuple[Path, str], tmp_path: Path
) -> None:
    """An auditor handed a damaged or hostile file gets FAILED and what is wrong with it, exit
    1; these stopped with a Python traceback (UnicodeDecodeError, RecursionError, ValueError
    'Exceeds the limit (4300 digits)', TypeError)."""
    data_dir, verifier = keyed_data_dir
    await _log_some(data_dir, 1)
    genuine = data_dir / "receipt-0.json"
    proof = (data_dir / "receipt-0.tlog-proof").read_text()
    huge = "index " + "9" * 5000 + "\n"
    bad_files: dict[str, tuple[bytes, str]] = {
        "binary.json": (b"\xff\xfe{}", "is not UTF-8 text"),
        "binary.tlog-proof": (proof.encode() + b"\xff", "is not UTF-8 text"),
        "deep.json": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        "huge.tlog-proof": (proof.replace("index 0\n", huge).encode(), "larger than"),
        "huge.json": (
            json.dumps(
                {
                    **json.loads(genuine.read_text()),
                    "index": None,
                    "tlog_proof": proof.replace("index 0\n", huge),
                }
            ).encode(),
            "larger than",
        ),
    }
    for name, (content, said) in bad_files.items():
        (tmp_path / name).write_bytes(content)
        out = run("verify", str(tmp_path / name), "--key", verifier)
        assert out.returncode == 1, (name, out.stdout)
        assert "Traceback" not in out.stderr and said in out.stderr, (name, out.stderr)

    (tmp_path / "binary.key").write_bytes(b"\xff\xfe")
    out = run("verify", str(genuine), "--key", str(tmp_path / "binary.key"))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "is not UTF-8 text" in out.stderr

    kept_files = {
        "binary.jsonl": (b"\xff\n", "is not UTF-8 text"),
        "number.jsonl": (b'{"checkpoint": 5}\n', "'checkpoint' is not a signed note"),
        "list.jsonl": (b'{"checkpoint": ["a"]}\n', "'checkpoint' is not a signed note"),
        "deep.jsonl": (b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply"),
    }
    for name, (content, said) in kept_files.items():
        (tmp_path / name).write_bytes(content)
        out = run("verify", str(genuine), "--key", verifier, "--checkpoints", str(tmp_path / name))
        assert out.returncode == 1, (name, out.stdout)
        assert "Traceback" not in out.stderr and said in out.stderr, (name, out.stderr)
    for name, content in {
        "text.jsonl": b"garbage\n",
        "other.jsonl": b'{"x": 1}\n',
        "list.jsonl": b"[1]\n",
        "number.jsonl": b'{"checkpoint": 5}\n',
        "binary.jsonl": b"\xff\n",
        "huge.jsonl": json.dumps(
            {"checkpoint": f"{ORIGIN}\n{'9' * 5000}\n{'A' * 43}=\n\n\u2014 {ORIGIN} AAAA\n"}
        ).encode(),
    }.items():
        (tmp_path / name).write_bytes(content)
        keep = str(tmp_path / name)
        out = run("ledger", "checkpoint", "--data-dir", str(data_dir), "--keep", keep)
        assert out.returncode == 1, (name, out.stdout)
        assert "FAILED: " in out.stderr and "Traceback" not in out.stderr, (name, out.stderr)
        assert (tmp_path / name).read_bytes() == content  # nothing appended to a broken file


def test_verify_help_says_what_it_checks_its_exit_status_and_where_the_key_comes_from() -> None:
    out = run("verify", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "Exit status 0: verified; 1: a check failed" in text
    assert "never from a receipt" in text and "For auditors" in text


def test_keys_ledger_names_the_origin_auditors_pin_where_it_is_not_the_keys_name(
    keyed_data_dir: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ledger.origin set after the key was made names the log otherwise than the key: verify
    refuses its receipts unless given --origin, so the operator is told to publish it."""
    import yaml

    from harness import example_config

    data_dir, verifier = keyed_data_dir
    raw = example_config()
    raw["server"]["data_dir"] = str(data_dir)
    config = tmp_path / "sekisho.yaml"
    for origin, said in ((ORIGIN, False), ("renamed.example/log", True)):
        raw.setdefault("ledger", {})["origin"] = origin
        config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
        assert main(["keys", "ledger", "--config", str(config)]) == 0
        out, err = capsys.readouterr()
        assert out.strip() == verifier
        hint = f"auditors pass `sekisho verify --origin {origin}`"
        assert (hint in " ".join(err.split())) is said
