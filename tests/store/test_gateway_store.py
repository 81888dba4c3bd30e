"""Data stays home: what a running gateway keeps of each request, where, and in what form —
checked in the store files themselves and with the data-subject commands an operator runs."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from harness import Harness, start_example

ROOT = Path(__file__).resolve().parents[2]
MY_NUMBER = "123456789018"


def store_files(data_dir: Path, region: str) -> list[Path]:
    """The region's SQLite store and its WAL: everything on disk that holds its records."""
    return sorted(data_dir.glob(f"store-{region}.db*"))


def raw_bytes(data_dir: Path, region: str) -> bytes:
    return b"".join(p.read_bytes() for p in store_files(data_dir, region))


def rows(data_dir: Path, region: str, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{data_dir / f'store-{region}.db'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def config_file(h: Harness, tmp: Path) -> Path:
    """The gateway's own config (data dir and simulator URLs included), for the CLI."""
    path = tmp / "sekisho.yaml"
    path.write_text(yaml.safe_dump(h.raw, allow_unicode=True), encoding="utf-8")
    return path


def sekisho(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sekisho", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        input=stdin,
    )


def chat(h: Harness, key: str, text: str) -> Any:
    c = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0, timeout=15)
    return c.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": text}]
    )


def started(tmp: Path, mutate: Callable[[dict[str, Any]], None] | None = None) -> Harness:
    return start_example(tmp / "gw", mutate)


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Harness]:
    h = started(tmp_path)
    yield h
    h.stop()


def test_full_retention_keeps_prompt_and_output_encrypted_in_the_home_store(
    example: Harness, tmp_path: Path
) -> None:
    marker = f"Quarterly plan {uuid.uuid4().hex}"
    email = f"hanako.{uuid.uuid4().hex[:8]}@example.jp"
    raw = chat(example, example.key(), f"{marker}: send it to {email}")
    rid = raw.headers["x-request-id"]
    answer = raw.parse().choices[0].message.content
    assert marker in answer  # the simulator echoes the prompt: the output holds it too

    stored = rows(example.data_dir, "jp", "SELECT request_id, tenant, mode, prompt FROM records")
    assert [(r[0], r[1], r[2]) for r in stored] == [(rid, "demo", "full")]
    assert stored[0][3], "full retention keeps the prompt (encrypted)"
    on_disk = raw_bytes(example.data_dir, "jp")
    for clear in (marker, email, answer):
        assert clear.encode() not in on_disk, f"{clear!r} is in the store file in clear"

    cfg = config_file(example, tmp_path)
    found = sekisho(
        "subject", "find", "--tenant", "demo", "--email", email, "--config", str(cfg),
        "--actor", "dpo@example.jp",
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert rid in found.stdout and "1 record(s)" in found.stdout

    out = tmp_path / "export.json"
    exported = sekisho(
        "subject", "export", "--tenant", "demo", "--email", email, "--config", str(cfg),
        "--actor", "dpo@example.jp", "--out", str(out),
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    (record,) = json.loads(out.read_text())["records"]
    assert record["request_id"] == rid and record["region"] == "jp"
    assert marker in json.dumps(record["prompt"], ensure_ascii=False)
    assert marker in json.dumps(record["output"], ensure_ascii=False)

    nobody = sekisho(
        "subject", "find", "--tenant", "demo", "--email", "someone.else@example.jp",
        "--config", str(cfg), "--actor", "dpo@example.jp",
    )  # fmt: skip
    assert nobody.returncode == 0 and "0 record(s)" in nobody.stdout


@pytest.mark.parametrize("stream", [False, True])
def test_whoever_the_answer_names_is_found_by_the_subject_commands(
    example: Harness, tmp_path: Path, stream: bool
) -> None:
    """A customer a lookup put into the answer (not the prompt) was kept in full but never
    indexed: 開示・利用停止・消去 answered "0 record(s)" for someone the record names."""
    email = f"kimura.{uuid.uuid4().hex[:8]}@example.jp"
    said = f"顧客 木村九郎 様のメールは {email} です。"
    if stream:
        events = [
            {"object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": said}}]},
        ]  # fmt: skip
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        for name in example.sims:
            example.fault(name, mode="sse", body=body)
    else:
        answer = {
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": said}}],
        }  # fmt: skip
        for name in example.sims:
            example.fault(name, mode="body", body=json.dumps(answer))
    c = openai.OpenAI(base_url=example.base_url, api_key=example.key(), max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "顧客番号 A-1 の連絡先を教えて"}],
        stream=stream,
    )
    rid = raw.headers["x-request-id"]
    if stream:
        list(raw.parse())
    cfg = config_file(example, tmp_path)
    for ask in (["--email", email], ["--name", "木村九郎"]):
        found = sekisho(
            "subject", "find", "--tenant", "demo", *ask, "--config", str(cfg),
            "--actor", "dpo@example.jp",
        )  # fmt: skip
        assert found.returncode == 0, found.stderr
        assert rid in found.stdout and "1 record(s)" in found.stdout, (ask, found.stdout)


def test_a_deleted_record_cannot_be_recovered_from_the_store_files_while_serving(
    example: Harness, tmp_path: Path
) -> None:
    """subject delete left the deleted rows, still decryptable under the live data key, in
    the store's write-ahead log: truncating a copy of it brought them back."""
    email = f"taro.{uuid.uuid4().hex[:8]}@example.jp"
    chat(example, example.key(), f"山田太郎様 ({email}) への返信を書いて")
    [(cipher,)] = rows(example.data_dir, "jp", "SELECT prompt FROM records")
    # Read in another process: closing any descriptor of a file drops every POSIX lock this
    # process (the serving gateway) holds on it, and the CLI would then find itself the last
    # user and empty the log on its own.
    look = [sys.executable, "-c",
            "import sys,glob;print(any(bytes.fromhex(sys.argv[2]) in open(p,'rb').read()"
            " for p in glob.glob(sys.argv[1]+'*')))",
            str(example.data_dir / "store-jp.db"), cipher[:32].hex()]  # fmt: skip
    assert subprocess.run(look, capture_output=True, text=True).stdout.strip() == "True"
    cfg = config_file(example, tmp_path)
    deleted = sekisho(
        "subject", "delete", "--tenant", "demo", "--email", email, "--config", str(cfg),
        "--actor", "dpo@example.jp", "--ticket", "APPI-1", "--yes",
    )  # fmt: skip
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted 1 record(s)" in deleted.stdout
    assert subprocess.run(look, capture_output=True, text=True).stdout.strip() == "False"
    assert chat(example, example.key(), "still serving").status_code == 200


def two_regions(raw: dict[str, Any]) -> None:
    raw["regions"]["eu"] = {"country": "DE", "store": "sqlite"}
    raw["tenants"]["acme-eu"] = {
        "home_region": "eu",
        "retention": {"mode": "full", "days": 7},
    }


def test_each_regions_store_holds_only_its_own_tenants_records(tmp_path: Path) -> None:
    h = started(tmp_path, two_regions)
    try:
        sent: dict[str, list[str]] = {"demo": [], "acme-eu": []}
        for tenant in sent:
            key = h.key(tenant)
            for n in range(3):
                sent[tenant].append(chat(h, key, f"{tenant} request {n}").headers["x-request-id"])
        live = {r: dict(h.gateway.stores.region(r).tenants()) for r in ("jp", "eu")}
    finally:
        h.stop()
    jp = rows(h.data_dir, "jp", "SELECT tenant, request_id FROM records")
    eu = rows(h.data_dir, "eu", "SELECT tenant, request_id FROM records")
    assert sorted(jp) == sorted(("demo", rid) for rid in sent["demo"])
    assert sorted(eu) == sorted(("acme-eu", rid) for rid in sent["acme-eu"])
    assert live == {"jp": {"demo": 3}, "eu": {"acme-eu": 3}}
    # nor are the other region's data keys or index entries there
    for region, foreign in (("jp", "acme-eu"), ("eu", "demo")):
        index = rows(h.data_dir, region, "SELECT DISTINCT tenant FROM subject_index")
        assert (foreign,) not in index


def full_for_my_numbers(output_action: str) -> Callable[[dict[str, Any]], None]:
    """Keep restricted requests in full (the example keeps only metadata of them), so that the
    stored content can be inspected; the tenant's output rule as given."""

    def mutate(raw: dict[str, Any]) -> None:
        tenant = raw["tenants"]["demo"]
        tenant["retention"] = {"mode": "full", "days": 7}
        tenant["detection"]["output"] = {"action": output_action, "types": ["MY_NUMBER"]}

    return mutate


@pytest.mark.parametrize("output_action", ["mask", "none"])
def test_a_my_number_is_pseudonymised_before_it_is_stored(
    tmp_path: Path, output_action: str
) -> None:
    h = started(tmp_path, full_for_my_numbers(output_action))
    try:
        raw = chat(h, h.key(), f"個人番号{MY_NUMBER}の住所変更を手伝ってください")
        rid = raw.headers["x-request-id"]
        # jp-mynumber: only the endpoint the tenant entrusted may see it
        assert raw.headers["x-sekisho-endpoint"] == "sim-domestic-tokyo"
        assert raw.headers["x-sekisho-classification"] == "restricted"
        assert MY_NUMBER.encode() not in raw_bytes(h.data_dir, "jp")
        cfg = config_file(h, tmp_path)
    finally:
        h.stop()
    out = tmp_path / "export.json"
    exported = sekisho(
        "subject", "export", "--tenant", "demo", "--my-number", MY_NUMBER, "--config", str(cfg),
        "--actor", "dpo@example.jp", "--out", str(out),
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert "--my-number -" in exported.stderr  # a warning: the number is in the shell history
    (record,) = json.loads(out.read_text())["records"]
    assert record["request_id"] == rid and record["kept"] == "full"
    prompt = json.dumps(record["prompt"], ensure_ascii=False)
    output = json.dumps(record["output"], ensure_ascii=False)
    assert MY_NUMBER not in prompt, "the stored prompt carries the number in clear"
    assert MY_NUMBER not in output, "the stored output carries the number in clear"
    placeholders = set(record["pseudonym_map"])
    assert placeholders and all(p in prompt for p in placeholders)
    assert set(record["pseudonym_map"].values()) == {MY_NUMBER}  # the map stays home


def retention(mode: str) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw["tenants"]["demo"]["retention"] = {"mode": mode, "days": 7}

    return mutate


def test_retention_none_stores_nothing(tmp_path: Path) -> None:
    h = started(tmp_path, retention("none"))
    try:
        key = h.key()
        marker = uuid.uuid4().hex
        for n in range(3):
            assert chat(h, key, f"{marker} {n} mail a@example.jp").status_code == 200
    finally:
        h.stop()
    assert rows(h.data_dir, "jp", "SELECT count(*) FROM records") == [(0,)]
    assert rows(h.data_dir, "jp", "SELECT count(*) FROM subject_index") == [(0,)]
    assert marker.encode() not in raw_bytes(h.data_dir, "jp")


def test_retention_metadata_stores_no_content(tmp_path: Path) -> None:
    h = started(tmp_path, retention("metadata"))
    try:
        raw = chat(h, h.key(), "metadata only, please")
        rid = raw.headers["x-request-id"]
    finally:
        h.stop()
    (row,) = rows(
        h.data_dir,
        "jp",
        "SELECT request_id, mode, endpoint_id, prompt, output, pseudonym_map, prompt_hash "
        "FROM records",
    )
    assert row[:3] == (rid, "metadata", raw.headers["x-sekisho-endpoint"])
    assert row[3:6] == (None, None, None)
    assert row[6].startswith("hmac-sha256:")


def redact_emails(raw: dict[str, Any]) -> None:
    full_for_my_numbers("mask")(raw)
    raw["tenants"]["demo"]["policy"]["classification"] = {"actions": {"EMAIL": "redact"}}


def test_a_my_number_is_pseudonymised_in_storage_also_when_redaction_rewrote_the_prompt(
    tmp_path: Path,
) -> None:
    h = started(tmp_path, redact_emails)
    try:
        raw = chat(h, h.key(), f"連絡先 jiro@example.jp、個人番号{MY_NUMBER}、住所変更")
        assert raw.headers.get("x-sekisho-action") == "redact"
        sent = h.sims["sim-domestic-tokyo"].stats.bodies[-1].decode()
        assert "jiro@example.jp" not in sent  # redacted before it went upstream
        cfg = config_file(h, tmp_path)
    finally:
        h.stop()
    out = tmp_path / "export.json"
    # Read from standard input ("-"): the number stays out of the shell's history and ps.
    exported = sekisho(
        "subject", "export", "--tenant", "demo", "--my-number", "-", "--config", str(cfg),
        "--actor", "dpo@example.jp", "--out", str(out), stdin=MY_NUMBER + "\n",
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert "warning" not in exported.stderr
    (record,) = json.loads(out.read_text())["records"]
    prompt = json.dumps(record["prompt"], ensure_ascii=False)
    assert "jiro@example.jp" not in prompt  # stored as it was sent
    assert MY_NUMBER not in prompt, "the stored prompt carries the number in clear"


def test_subject_requests_are_ledger_entries_with_who_asked(tmp_path: Path) -> None:
    """Issue 6: each data-subject step is recorded in the ledger with who asked — in the same
    transparency log as the gateway's decisions, while the gateway keeps appending to it."""
    from sekisho.ledger import parse_record
    from sekisho.ledger.storage import open_storage

    h = started(tmp_path)
    try:
        email = f"jiro.{uuid.uuid4().hex[:8]}@example.jp"
        chat(h, h.key(), f"please reply to {email}")
        cfg = config_file(h, tmp_path)
        actor = "dpo@example.jp"
        steps = (("find", []), ("export", ["--out", str(tmp_path / "e.json")]),
                 ("delete", ["--yes"]))  # fmt: skip
        for verb, extra in steps:
            r = sekisho("subject", verb, "--tenant", "demo", "--email", email,
                        "--config", str(cfg), "--actor", actor, *extra)  # fmt: skip
            assert r.returncode == 0, (verb, r.stderr)
        assert chat(h, h.key(), "after the subject request").status_code == 200
    finally:
        h.stop()
    storage = open_storage(h.data_dir)
    try:
        records = [parse_record(leaf) for _, leaf, _, _, _ in storage.scan(0, storage.tree_size())]
    finally:
        storage.close()
    admin = [r for r in records if r.kind == "admin" and r.actor == actor]  # type: ignore[union-attr]
    assert len(admin) >= 3, [r.to_json() for r in records if r.kind == "admin"]
    assert email not in json.dumps([r.to_json() for r in admin])  # the person appears hashed
    assert not (h.data_dir / "store-admin.jsonl").exists()


def refused_start(config: Path, data_dir: Path) -> str:
    """`sekisho serve` that must stop at start-up: what it said."""
    from serve_process import ServeProcess

    g = ServeProcess(config, data_dir)
    try:
        g.start()
    except RuntimeError as exc:
        assert re.search(r"exited with [1-9]", str(exc)), str(exc)
        return str(exc)
    g.stop()
    raise AssertionError("the gateway started")


def test_a_lost_data_key_stops_start_up_and_subject_requests_instead_of_a_new_key(
    tmp_path: Path,
) -> None:
    """A keyring that lost a tenant's key row (or a missing key file) is never papered over
    with a new key: start-up and the data-subject commands refuse, naming what to restore."""
    h = started(tmp_path)
    try:
        email = f"taro.{uuid.uuid4().hex[:8]}@example.jp"
        assert chat(h, h.key(), f"please reply to {email}").status_code == 200
        cfg = config_file(h, tmp_path)
    finally:
        h.stop()
    keyring = h.data_dir / "keys" / "keyring-jp.db"
    shutil.copy(keyring, tmp_path / "keyring-backup.db")
    with sqlite3.connect(keyring) as conn:
        conn.execute("DELETE FROM tenant_keys WHERE tenant = 'demo'")
    conn.close()

    said = refused_start(cfg, h.data_dir)
    assert "tenant 'demo' in region 'jp'" in said and str(keyring) in said, said
    assert "Restore the keyring from your backup" in said
    with sqlite3.connect(keyring) as conn:
        assert conn.execute("SELECT count(*) FROM tenant_keys").fetchone() == (0,)
    conn.close()
    found = sekisho("subject", "find", "--tenant", "demo", "--email", email,
                    "--config", str(cfg), "--actor", "dpo@example.jp")  # fmt: skip
    assert found.returncode != 0 and "0 record(s)" not in found.stdout
    assert "tenant 'demo' in region 'jp'" in found.stderr, found.stderr

    # The keyring is back but the key-encryption key is gone: refused, and no new one is made.
    shutil.copy(tmp_path / "keyring-backup.db", keyring)
    kek = h.data_dir / "keys" / "region-jp.kek"
    kek.rename(tmp_path / "region-jp.kek")
    said = refused_start(cfg, h.data_dir)
    assert f"no key file at {kek}" in said, said
    assert not kek.exists()

    (tmp_path / "region-jp.kek").rename(kek)  # both restored: the record is found again
    found = sekisho("subject", "find", "--tenant", "demo", "--email", email,
                    "--config", str(cfg), "--actor", "dpo@example.jp")  # fmt: skip
    assert found.returncode == 0 and "1 record(s)" in found.stdout, found.stderr


def test_a_serving_gateway_holds_its_data_directory_and_lets_go_at_shutdown(
    tmp_path: Path,
) -> None:
    from sekisho import _serving

    h = started(tmp_path)
    try:
        assert _serving.in_use(h.data_dir)
    finally:
        h.stop()
    assert not _serving.in_use(h.data_dir)
