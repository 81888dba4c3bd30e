"""``sekisho scan``: a readable table with masked previews, and JSON lines for pipelines."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sekisho.classify import cli


def _run(argv: list[str], stdin: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="sekisho")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.register(sub)
    args = parser.parse_args(["scan", *argv])
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    status = args.handler(args)
    return status, out.getvalue(), err.getvalue()


def test_table_shows_type_span_score_and_a_masked_preview_never_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status, out, _ = _run([], "電話 09012345678\nAKIAQ3EGRCTU6ZJ2KXYZ\n", monkeypatch)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TYPE", "SUBTYPE", "SPAN", "SCORE", "PREVIEW"]
    assert "09*******78" in out and "09012345678" not in out
    assert "aws_access_key_id" in out and "AKIAQ3EGRCTU6ZJ2KXYZ" not in out
    # Columns line up: every row starts its SPAN column at the same offset.
    span_col = lines[0].index("SPAN")
    assert lines[1][span_col:].split()[0] == "3-14"


def test_files_are_scanned_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("mail taro@corp.co.jp", "utf-8")
    b.write_text("nothing here", "utf-8")
    status, out, _ = _run([str(a), str(b)], "", monkeypatch)
    assert status == 0
    assert f"== {a}" in out and "EMAIL" in out and f"{b}: no findings" in out


def test_unreadable_file_is_reported_and_the_exit_status_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, _, err = _run([str(tmp_path / "missing.txt")], "", monkeypatch)
    assert status == 2 and "cannot read" in err


def test_jsonl_writes_one_line_per_input_and_names_bad_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stdin = (
        '{"id": 1, "text": "電話090-1234-5678"}\n'
        "{not json\n"
        '{"id": "b", "text": "key AKIAQ3EGRCTU6ZJ2KXYZ"}\n'
        '{"id": "c"}\n'
    )
    status, out, err = _run(["--jsonl"], stdin, monkeypatch)
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows == [
        {"id": 1, "findings": [{"start": 2, "end": 15, "type": "PHONE_JP", "score": 0.95}]},
        {
            "id": "b",
            "findings": [
                {
                    "start": 4,
                    "end": 24,
                    "type": "SECRET",
                    "score": 0.95,
                    "subtype": "aws_access_key_id",
                }
            ],
        },
    ]
    assert "line 2: not valid JSON" in err and "line 4:" in err
    assert status == 1


def test_types_and_min_score_filter_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = '{"id": 1, "text": "山田太郎様 090-1234-5678"}\n'
    _, out, _ = _run(["--jsonl", "--types", "phone_jp"], stdin, monkeypatch)
    assert [f["type"] for f in json.loads(out)["findings"]] == ["PHONE_JP"]
    _, out, _ = _run(["--jsonl", "--min-score", "0.99"], stdin, monkeypatch)
    assert json.loads(out)["findings"] == []


def test_bad_options_are_refused_with_the_known_types(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        _run(["--types", "PHONE"], "", monkeypatch)
    with pytest.raises(SystemExit):
        _run(["--min-score", "2"], "", monkeypatch)


def test_module_runs_on_its_own() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sekisho.classify.cli", "--jsonl"],
        input='{"id": 7, "text": "〒100-0001"}\n',
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout)["findings"][0]["type"] == "POSTAL_CODE_JP"
