"""Many gateway processes, one log; and a kill -9 at any instant never breaks a checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import sekisho
from sekisho.ledger import Signer, audit, merkle, open_checkpoint, open_storage

ORIGIN = "ledger.test.example/log"
SRC = str(Path(sekisho.__file__).parent.parent)

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime
    from sekisho.ledger import Ledger, Signer, DecisionRecord, OutcomeRecord

    async def main(data, key, name, count, interval):
        ledger = await Ledger.open(data, Signer.from_key_string(key), origin=sys.argv[6],
                                   checkpoint_interval=interval)
        seen = None
        async def one(i):
            rid = f"{name}-{i}"
            d = DecisionRecord(datetime.now(UTC), rid, "t", "p", "internal", {}, "sha256:0",
                               "allow", "e", "JP", None, "op", "JP", "m", "jp", "hmac-sha256:0")
            a = await ledger.append(d)
            print("appended", a.index, flush=True)
            await ledger.append(OutcomeRecord(datetime.now(UTC), rid, 200, 1, 1, None, None, 1))
        i = 0
        while count < 0 or i < count:
            await asyncio.gather(*(one(i + j) for j in range(8)))
            i += 8
            latest = await asyncio.to_thread(ledger.latest_checkpoint)
            if latest != seen:
                seen = latest
                print("CHECKPOINT " + latest.encode().hex(), flush=True)
        await ledger.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
    """
)


def _spawn(
    data: Path, signer: Signer, name: str, count: int, interval: float
) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            str(data),
            signer.key_string(),
            name,
            str(count),
            str(interval),
            ORIGIN,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_processes_appending_to_one_sqlite_ledger_make_one_consistent_log(
    data_dir: Path, signer: Signer
) -> None:
    workers = [_spawn(data_dir, signer, name, 200, 0.05) for name in ("a", "b")]
    outputs = [w.communicate(timeout=90) for w in workers]
    for w, (_, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err
    indexes = [
        int(line.split()[1])
        for out, _ in outputs
        for line in out.splitlines()
        if line.startswith("appended")
    ]
    assert len(indexes) == 400 and len(set(indexes)) == 400  # nobody got someone else's index
    storage = open_storage(str(data_dir))
    try:
        assert storage.tree_size() == 800
        report = audit(storage, [signer.verifier()])
        assert report.ok, report.problems[:5]
        assert report.incomplete == []
        assert report.checkpoints_checked >= 2
    finally:
        storage.close()


@pytest.mark.slow
def test_after_kill_9_mid_load_the_tree_is_consistent_with_every_published_checkpoint(
    data_dir: Path, signer: Signer
) -> None:
    for round_ in range(3):
        worker = _spawn(data_dir, signer, f"r{round_}", -1, 0.01)
        published: list[str] = []
        assert worker.stdout is not None
        deadline = time.monotonic() + 30
        while len(published) < 5 + round_ * 3 and time.monotonic() < deadline:
            line = worker.stdout.readline()
            if line.startswith("CHECKPOINT "):
                published.append(bytes.fromhex(line.split()[1]).decode())
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        assert published, worker.stderr.read() if worker.stderr else ""
        storage = open_storage(str(data_dir))
        try:
            size = storage.tree_size()
            root = merkle.root_from_hashes(size, storage.hashes(merkle.subtree_keys(0, size)))
            for signed in published:
                cp = open_checkpoint(signed, [signer.verifier()], origin=ORIGIN)
                ranges = merkle.consistency_ranges(cp.size, size)
                proof = merkle.proof_from_hashes(ranges, storage.hashes(merkle.keys_for(ranges)))
                merkle.verify_consistency(cp.size, size, cp.root_hash, root, proof)
            report = audit(storage, [signer.verifier()])
            assert report.ok, report.problems[:5]
            assert len(report.incomplete) <= 8  # at most the batch in flight at the kill
        finally:
            storage.close()
