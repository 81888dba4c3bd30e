"""Throughput and latency of the classifier, side by side with Microsoft Presidio.

One command: ``.venv/bin/python benchmarks/classify/bench.py`` first times realistic prompts
one scan at a time (the gateway benchmark's two message texts as ``shared/bench/bench.py``
builds them, and ~1 KB business prompts with a handful of numbers, dates and addresses;
``--prompts-only`` stops there), then prints a table with MB/s (UTF-8 bytes of input per
second, one core) and µs per 4 KB prompt (median and p99), for clean mixed Japanese/English
text and for PII-dense text, for sekisho's Scanner and for Presidio's
pattern recognisers (email, credit card, phone, IP, IBAN) run in a separate virtual
environment on exactly the same prompts. It then compares both on the labelled evaluation
set for the types Presidio has (email, card, IP, IBAN, phone).

Presidio's environment: ``python3.11 -m venv /tmp/presidio-venv &&
/tmp/presidio-venv/bin/pip install presidio-analyzer`` (or pass ``--presidio-python``). If it
is missing, sekisho's numbers are printed alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))
sys.path.insert(0, str(HERE))

from corpus import (  # noqa: E402
    BUSINESS_PROMPTS,
    EVAL,
    clean_corpus,
    dense_corpus,
    prompts,
    shared_bench_messages,
)

from sekisho.classify import Scanner  # noqa: E402

PRESIDIO_TYPES = {
    "EMAIL": "EMAIL_ADDRESS",
    "CREDIT_CARD": "CREDIT_CARD",
    "IP_ADDRESS": "IP_ADDRESS",
    "IBAN": "IBAN_CODE",
    "PHONE_JP": "PHONE_NUMBER",
}


def time_sekisho(chunks: list[str], repeat: int) -> list[float]:
    scanner = Scanner()
    for chunk in chunks[:20]:
        scanner.scan(chunk)  # compile patterns and load dictionaries before timing
    best: list[float] | None = None
    for _ in range(repeat):
        timings = []
        for chunk in chunks:
            started = time.perf_counter()
            scanner.scan(chunk)
            timings.append(time.perf_counter() - started)
        if best is None or sum(timings) < sum(best):
            best = timings
    assert best is not None
    return best


def time_prompt(scanner: Scanner, text: str, rounds: int) -> list[float]:
    """Seconds per scan of one prompt, ``rounds`` times after a warm-up (as the gateway scans
    the same kind of prompt request after request)."""
    for _ in range(50):
        scanner.scan(text)
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        scanner.scan(text)
        timings.append(time.perf_counter() - started)
    return timings


def realistic_prompts() -> dict[str, str]:
    """The gateway benchmark's messages and ~1 KB business prompts, one and all together."""
    system, user = shared_bench_messages()
    named = {"gateway bench: user": user, "gateway bench: system": system}
    named.update(BUSINESS_PROMPTS)
    named["4 business prompts (~4 KB)"] = "\n\n".join(BUSINESS_PROMPTS.values())
    return named


def prompt_rows(rounds: int) -> list[str]:
    scanner = Scanner()
    head = f"{'prompt':<30}{'chars':>7}{'bytes':>7}{'µs p50':>9}{'p99':>8}{'MB/s':>8}"
    lines = [f"{head}{'found':>7}"]
    for name, text in realistic_prompts().items():
        micro = sorted(t * 1e6 for t in time_prompt(scanner, text, rounds))
        p50 = statistics.median(micro)
        p99 = micro[min(len(micro) - 1, int(len(micro) * 0.99))]
        size = len(text.encode())
        found = len(scanner.scan(text))
        lines.append(
            f"{name:<30}{len(text):>7}{size:>7}{p50:>9.1f}{p99:>8.1f}{size / p50:>8.1f}{found:>7}"
        )
    return lines


def run_presidio(python: str, chunks: list[str], labelled: list[str]) -> dict[str, object] | None:
    if not Path(python).exists():
        return None
    request = json.dumps({"warmup": chunks[:5], "prompts": chunks, "labelled": labelled})
    result = subprocess.run(
        [python, str(HERE / "presidio_runner.py")],
        input=request,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        print(f"presidio run failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def row(name: str, corpus: str, chunks: list[str], timings: list[float]) -> str:
    total_bytes = sum(len(c.encode()) for c in chunks)
    mbps = total_bytes / sum(timings) / 1e6
    micro = sorted(t * 1e6 for t in timings)
    p99 = micro[min(len(micro) - 1, int(len(micro) * 0.99))]
    return f"{name:<22}{corpus:<14}{mbps:>10.1f}{statistics.median(micro):>14.0f}{p99:>12.0f}"


def quality(presidio: dict[str, object] | None) -> list[str]:
    rows = [json.loads(line) for line in EVAL.open(encoding="utf-8")]
    scanner = Scanner(types=list(PRESIDIO_TYPES))
    lines = [f"{'type':<14}{'gold':>6}{'sekisho P':>11}{'R':>7}{'presidio P':>12}{'R':>7}"]
    labelled = presidio.get("labelled") if presidio else None
    for ours, theirs in PRESIDIO_TYPES.items():
        gold = {(i, g["start"], g["end"]) for i, r in enumerate(rows) for g in r["findings"]
                if g["type"] == ours}  # fmt: skip
        got = {(i, f.start, f.end) for i, r in enumerate(rows) for f in scanner.scan(r["text"])
               if f.type == ours}  # fmt: skip
        p = len(got & gold) / len(got) if got else 1.0
        r = len(got & gold) / len(gold) if gold else 1.0
        cell = f"{'n/a':>12}{'':>7}"
        if isinstance(labelled, list):
            theirs_got = {(i, s, e) for i, found in enumerate(labelled) for t, s, e in found
                          if t == theirs}  # fmt: skip
            tp = len(theirs_got & gold)
            pp = tp / len(theirs_got) if theirs_got else 1.0
            pr = tp / len(gold) if gold else 1.0
            cell = f"{pp:>12.3f}{pr:>7.3f}"
        lines.append(f"{ours:<14}{len(gold):>6}{p:>11.3f}{r:>7.3f}{cell}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description="classifier throughput vs Presidio")
    parser.add_argument("--mb", type=float, default=1.0, help="MB of text per corpus (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--presidio-python", default="/tmp/presidio-venv/bin/python")
    parser.add_argument("--rounds", type=int, default=2000, help="scans per realistic prompt")
    parser.add_argument(
        "--prompts-only", action="store_true", help="time the realistic prompts only"
    )
    args = parser.parse_args()
    print(f"machine: {_cpu()}; python {platform.python_version()}; {time.strftime('%Y-%m-%d')}")
    print("realistic prompts, one scan each (µs per scan):")
    print("\n".join(prompt_rows(args.rounds)))
    print()
    if args.prompts_only:
        return
    size = int(args.mb * 1_000_000)
    corpora = {"clean mixed": clean_corpus(size), "PII-dense": dense_corpus(size)}
    print(f"{'engine':<22}{'text':<14}{'MB/s':>10}{'µs/4KB p50':>14}{'p99':>12}")
    ratios = []
    labelled_texts = [json.loads(line)["text"] for line in EVAL.open(encoding="utf-8")]
    presidio_result = None
    for name, corpus in corpora.items():
        chunks = prompts(corpus)
        ours = time_sekisho(chunks, args.repeat)
        print(row("sekisho Scanner", name, chunks, ours))
        # Presidio is slow: time it on a tenth of the prompts (still hundreds of KB).
        sample = chunks[: max(20, len(chunks) // 10)]
        presidio = run_presidio(args.presidio_python, sample, labelled_texts)
        if presidio is not None:
            presidio_result = presidio
            theirs = [float(t) for t in presidio["timings"]]  # type: ignore[union-attr]
            print(row("presidio patterns", name, sample, theirs))
            ours_sample = ours[: len(sample)]
            ratios.append((name, (sum(theirs) / len(theirs)) / (sum(ours_sample) / len(sample))))
    if not ratios:
        print("presidio: not available (see the docstring to install it in its own venv)")
    for name, ratio in ratios:
        print(f"sekisho is {ratio:.0f}x faster than presidio's pattern recognisers on {name}")
    print()
    print("quality on the labelled set, types both engines have (exact span match):")
    print("\n".join(quality(presidio_result)))


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "unknown CPU").strip()
    return f"{model}, {fields.get('CPU(s)', '?').strip()} CPUs"


if __name__ == "__main__":
    main()
