"""A second look at text whose identifiers are written so that the detectors' patterns miss them.

The detectors read the original text with character classes that already accept the common
written forms (full-width digits, dash look-alikes, ideographic spaces). Some forms they cannot
accept without reading every text differently, and each of them turns a My Number or a card
number into something no pattern matches while a person (or a model) still reads the number:

* invisible characters between the digits: zero-width spaces and joiners, the soft hyphen,
  word joiners, bidirectional marks, the byte-order mark;
* digits of other scripts and forms: Arabic-Indic, Devanagari, mathematical bold, circled (①),
  superscript;
* kanji digits in a run (一二三四 五六七八 九〇一八), as vertical Japanese text writes numbers;
* digit groups broken by tabs or line breaks (a number pasted from a table or a form), joined
  by underscores, or grouped by fours with commas;
* a URL's or a form's encoding of the separators (``?mynumber=1234+5678+9018``, ``%20``,
  ``%2D``, ``%2B81``), as access logs and pasted links write them.

``views(text)`` finds where any of these occur and returns, for each stretch of text around
them, a copy with the disguise undone (invisible characters dropped, digits made ASCII; tabs,
line breaks, underscores, commas and URL-encoded spaces between digits made spaces, %2D and
%2B the dash and plus they encode) and a map from each copy position back to the original.
The scanner scans these copies too and reports what it finds there as spans of the original
text, so a redaction covers the disguised value whole. Text without any of these forms costs
one regex search (two where it holds a "%" or a "+").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from sekisho.classify._text import DASH, SPACE

# Invisible characters: soft hyphen, combining grapheme joiner, Arabic letter mark, Hangul
# fillers, Khmer vowel inherents, Mongolian variation selectors and vowel separator, zero-width
# space/non-joiner/joiner and directional marks, bidirectional embeddings and isolates, word
# joiner and invisible operators, the byte-order mark.
_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
)
_INVISIBLE_SET = frozenset(chr(c) for lo, hi in _INVISIBLE_RANGES for c in range(lo, hi + 1))
_KANJI_DIGITS = {"〇": "0", "一": "1", "二": "2", "三": "3", "四": "4"}
_KANJI_DIGITS |= {"五": "5", "六": "6", "七": "7", "八": "8", "九": "9"}
_BREAKS = "\t\n\r\v\f"
_ASCII_OR_WIDE_DIGIT = "0-9０-９"

# Characters with a digit value other than ASCII and full-width digits (Unicode 14, as
# Python 3.11's unicodedata): other scripts' decimal digits, mathematical digits, superscripts,
# subscripts, circled and parenthesised digits, dingbats. Listed, not computed: computing them
# means asking unicodedata about every code point at start-up.
_OTHER_DIGITS = (
    (0x00B2, 0x00B3),
    (0x00B9, 0x00B9),
    (0x0660, 0x0669),
    (0x06F0, 0x06F9),
    (0x07C0, 0x07C9),
    (0x0966, 0x096F),
    (0x09E6, 0x09EF),
    (0x0A66, 0x0A6F),
    (0x0AE6, 0x0AEF),
    (0x0B66, 0x0B6F),
    (0x0BE6, 0x0BEF),
    (0x0C66, 0x0C6F),
    (0x0CE6, 0x0CEF),
    (0x0D66, 0x0D6F),
    (0x0DE6, 0x0DEF),
    (0x0E50, 0x0E59),
    (0x0ED0, 0x0ED9),
    (0x0F20, 0x0F29),
    (0x1040, 0x1049),
    (0x1090, 0x1099),
    (0x1369, 0x1371),
    (0x17E0, 0x17E9),
    (0x1810, 0x1819),
    (0x1946, 0x194F),
    (0x19D0, 0x19DA),
    (0x1A80, 0x1A89),
    (0x1A90, 0x1A99),
    (0x1B50, 0x1B59),
    (0x1BB0, 0x1BB9),
    (0x1C40, 0x1C49),
    (0x1C50, 0x1C59),
    (0x2070, 0x2070),
    (0x2074, 0x2079),
    (0x2080, 0x2089),
    (0x2460, 0x2468),
    (0x2474, 0x247C),
    (0x2488, 0x2490),
    (0x24EA, 0x24EA),
    (0x24F5, 0x24FD),
    (0x24FF, 0x24FF),
    (0x2776, 0x277E),
    (0x2780, 0x2788),
    (0x278A, 0x2792),
    (0xA620, 0xA629),
    (0xA8D0, 0xA8D9),
    (0xA900, 0xA909),
    (0xA9D0, 0xA9D9),
    (0xA9F0, 0xA9F9),
    (0xAA50, 0xAA59),
    (0xABF0, 0xABF9),
    (0x104A0, 0x104A9),
    (0x10A40, 0x10A43),
    (0x10D30, 0x10D39),
    (0x10E60, 0x10E68),
    (0x11052, 0x1105A),
    (0x11066, 0x1106F),
    (0x110F0, 0x110F9),
    (0x11136, 0x1113F),
    (0x111D0, 0x111D9),
    (0x112F0, 0x112F9),
    (0x11450, 0x11459),
    (0x114D0, 0x114D9),
    (0x11650, 0x11659),
    (0x116C0, 0x116C9),
    (0x11730, 0x11739),
    (0x118E0, 0x118E9),
    (0x11950, 0x11959),
    (0x11C50, 0x11C59),
    (0x11D50, 0x11D59),
    (0x11DA0, 0x11DA9),
    (0x16A60, 0x16A69),
    (0x16AC0, 0x16AC9),
    (0x16B50, 0x16B59),
    (0x1D7CE, 0x1D7FF),
    (0x1E140, 0x1E149),
    (0x1E2F0, 0x1E2F9),
    (0x1E950, 0x1E959),
    (0x1F100, 0x1F10A),
    (0x1FBF0, 0x1FBF9),
)


def _char_class(ranges: tuple[tuple[int, int], ...]) -> str:
    return "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)


# Any one of the disguises. One character class for every single-character disguise (a regex
# scans for a class at C speed; alternatives tried at every position cost ~20x more), then
# kanji digit runs and digits broken by tabs or line breaks.
_SINGLE = re.compile(f"[{_char_class(_INVISIBLE_RANGES + _OTHER_DIGITS)}]")
# Digits broken by tabs or line breaks, joined by underscores (1234_5678_9018), or grouped by
# fours with commas (1234,5678,9018: amounts group by threes, and are left alone).
_D = _ASCII_OR_WIDE_DIGIT
# One alternation after a leading digit class: the engine skips to digits at C speed, as it did
# for breaks alone (an alternation of whole patterns cost ~5x: 80 µs per 1,200 characters).
# A separator may end the line before the break ("1234-5678-" / "9018", a form that wrapped):
# the break is then dropped in the view, so the number reads as its separators write it.
_LINE_END_SEP = f"{DASH}{SPACE}"
_LINE_END_SEP_CHARS = frozenset(_LINE_END_SEP.replace("\\", ""))  # DASH escapes its "-"
_BROKEN = re.compile(
    rf"[{_D}](?:[{_LINE_END_SEP}]{{0,2}}[{_BREAKS}]+|_+|(?<=[{_D}]{{4}})[,，](?=[{_D}]{{4}}))"
    rf"[{_D}]"
)
_JOINERS = "_,，"  # between digits, read as a space in a view
# A URL's or a form's encoding of what is written around and between digits: a space as %20
# or + (?mynumber=1234+5678+9018), a dash as %2D, the + of an international number as %2B.
_URL_ESCAPES = {"%20": " ", "%2D": "-", "%2d": "-", "%2B": "+", "%2b": "+"}
_URL_ENCODED = re.compile(rf"%2[0BDbd](?=[{_D}])|(?<=[{_D}]{{3}})\+(?=[{_D}]{{3}})")
# JSON written with ASCII escapes (json.dumps' default, structlog): a full-width digit as
# \uff11, an ideographic space as \u3000. A view reads every \uXXXX escape around them.
_JSON_ESCAPED = re.compile(r"\\u(?:[fF][fF]1[0-9]|3000)")
_JSON_ESCAPE = re.compile(r"\\u([0-9A-Fa-f]{4})")


# What most text is written in, none of it a disguise: ASCII, Latin-1 but for the soft hyphen
# and superscripts, Latin to IPA, typographic punctuation (dashes, quotes, ellipsis), symbols,
# arrows, box drawing, CJK punctuation, kana and ideographs, Hangul syllables, half- and
# full-width forms, emoji. A text holding only these skips ``_SINGLE`` (a class of ~90 ranges,
# slow to scan): one search of this short class instead.
_COMMON = (
    "\x00-\xac\xae-\xb1\xb4-\xb8\xba-\u02ff\u2010-\u2027\u2030-\u205f\u20a0-\u245f"
    "\u2500-\u2775\u2794-\u2fff\u3000-\u4dbf\u4e00-\u9fff\uac00-\ufefe\uff00-\uffef"
    "\U0001f110-\U0001fbef\U0001fbfa-\U0010ffff"
)
_RARE = re.compile(f"[^{_COMMON}]")
_KANJI4 = re.compile("[〇一二三四五六七八九]" * 4)  # spelled out: ~2x faster than {4}


def _first(text: str) -> int | None:
    """Where the first disguise starts, or None."""
    found = [m.start() for m in (_BROKEN.search(text),) if m is not None]
    if "%" in text or "+" in text:
        found += [m.start() for m in (_URL_ENCODED.search(text),) if m is not None]
    if "\\u" in text:
        found += [m.start() for m in (_JSON_ESCAPED.search(text),) if m is not None]
    if not text.isascii():
        found += [m.start() for m in (_KANJI4.search(text),) if m is not None]
        rare = _RARE.search(text)
        if rare is not None:
            found += [m.start() for m in (_SINGLE.search(text, rare.start()),) if m is not None]
    return min(found) if found else None


def _all(text: str, start: int) -> list[tuple[int, int]]:
    spans = [m.span() for m in _BROKEN.finditer(text, start)]
    if "%" in text or "+" in text:
        spans += [m.span() for m in _URL_ENCODED.finditer(text, start)]
    if "\\u" in text:
        spans += [m.span() for m in _JSON_ESCAPED.finditer(text, start)]
    if not text.isascii():
        spans += [m.span() for m in _KANJI4.finditer(text, start)]
        rare = _RARE.search(text, start)
        if rare is not None:
            spans += [m.span() for m in _SINGLE.finditer(text, rare.start())]
    return sorted(spans)


_KANJI_RUN = re.compile(r"[〇一二三四五六七八九]{4,}")

# Characters on each side of a disguise that a view keeps: the longest identifier a detector
# reads (an IBAN, 34 characters, or a card number with separators) and its cue words fit.
WINDOW = 64


@dataclass(frozen=True, slots=True)
class View:
    """A copy of ``original[start:end]`` with the disguises undone; ``text[i]`` stands for
    ``original[offsets[i]:ends[i]]`` (one character, or an escape such as %2D or \\uff11)."""

    text: str
    offsets: tuple[int, ...]
    ends: tuple[int, ...]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of ``text[start:end]`` (end-exclusive)."""
        return self.offsets[start], self.ends[end - 1]


def views(text: str) -> list[View]:
    """Copies of the stretches of ``text`` around each disguise, disguises undone; [] when
    there is none."""
    first = _first(text)
    if first is None:
        return []
    stretches: list[list[int]] = []
    for start, end in _all(text, first):
        lo, hi = max(0, start - WINDOW), min(len(text), end + WINDOW)
        if stretches and lo <= stretches[-1][1]:
            stretches[-1][1] = max(stretches[-1][1], hi)
        else:
            stretches.append([lo, hi])
    return [_undo(text, lo, hi) for lo, hi in stretches]


def _undo(text: str, lo: int, hi: int) -> View:
    kanji = {i for m in _KANJI_RUN.finditer(text, lo, hi) for i in range(m.start(), m.end())}
    out: list[str] = []
    offsets: list[int] = []
    ends: list[int] = []
    joining = False  # inside a run of line breaks between two digits: one space stands for it
    escaped = -1  # the last character of an escape (%2D, \\uff11) read as one character
    for i in range(lo, hi):
        ch = text[i]
        if ch in _INVISIBLE_SET or i <= escaped:
            continue
        end = i + 1
        if ch in _BREAKS:
            if joining:
                continue
            if out and _is_digit(out[-1]) and _digit_follows(text, i + 1, hi):
                ch, joining = " ", True
            elif _after_separated_digit(out) and _digit_follows(text, i + 1, hi):
                joining = True  # "5678-" then a break: the separator already stands for it
                continue
        elif ch in _JOINERS and out and _is_digit(out[-1]) and _digit_follows(text, i + 1, hi):
            ch, joining = " ", False
        elif ch == "%" and text[i : i + 3] in _URL_ESCAPES and _digit_follows(text, i + 3, hi):
            ch, joining, escaped, end = _URL_ESCAPES[text[i : i + 3]], False, i + 2, i + 3
        elif ch == "\\" and (escape := _JSON_ESCAPE.match(text, i, hi)) is not None:
            code = int(escape.group(1), 16)
            if not 0xD800 <= code <= 0xDFFF:  # half of a surrogate pair is left as written
                ch, joining, escaped, end = chr(code), False, i + 5, i + 6
        elif ch == "+" and out and _is_digit(out[-1]) and _digit_follows(text, i + 1, hi):
            ch, joining = " ", False  # a form's space between digit groups
        else:
            joining = False
            if i in kanji:
                ch = _KANJI_DIGITS[ch]
            elif not ch.isascii():
                value = unicodedata.digit(ch, None)
                if value is not None:
                    ch = str(value)
        out.append(ch)
        offsets.append(i)
        ends.append(end)
    offsets.append(hi)
    return View("".join(out), tuple(offsets), tuple(ends))


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9" or "０" <= ch <= "９"


def _after_separated_digit(out: list[str]) -> bool:
    """Whether ``out`` ends in a digit and one or two separators ("5678-", "5678 ")."""
    seps = 0
    while seps < len(out) and out[-1 - seps] in _LINE_END_SEP_CHARS:
        seps += 1
    return 1 <= seps <= 2 and seps < len(out) and _is_digit(out[-1 - seps])


def _digit_follows(text: str, i: int, hi: int) -> bool:
    """Whether the next character after line breaks and invisible ones is a digit."""
    while i < hi and (text[i] in _BREAKS or text[i] in _INVISIBLE_SET):
        i += 1
    return i < hi and (_is_digit(text[i]) or unicodedata.digit(text[i], None) is not None)
