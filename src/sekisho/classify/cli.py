"""``sekisho scan``: find personal data and secrets in files, stdin or JSON lines.

The table shows a masked preview of each value (``09******78``), never the whole value, so
the output itself can be pasted into a ticket. ``--jsonl`` is for pipelines: one JSON object
per input line, spans as Python string offsets into the original text.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TextIO

from sekisho.classify._person import TooManyCues
from sekisho.classify.findings import TYPES, Finding
from sekisho.classify.scanner import Scanner


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``scan`` subcommand to the main ``sekisho`` command line."""
    parser = subparsers.add_parser(
        "scan",
        help="find personal data, secrets and confidentiality labels in text",
        description=(
            "Scan files (or stdin) for personal data, secrets and confidentiality labels and "
            "print them as a table with masked previews. With --jsonl, read JSON lines "
            '{"id": ..., "text": ...} on stdin and write one line of findings per input.'
        ),
    )
    _add_arguments(parser)
    parser.set_defaults(handler=run)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="*", metavar="FILE", help="files to scan (default, or -: standard input)"
    )
    parser.add_argument(
        "--jsonl",
        action="store_true",
        help='read {"id", "text"} JSON lines on stdin, write {"id", "findings"} lines',
    )
    parser.add_argument(
        "--min-score",
        type=_score,
        default=0.5,
        metavar="S",
        help="report findings scoring at least S, 0..1 (default 0.5)",
    )
    parser.add_argument(
        "--types",
        type=_types,
        default=None,
        metavar="T1,T2",
        help=f"only these types (comma-separated); known: {', '.join(TYPES)}",
    )


def _score(value: str) -> float:
    try:
        score = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number between 0 and 1") from None
    if not 0.0 <= score <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..1")
    return score


def _types(value: str) -> list[str]:
    names = [v.strip().upper() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in TYPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown type(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(TYPES)}"
        )
    return names


def run(args: argparse.Namespace) -> int:
    """Run ``sekisho scan`` with parsed arguments; returns the exit status."""
    scanner = Scanner(min_score=args.min_score, types=args.types)
    if args.jsonl:
        if args.files:
            print("sekisho scan: --jsonl reads stdin; do not also give files", file=sys.stderr)
            return 2
        return scan_jsonl(scanner, sys.stdin, sys.stdout, sys.stderr)
    status = 0
    sources: list[tuple[str, str]] = []
    if not args.files:
        sources.append(("<stdin>", sys.stdin.read()))
    for path in args.files:
        if path == "-":  # the usual name for standard input
            sources.append(("<stdin>", sys.stdin.read()))
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                sources.append((path, handle.read()))
        except OSError as exc:
            print(f"sekisho scan: cannot read {path}: {exc.strerror}", file=sys.stderr)
            status = 2
    for name, text in sources:
        try:
            findings = scanner.scan(text)
        except TooManyCues as exc:
            print(f"sekisho scan: {name}: not scanned: {exc}", file=sys.stderr)
            status = 1
            continue
        sys.stdout.write(format_table(name, text, findings, show_name=len(sources) > 1))
    return status


def scan_jsonl(scanner: Scanner, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """One output line per valid input line; bad lines are reported on stderr and skipped."""
    status = 0
    for number, line in enumerate(stdin, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            stderr.write(f"sekisho scan: line {number}: not valid JSON ({exc.msg}); skipped\n")
            status = 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            stderr.write(
                f'sekisho scan: line {number}: expected an object with a string "text" '
                "field; skipped\n"
            )
            status = 1
            continue
        try:
            findings = scanner.scan(record["text"])
        except TooManyCues as exc:
            stderr.write(f"sekisho scan: line {number}: not scanned: {exc}\n")
            status = 1
            continue
        out = {"id": record.get("id"), "findings": [_finding_json(f) for f in findings]}
        stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    return status


def _finding_json(finding: Finding) -> dict[str, object]:
    item: dict[str, object] = {
        "start": finding.start,
        "end": finding.end,
        "type": finding.type,
        "score": finding.score,
    }
    if finding.subtype is not None:
        item["subtype"] = finding.subtype
    return item


def mask_preview(value: str) -> str:
    """Show only the edges of a value: ``09******78``; short values are fully masked."""
    value = " ".join(value.split())  # PEM blocks and wrapped values on one line
    n = len(value)
    if n <= 4:
        return "*" * n
    keep = 1 if n < 8 else 2
    middle = min(n - 2 * keep, 12)
    return value[:keep] + "*" * middle + value[-keep:]


def format_table(name: str, text: str, findings: Sequence[Finding], show_name: bool) -> str:
    header = ("TYPE", "SUBTYPE", "SPAN", "SCORE", "PREVIEW")
    rows = [
        (
            f.type,
            f.subtype or "",
            f"{f.start}-{f.end}",
            f"{f.score:.2f}",
            mask_preview(text[f.start : f.end]),
        )
        for f in findings
    ]
    lines: list[str] = []
    if show_name:
        lines.append(f"== {name}")
    if not rows:
        lines.append(f"{name}: no findings")
        return "\n".join(lines) + "\n"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sekisho.classify.cli``: the scan subcommand on its own."""
    parser = argparse.ArgumentParser(prog="sekisho-scan")
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
