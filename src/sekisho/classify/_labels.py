"""Confidentiality markers written into documents: 【社外秘】, 極秘, 取扱注意, CONFIDENTIAL, ...

The span is the marker as written, brackets included (``【社外秘】``), because the bracketed
form is the conventional stamp in Japanese business documents. A marker that names one of the
government's classes (機密性2, 機密性３) carries that class as its subtype (``機密性2``): the
document states its own level, which the policy then takes as at least the request's level.
"""

from __future__ import annotations

from sekisho.classify._lazy import LazyPattern
from sekisho.classify._trie import trie_regex
from sekisho.classify.findings import CONFIDENTIAL_LABEL, Finding

JP_LABELS: tuple[str, ...] = (
    "関係者外秘",
    "社外秘",
    "部外秘",
    "課外秘",
    "極秘",
    "厳秘",
    "秘密",
    "機密情報",
    "機密",
    "マル秘",
    "取扱注意",
    "取り扱い注意",
    "取扱い注意",
    "社内限り",
    "社内限定",
    "関係者限り",
    "部内限り",
    "持出禁止",
    "複製禁止",
    "機密性３",
    "機密性2",
    "機密性２",
    "機密性3",
    "要配慮個人情報",
)
EN_LABELS: tuple[str, ...] = (
    "STRICTLY CONFIDENTIAL",
    "Strictly Confidential",
    "CONFIDENTIAL",
    "Confidential",
    "INTERNAL USE ONLY",
    "Internal Use Only",
    "FOR INTERNAL USE ONLY",
    "For Internal Use Only",
    "TOP SECRET",
    "Top Secret",
    "RESTRICTED",
    "PROPRIETARY",
    "Proprietary and Confidential",
    "PROPRIETARY AND CONFIDENTIAL",
    "DO NOT DISTRIBUTE",
    "Do Not Distribute",
)


# Every built-in marker contains one of these; text with none of them skips the regex.
_GATE: tuple[str, ...] = (
    "秘", "機密", "取扱", "取り扱い", "限り", "限定", "禁止", "要配慮", "onfidential",
    "ONFIDENTIAL", "nternal", "NTERNAL", "ECRET", "ecret", "ESTRICTED", "roprietary",
    "ROPRIETARY", "istribute", "ISTRIBUTE",
)  # fmt: skip


def build_label_pattern(extra: tuple[str, ...] = ()) -> LazyPattern:
    """The marker regex; ``extra`` holds a tenant's own words (its labels dictionary)."""
    words = JP_LABELS + EN_LABELS + tuple(extra)
    opening, closing = "【[［〔(（<＜", "】]］〕)）>＞"
    bracketed = [o + w + c for w in words for o, c in zip(opening, closing, strict=True)]
    # One trie of literals: bracketed forms are longer, so 【社外秘】 wins over 社外秘.
    return trie_regex([*bracketed, *words])


_DEFAULT = build_label_pattern()
_SCORE_BRACKETED = 0.95
_SCORE_BARE = 0.75
# Bare words that are common in ordinary prose score lower unless they stand alone on a line.
_WEAK_BARE = frozenset({"秘密", "機密", "Confidential", "Proprietary", "RESTRICTED"})


def detect_labels(
    text: str,
    out: list[Finding],
    pattern: LazyPattern | None = None,
    gate: tuple[str, ...] = _GATE,
) -> None:
    if gate and not any(word in text for word in gate):
        return
    for match in (pattern or _DEFAULT).finditer(text):
        value = match.group()
        start, end = match.span()
        if value[-1].isascii() and value[-1].isalpha():
            if start > 0 and text[start - 1].isalnum() and text[start - 1].isascii():
                continue
            if text[end : end + 1].isalnum() and text[end : end + 1].isascii():
                continue
        stated = _stated_level(value)
        if value[0] in "【[［〔(（<＜":
            out.append(Finding(CONFIDENTIAL_LABEL, start, end, _SCORE_BRACKETED, stated))
            continue
        score = _SCORE_BARE
        if value in _WEAK_BARE:
            line_start = text.rfind("\n", 0, start) + 1
            line_end = text.find("\n", end)
            line = text[line_start : line_end if line_end >= 0 else len(text)]
            score = 0.8 if line.strip(" \u3000:：-—*#") == value else 0.4
        out.append(Finding(CONFIDENTIAL_LABEL, start, end, score, stated))


def _stated_level(marker: str) -> str | None:
    """``機密性2`` or ``機密性3`` for a marker naming that class (half- or full-width digit)."""
    at = marker.find("機密性")
    if at < 0:
        return None
    digit = marker[at + 3 : at + 4]
    return {"2": "機密性2", "２": "機密性2", "3": "機密性3", "３": "機密性3"}.get(digit)
