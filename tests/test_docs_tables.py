"""Every table in the README and docs/ renders as written.

GitHub's Markdown ends a table cell at every `|` not escaped as `\\|`, inside a code span too,
and drops the cells a row has past its header's: a row with one cell too many loses its last
cell's text without a trace in the rendered page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def cells(row: str) -> int:
    """How many cells GitHub reads in a table row: its unescaped pipes, leading and trailing
    ones aside."""
    inner = row.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return len(re.split(r"(?<!\\)\|", inner))


def short_rows(path: Path) -> list[str]:
    """Rows of the file's tables whose cell count is not their header's."""
    wrong: list[str] = []
    header: int | None = None
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("|"):
            header = None
            continue
        if header is None:
            header = cells(line)
        elif cells(line) != header:
            wrong.append(f"{path.name}:{number}: {cells(line)} cells, its header {header}")
    return wrong


@pytest.mark.parametrize("path", DOCS, ids=[p.relative_to(ROOT).as_posix() for p in DOCS])
def test_every_table_row_has_as_many_cells_as_its_header(path: Path) -> None:
    assert short_rows(path) == []


def test_a_pipe_in_a_code_span_is_a_cell_boundary(tmp_path: Path) -> None:
    doc = tmp_path / "t.md"
    doc.write_text("| a | b |\n|---|---|\n| `x|y` | z |\n| `x\\|y` | z |\n", encoding="utf-8")
    assert short_rows(doc) == ["t.md:3: 3 cells, its header 2"]
