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

from sekisho.classify._person import TooManyCues
from sekisho.classify.findings import Finding

# Characters each side of a meeting point: a card number with separators and its neighbours.
SEAM = 40
# Meetings with digits on both sides read in one request, at most: a request of 60,000
# one-digit parts is not a conversation, and reading all its meetings held a CPU for seconds.
MAX_MEETINGS = 2_000


class TooManyMeetings(TooManyCues):
    """More meetings of digits than are read: the caller fails closed, as for a text too
    dense with names."""


def _digit(ch: str) -> bool:
    return "0" <= ch <= "9" or "０" <= ch <= "９"


# What may stand between digit groups at a cut: spaces and the separators numbers are
# written with ("1234-5678-" | "9018").
_EDGE = " \t\n\r　-‐‑‒–—―−－ー.．/／"


def _ends_with_digit(text: str) -> bool:
    stripped = text.rstrip(_EDGE)
    return bool(stripped) and _digit(stripped[-1])


def _starts_with_digit(text: str) -> bool:
    stripped = text.lstrip(_EDGE)
    return bool(stripped) and _digit(stripped[0])


def _only_digits(text: str) -> bool:
    """A text that is a piece of a number and nothing else ("5678", " 9018 ")."""
    stripped = text.strip(_EDGE)
    return bool(stripped) and all(_digit(c) or c in _EDGE for c in stripped)


_PAIR, _DIGITS, _ANY = 0, 1, 2
Segment = tuple[int, int, int]  # (index of the text, start, end) of a piece of the stretch


def _stretch(
    texts: Sequence[str], order: list[int], k: int, reach: int
) -> tuple[list[Segment], int]:
    """The segments around the meeting of texts ``order[k]`` and ``order[k + 1]``, and where
    in their join that meeting is."""
    # How far beyond the two texts that meet: not at all (_PAIR: a neighbour such as
    # "2 copies" or the start of another number would join its digits to this one's and hide
    # it), through texts that are pieces of a number (_DIGITS: "1234" | "5678" | "9018"), or
    # through whatever is there (_ANY: "マイナンバー 1" | "2" | "3456789018 です").
    left: list[Segment] = []
    need, j = SEAM, k
    while j >= 0 and need > 0:
        text = texts[order[j]]
        if j < k and (reach == _PAIR or (reach == _DIGITS and not _only_digits(text))):
            break
        take = min(need, len(text))
        left.append((order[j], len(text) - take, len(text)))
        need -= take
        j -= 1
    left.reverse()
    right: list[Segment] = []
    need, j = SEAM, k + 1
    while j < len(order) and need > 0:
        text = texts[order[j]]
        if j > k + 1 and (reach == _PAIR or (reach == _DIGITS and not _only_digits(text))):
            break
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
    meetings = 0
    for k in range(len(order) - 1):
        if not (_ends_with_digit(texts[order[k]]) and _starts_with_digit(texts[order[k + 1]])):
            continue
        meetings += 1
        if meetings > MAX_MEETINGS:
            raise TooManyMeetings(
                f"more than {MAX_MEETINGS} places where the request's texts meet between "
                "digits; at most that many are read"
            )
        # Widest first: a number the wider stretch reads whole (a card) is not read again,
        # in part, as another (a My Number inside it) by a narrower one.
        for reach in (_ANY, _DIGITS, _PAIR):
            segments, cut = _stretch(texts, order, k, reach)
            _read_stretch(scan, texts, segments, cut, crossing, pieces, seen)
    return crossing, pieces


def _read_stretch(
    scan: Callable[[str], list[Finding]],
    texts: Sequence[str],
    segments: list[Segment],
    cut: int,
    crossing: list[Finding],
    pieces: dict[int, list[Finding]],
    seen: set[tuple[str, tuple[Segment, ...]]],
) -> None:
    """Scan one stretch; add what crosses its meeting point (once, whichever stretch saw it)."""
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
        if any(s < g.end and g.start < e for i, s, e in split for g in pieces.get(i, ())):
            continue  # part of a number already read whole
        seen.add(key)
        crossing.append(f)
        for i, s, e in split:
            pieces.setdefault(i, []).append(Finding(f.type, s, e, f.score, f.subtype))
