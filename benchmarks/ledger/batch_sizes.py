"""CPU per entry of the SQLite ledger's sequencing over batches of varied sizes, without the
fsync (``synchronous=OFF``): what the statement each batch becomes costs, and nothing else.

usage: python benchmarks/ledger/batch_sizes.py [SRC ...]
  SRC  a folder holding the ``sekisho`` package (default: this checkout's src); give two or
       more to compare builds, run in turns three times.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def measure(batches: int = 3000, largest: int = 40) -> str:
    from sekisho.ledger import merkle
    from sekisho.ledger.storage import NewEntry, open_storage

    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(Path(tmp))
        storage.initialise("bench.example/ledger")
        storage._conn().execute("PRAGMA synchronous=OFF")  # measure CPU, not the disk
        rng = random.Random(1)
        sizes = [rng.randint(1, largest) for _ in range(batches)]
        k = n = 0
        started = time.process_time()
        for size in sizes:
            batch = []
            for _ in range(size):
                leaf = b'{"request_id":"r%d","x":"%s"}' % (k, b"y" * 300)
                batch.append(NewEntry(leaf, merkle.leaf_hash(leaf), f"r{k}", "decision"))
                k += 1
            storage.sequence(batch)
            n += size
        spent = time.process_time() - started
        storage.close()
    return (
        f"{spent / n * 1e6:.2f} µs CPU per entry ({n} entries in {batches} batches of 1-{largest})"
    )


def main() -> None:
    builds = sys.argv[1:] or [str(ROOT / "src")]
    if len(builds) == 1:
        sys.path.insert(0, builds[0])
        print(f"{builds[0]}: {measure()}")
        return
    for _ in range(3):
        for src in builds:
            subprocess.run([sys.executable, __file__, src], check=True)


if __name__ == "__main__":
    main()
