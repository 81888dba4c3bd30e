"""Identifiers split across the texts of one request.

The model reads a request's texts one after another: content parts of a message, messages of
a conversation. A My Number sent as ``"1234 5678 "`` in one part and ``"9018"`` in the next
is whole to the model and to nobody scanning each text alone. ``across`` scans the stretch
around each place where two consecutive texts meet, if both sides have a digit at the
meeting point (the numbers the detectors read begin and end with a digit; other meetings
are left alone, so most requests pay one look at each edge), and reports:

* each finding that crosses a meeting point, for the classification (its span is of the
  joined stretch: only its type counts);
* its pieces, as findings of each text it lies in, for the rewrite: each piece is redacted
  or pseudonymised like a finding of that text.

A stretch reaches back and forward ``SEAM`` characters, through texts shorter than that, so
a number cut into three parts is found too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sekisho.classify.findings import Finding

# Characters each side of a meeting point: a card number with separators and its neighbours.
SEAM = 40


def _digit(ch: str) -> bool:
    return "0" <= ch <= "9" or "０" <= ch <= "９"


def _ends_with_digit(text: str) -> bool:
    stripped = text.rstrip()
    return bool(stripped) and _digit(stripped[-1])


def _starts_with_digit(text: str) -> bool:
    stripped = text.lstrip()
    return bool(stripped) and _digit(stripped[0])


Segment = tuple[int, int, int]  # (index of the text, start, end) of a piece of the stretch


def _stretch(texts: Sequence[str], order: list[int], k: int) -> tuple[list[Segment], int]:
    """The segments around the meeting of texts ``order[k]`` and ``order[k + 1]``, and where
    in their join that meeting is."""
    left: list[Segment] = []
    need, j = SEAM, k
    while j >= 0 and need > 0:
        text = texts[order[j]]
        take = min(need, len(text))
        left.append((order[j], len(text) - take, len(text)))
        need -= take
        j -= 1
    left.reverse()
    right: list[Segment] = []
    need, j = SEAM, k + 1
    while j < len(order) and need > 0:
        text = texts[order[j]]
        take = min(need, len(text))
        right.append((order[j], 0, take))
        need -= take
        j += 1
    return left + right, sum(e - s for _, s, e in left)


def across(
    scan: Callable[[str], list[Finding]], texts: Sequence[str]
) -> tuple[list[Finding], dict[int, list[Finding]]]:
    """Findings that cross the meeting of two consecutive texts (spans of no one text: count
    them), and their pieces by the index of the text each lies in."""
    order = [i for i, text in enumerate(texts) if text]
    crossing: list[Finding] = []
    pieces: dict[int, list[Finding]] = {}
    seen: set[tuple[str, tuple[Segment, ...]]] = set()
    for k in range(len(order) - 1):
        if not (_ends_with_digit(texts[order[k]]) and _starts_with_digit(texts[order[k + 1]])):
            continue
        segments, cut = _stretch(texts, order, k)
        joined = "".join(texts[i][s:e] for i, s, e in segments)
        for f in scan(joined):
            if not f.start < cut < f.end:
                continue  # within one text: its own scan found it
            split: list[Segment] = []
            at = 0
            for i, s, e in segments:
                lo, hi = max(f.start, at), min(f.end, at + e - s)
                if lo < hi:
                    split.append((i, s + lo - at, s + hi - at))
                at += e - s
            key = (f.type, tuple(split))
            if key in seen:  # the same number, seen from the next meeting point
                continue
            seen.add(key)
            crossing.append(f)
            for i, s, e in split:
                pieces.setdefault(i, []).append(Finding(f.type, s, e, f.score, f.subtype))
    return crossing, pieces
