"""The classifier now against an earlier revision of it, in one run, on the same prompts.

``.venv/bin/python benchmarks/classify/compare.py --baseline f130906`` loads
``src/sekisho/classify`` as it was at that git revision (renamed ``baseline_classify``, from
``git archive``, so nothing is checked out) next to the working tree's, then times both scanners
alternately, prompt by prompt, so that the load of a shared machine falls on both alike. It
prints µs per scan (median and p99) for the realistic prompts and MB/s with µs per 4 KB for the
clean and PII-dense corpora, with the speed-up, and checks that both find the same findings on
every prompt it timed (differences are listed: a change of behaviour must be deliberate).
"""

from __future__ import annotations

import argparse
import importlib
import io
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from bench import realistic_prompts  # noqa: E402
from corpus import clean_corpus, dense_corpus, prompts  # noqa: E402

from sekisho.classify import Scanner  # noqa: E402

Scan = Callable[[str], list[Any]]


def baseline_scanner(revision: str) -> Scan:
    """``Scanner().scan`` of ``sekisho.classify`` as committed at ``revision``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src/sekisho/classify"],
        capture_output=True,
        check=True,
    ).stdout
    where = Path(tempfile.mkdtemp(prefix="classify-baseline-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    package = where / "baseline_classify"
    (where / "src" / "sekisho" / "classify").rename(package)
    for source in package.rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        source.write_text(text.replace("sekisho.classify", "baseline_classify"), encoding="utf-8")
    sys.path.insert(0, str(where))
    module = importlib.import_module("baseline_classify")
    scan: Scan = module.Scanner().scan
    return scan


def alternate(old: Scan, new: Scan, texts: list[str], rounds: int) -> tuple[list[float], ...]:
    """Seconds per scan of each text by each scanner, taken in turn."""
    for text in texts[:20]:
        old(text), new(text)  # compile patterns and load dictionaries first
    old_times: list[float] = []
    new_times: list[float] = []
    for _ in range(rounds):
        for text in texts:
            started = time.perf_counter()
            old(text)
            middle = time.perf_counter()
            new(text)
            old_times.append(middle - started)
            new_times.append(time.perf_counter() - middle)
    return old_times, new_times


def _key(findings: list[Any]) -> list[tuple[Any, ...]]:
    return [(f.type, f.start, f.end, f.score, f.subtype) for f in findings]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=1000, help="scans per realistic prompt")
    parser.add_argument("--mb", type=float, default=0.5, help="MB of text per corpus")
    args = parser.parse_args()
    old = baseline_scanner(args.baseline)
    new = Scanner().scan
    print(
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}, baseline {args.baseline} "
        f"vs working tree, timed alternately in one process"
    )
    print(f"{'prompt':<30}{'bytes':>7}{'then µs':>9}{'p99':>7}{'now µs':>9}{'p99':>7}{'x':>6}")
    differ: list[str] = []
    for name, text in realistic_prompts().items():
        before, after = alternate(old, new, [text], args.rounds)
        a, b = sorted(before), sorted(after)
        p99 = int(len(a) * 0.99)
        ratio = statistics.median(a) / statistics.median(b)
        print(
            f"{name:<30}{len(text.encode()):>7}{statistics.median(a) * 1e6:>9.1f}"
            f"{a[p99] * 1e6:>7.0f}{statistics.median(b) * 1e6:>9.1f}{b[p99] * 1e6:>7.0f}"
            f"{ratio:>6.1f}"
        )
        if _key(old(text)) != _key(new(text)):
            differ.append(name)
    size = int(args.mb * 1_000_000)
    print(
        f"\n{'corpus (4 KB prompts)':<24}{'then MB/s':>10}{'µs p50':>8}"
        f"{'now MB/s':>10}{'µs p50':>8}{'x':>6}"
    )
    for name, corpus in (
        ("clean mixed JP/EN", clean_corpus(size)),
        ("PII-dense", dense_corpus(size)),
    ):
        chunks = prompts(corpus)
        before, after = alternate(old, new, chunks, 3)
        total = sum(len(c.encode()) for c in chunks) * 3
        print(
            f"{name:<24}{total / sum(before) / 1e6:>10.1f}{statistics.median(before) * 1e6:>8.0f}"
            f"{total / sum(after) / 1e6:>10.1f}{statistics.median(after) * 1e6:>8.0f}"
            f"{sum(before) / sum(after):>6.1f}"
        )
        differ += [f"{name} #{i}" for i, c in enumerate(chunks) if _key(old(c)) != _key(new(c))]
    print(f"\nprompts whose findings differ: {', '.join(differ) if differ else 'none'}")


if __name__ == "__main__":
    main()
