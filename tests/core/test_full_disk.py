"""A full disk, for real: the data directory on a small tmpfs that the test fills up.

`sekisho serve` runs as users run it, the official openai client asks, and the disk really
answers ENOSPC (no patched writes). What a user relies on: a clear 503 naming the cause, nothing
sent upstream that the ledger could not record, /readyz saying why, service again as soon as
there is room, and a ledger that audits clean afterwards.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from harness import metric_sample as sample
from harness import request
from serve_process import ServeProcess, Simulators, write_config

DISK_MB = 16


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs(name)``: a 16 MB tmpfs at ``tmp_path/name``; skipped where mounting is not
    allowed (it needs root, which this project's test machines have)."""
    mounted: list[Path] = []

    def mount(name: str) -> Path:
        disk = tmp_path / name
        disk.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(disk)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(disk)
        return disk

    try:
        yield mount
    finally:
        for disk in mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; return it (delete it to make room again)."""
    filler = disk / "filler.bin"
    block = b"\0" * 65536
    try:
        # unbuffered: a write cut short would leave bytes for close() to fail on again
        with filler.open("wb", buffering=0) as f:
            while True:
                f.write(block)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    return filler


def assert_audit_complete(data_dir: Path) -> None:
    """`sekisho ledger audit`: the log verifies, and every decision has its outcome."""
    audit = subprocess.run(
        [sys.executable, "-m", "sekisho", "ledger", "audit", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "incomplete requests: 0" in audit.stdout, audit.stdout


def test_a_full_ledger_disk_refuses_clearly_sends_nothing_and_recovers(
    tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    small_disk = tmpfs("disk")
    sims = Simulators().start()
    try:
        config = write_config(tmp_path / "sekisho.yaml", sims.config())
        gw = ServeProcess(config, small_disk)  # its log file goes beside, off the small disk
        with gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
            ask = {"model": "gpt-4o", "messages": [{"role": "user", "content": "こんにちは"}]}
            assert client.chat.completions.create(**ask).choices  # type: ignore[call-overload]

            filler = fill(small_disk)
            sent = {eid: sim.stats.bytes_received for eid, sim in sims.sims.items()}
            # A prompt large enough that the ledger's write-ahead log must grow.
            big = {**ask, "messages": [{"role": "user", "content": "資料の要約 " + "あ" * 200_000}]}
            for stream in (False, True):
                with pytest.raises(openai.InternalServerError) as err:
                    client.chat.completions.create(**big, stream=stream)  # type: ignore[call-overload]
                assert err.value.status_code == 503
                body = err.value.body
                assert isinstance(body, dict) and body["code"] == "ledger_unavailable"
                assert "disk is full" in body["message"]
                assert "Nothing was sent upstream" in body["message"]
            # Not one byte reached any endpoint while the ledger could not record.
            assert {eid: sim.stats.bytes_received for eid, sim in sims.sims.items()} == sent
            ready = request("GET", f"{gw.root}/readyz")
            assert ready.status_code == 503
            assert "disk is full" in ready.json()["ledger"]["reason"]
            assert request("GET", f"{gw.root}/healthz").status_code == 200  # alive, not ready
            # What an alert sees (examples/prometheus/sekisho-alerts.yaml): the ledger's writer
            # down and its refusals counted, each store's writer still up.
            assert sample(gw.root, "sekisho_writer_up", writer="ledger") == 0
            assert sample(gw.root, "sekisho_writer_up", writer="store", region="jp") == 1
            refused = sample(gw.root, "sekisho_ledger_refusals_total", reason="storage_error")
            assert refused is not None and refused >= 2

            filler.unlink()  # room again: service resumes without a restart
            reply = client.chat.completions.create(**big)  # type: ignore[call-overload]
            assert reply.choices[0].message.content
            assert request("GET", f"{gw.root}/readyz").status_code == 200
            assert sample(gw.root, "sekisho_writer_up", writer="ledger") == 1
            assert "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(**ask, stream=True)  # type: ignore[call-overload]
                if c.choices
            )
    finally:
        sims.stop()

    assert_audit_complete(small_disk)


def test_a_full_store_disk_withholds_the_answer_and_the_ledger_records_why(
    tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    """The region's store on a volume of its own (``store: sqlite:///PATH``) fills up: the
    endpoint has answered, but an answer that cannot be kept as the tenant's retention says is
    not delivered, and the ledger's outcome entry says so (no decision is left without one)."""
    store_disk = tmpfs("store")
    sims = Simulators().start()
    try:

        def own_volume(raw: dict[str, Any]) -> None:
            raw["regions"]["jp"]["store"] = f"sqlite:///{store_disk}/store-jp.db"

        config = write_config(tmp_path / "sekisho.yaml", sims.config(own_volume))
        data = tmp_path / "data"
        with ServeProcess(config, data) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
            ask = {"model": "gpt-4o", "messages": [{"role": "user", "content": "こんにちは"}]}
            assert client.chat.completions.create(**ask).choices  # type: ignore[call-overload]
            assert (store_disk / "store-jp.db").exists()
            assert not (data / "store-jp.db").exists()

            filler = fill(store_disk)
            big = {**ask, "messages": [{"role": "user", "content": "資料の要約 " + "あ" * 200_000}]}
            with pytest.raises(openai.InternalServerError) as err:
                client.chat.completions.create(**big)  # type: ignore[call-overload]
            body = err.value.body
            assert isinstance(body, dict) and body["code"] == "store_unavailable", body
            assert "full" in body["message"]
            # A stream has sent its text by then: it ends with the reason, never with [DONE].
            with pytest.raises(openai.APIError, match="full"):
                for _ in client.chat.completions.create(**big, stream=True):  # type: ignore[call-overload]
                    pass
            # Both withheld answers counted, the region's writer down until a write succeeds.
            jp = {"region": "jp"}
            refused = sample(gw.root, "sekisho_store_refusals_total", reason="storage_error", **jp)
            assert refused == 2
            assert sample(gw.root, "sekisho_writer_up", writer="store", **jp) == 0
            assert sample(gw.root, "sekisho_writer_up", writer="ledger") == 1
            filler.unlink()
            assert client.chat.completions.create(**big).choices  # type: ignore[call-overload]
            assert request("GET", f"{gw.root}/readyz").status_code == 200
            assert sample(gw.root, "sekisho_writer_up", writer="store", **jp) == 1
    finally:
        sims.stop()

    # Before, a store failure skipped the outcome entry: the audit showed two requests with a
    # decision and no outcome, as if the gateway had crashed.
    assert_audit_complete(data)
