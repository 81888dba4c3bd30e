"""Tables pasted as text: comma- or tab-separated rows under a heading row (a 社員名簿 copied
from a spreadsheet). A heading cell (生年月日, フリガナ) says what every cell below it holds,
however far the cell stands from it."""

from __future__ import annotations

MAX_ROWS = 10_000
_MAX_HEADING = 1_000
_STRIP = ' 　"'


def column_under(text: str, start: int, end: int) -> tuple[range, list[tuple[int, int]]]:
    """When ``text[start:end]`` is a whole cell of a heading row, the spans of the non-empty
    cells below it in its column (quotes and spaces outside), and the range of the table's rows
    (a heading word in them heads nothing: each table is read once per column); else an empty
    range and no cells. A table ends at a blank line or a row with another number of cells."""
    line_start = text.rfind("\n", max(0, start - _MAX_HEADING), start) + 1
    line_end = text.find("\n", end, end + _MAX_HEADING)
    if line_end < 0 or (line_start == 0 and start > _MAX_HEADING):
        return range(0), []  # a heading is a line of its own, and short
    heading = text[line_start:line_end]
    sep = "\t" if "\t" in heading else "," if "," in heading else ""
    if not sep:
        return range(0), []
    column = heading.count(sep, 0, start - line_start)
    width = heading.count(sep) + 1
    if heading.split(sep)[column].strip(_STRIP) != text[start:end]:
        return range(0), []  # the word is inside a cell of prose, not a heading
    cells = []
    pos = line_end + 1
    for _ in range(MAX_ROWS):
        if pos >= len(text):
            break
        row_end = text.find("\n", pos)
        row_end = len(text) if row_end < 0 else row_end
        row = text[pos:row_end]
        if not row.strip() or row.count(sep) + 1 != width:
            break  # the table has ended
        parts = row.split(sep)
        cell = parts[column]
        value = cell.strip(_STRIP)
        if value:
            first = pos + sum(len(part) + 1 for part in parts[:column]) + cell.index(value)
            cells.append((first, first + len(value)))
        pos = row_end + 1
    return range(line_end + 1, pos), cells
