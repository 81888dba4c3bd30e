"""Normalisation of the messy forms real Japanese text uses, without losing original offsets.

Detectors match the ORIGINAL text with character classes that already accept every written
form (full-width digits, look-alike dashes, ideographic spaces), so the hot path never copies
the whole text. Only a matched value is folded (``fold``) for validation, which is cheap because
values are short. ``Normalised`` is the general tool for when a whole passage must be folded
(custom term lists): it keeps a map from every normalised position back to the original.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# Regex fragments shared by the detectors (they go inside character classes).
DIGIT = "0-9０-９"
# Hyphen and long-vowel look-alikes seen in real identifiers: ASCII hyphen-minus, hyphen,
# non-breaking hyphen, figure dash, en/em dash, horizontal bar, minus, full-width hyphen-minus,
# katakana long-vowel marks (full and half width), small hyphen-minus.
DASH = "\\-‐‑‒–—―−－ーｰ﹣"
SPACE = " \u3000\u00a0"
UPPER = "A-ZＡ-Ｚ"
LOWER = "a-zａ-ｚ"

FOLD_TABLE: dict[int, int] = {}
for _cp in range(0xFF01, 0xFF5F):  # full-width ASCII block -> ASCII
    FOLD_TABLE[_cp] = _cp - 0xFEE0
for _ch in "‐‑‒–—―−－ーｰ﹣":
    FOLD_TABLE[ord(_ch)] = ord("-")
FOLD_TABLE[0x3000] = 0x20  # ideographic space
FOLD_TABLE[0x00A0] = 0x20
FOLD_TABLE[ord("（")] = ord("(")
FOLD_TABLE[ord("）")] = ord(")")
FOLD_TABLE[ord("＠")] = ord("@")
FOLD_TABLE[ord("．")] = ord(".")
FOLD_TABLE[ord("。")] = ord("。")


def fold(value: str) -> str:
    """Fold full-width ASCII, dash look-alikes and ideographic spaces; length-preserving."""
    if value.isascii():
        return value
    return value.translate(FOLD_TABLE)


_KANJI_DIGIT = {
    "〇": 0,
    "零": 0,
    "一": 1,
    "二": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_KANJI_UNIT = {"十": 10, "百": 100, "千": 1000}
KANJI_NUMERAL = "〇零一二三四五六七八九十百千"


def kanji_to_int(numeral: str) -> int | None:
    """Value of a kanji numeral (``十二``, ``六十三``, ``二〇二四``, ``元``); None if not one.

    Positional forms (``二〇二四``) and unit forms (``千九百八十五``) both occur in dates.
    """
    if numeral == "元":  # 元年: the first year of an era
        return 1
    if not numeral:
        return None
    folded = fold(numeral)
    if folded.isdigit():
        return int(folded)
    if all(ch in _KANJI_DIGIT for ch in numeral):
        return int("".join(str(_KANJI_DIGIT[ch]) for ch in numeral))
    total = 0
    current = 0
    for ch in numeral:
        if ch in _KANJI_DIGIT:
            current = _KANJI_DIGIT[ch]
        elif ch in _KANJI_UNIT:
            total += (current or 1) * _KANJI_UNIT[ch]
            current = 0
        else:
            return None
    return total + current


@dataclass(frozen=True, slots=True)
class Normalised:
    """A folded copy of a text and, for each of its characters, the original offset.

    NFKC-style folding plus case folding, with separators inside runs removed when asked; used
    for term matching where written forms differ (``ＰＲＯＪＥＣＴ−Ｘ`` matches ``project-x``).
    """

    text: str
    offsets: tuple[int, ...]

    @classmethod
    def of(cls, original: str, *, drop_spaces: bool = False) -> Normalised:
        out: list[str] = []
        offsets: list[int] = []
        for index, ch in enumerate(original):
            folded = unicodedata.normalize("NFKC", fold(ch)).casefold()
            if drop_spaces and folded.isspace():
                continue
            for piece in folded:
                out.append(piece)
                offsets.append(index)
        offsets.append(len(original))
        return cls("".join(out), tuple(offsets))

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """Map a span of the normalised text back to the original text (end-exclusive)."""
        return self.offsets[start], self.offsets[end - 1] + 1
