"""Precision, recall and F1 per finding type on the labelled set (tests/classify/data/eval.jsonl).

A finding counts as correct only when type, start and end all equal the gold span (exact
match, the strict reading of shared/PII_LABELS.md). Run:

    .venv/bin/python benchmarks/classify/evaluate.py [--errors TYPE]

``--errors TYPE`` lists the misses and false alarms of one type, for working on a detector.
tests/classify/test_quality.py runs the same evaluation and asserts the targets of issue 4.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "classify" / "data" / "eval.jsonl"
sys.path.insert(0, str(ROOT / "src"))

from sekisho.classify import STRUCTURED_TYPES, Scanner  # noqa: E402


@dataclass
class Tally:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def load(path: Path = DATA) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def evaluate(examples: list[dict[str, object]], scanner: Scanner | None = None) -> dict[str, Tally]:
    scanner = scanner or Scanner()
    tallies: dict[str, Tally] = {}
    for example in examples:
        text = str(example["text"])
        gold_items = example["findings"]
        assert isinstance(gold_items, list)
        gold = {(g["type"], g["start"], g["end"]) for g in gold_items}
        got = {(f.type, f.start, f.end) for f in scanner.scan(text)}
        for key in got | gold:
            tally = tallies.setdefault(key[0], Tally())
            value = text[key[1] : key[2]].replace("\n", "⏎")
            if key in got and key in gold:
                tally.tp += 1
            elif key in got:
                tally.fp += 1
                tally.errors.append(f"FP {example['id']}: {value!r}")
            else:
                tally.fn += 1
                tally.errors.append(f"FN {example['id']}: {value!r}")
    return tallies


def combined(tallies: dict[str, Tally], types: set[str] | frozenset[str]) -> Tally:
    total = Tally()
    for name, tally in tallies.items():
        if name in types:
            total.tp += tally.tp
            total.fp += tally.fp
            total.fn += tally.fn
    return total


def table(tallies: dict[str, Tally]) -> str:
    lines = [f"{'type':<22}{'gold':>6}{'TP':>6}{'FP':>5}{'FN':>5}{'P':>8}{'R':>8}{'F1':>8}"]
    for name in sorted(tallies):
        t = tallies[name]
        lines.append(
            f"{name:<22}{t.tp + t.fn:>6}{t.tp:>6}{t.fp:>5}{t.fn:>5}"
            f"{t.precision:>8.3f}{t.recall:>8.3f}{t.f1:>8.3f}"
        )
    s = combined(tallies, STRUCTURED_TYPES)
    lines.append(
        f"{'(structured, all)':<22}{s.tp + s.fn:>6}{s.tp:>6}{s.fp:>5}{s.fn:>5}"
        f"{s.precision:>8.3f}{s.recall:>8.3f}{s.f1:>8.3f}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--errors", metavar="TYPE", help="list misses and false alarms of TYPE")
    args = parser.parse_args()
    examples = load()
    tallies = evaluate(examples)
    print(f"{len(examples)} examples, {sum(t.tp + t.fn for t in tallies.values())} gold spans")
    print(table(tallies))
    if args.errors:
        for line in tallies.get(args.errors, Tally()).errors:
            print(line)


if __name__ == "__main__":
    main()
