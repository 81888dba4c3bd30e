"""What the gateway does with findings: count them, redact them, pseudonymise them.

``summarise`` is what the ledger and incidents receive: types and counts, never values.
``redact`` replaces each value with its type token (``[MY_NUMBER]``). ``Pseudonymiser``
replaces each distinct value with a placeholder that is stable within a conversation
(``<PERSON_1>``), so the model can still reason about who is who, and restores the values in
the model's answer. Its mapping holds the personal data and must stay in the tenant's home
region (store it there; never send it upstream or to the ledger).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

from sekisho.classify._lazy import lazy_compile
from sekisho.classify._text import fold
from sekisho.classify.findings import CONFIDENTIAL_LABEL, TYPES, Finding
from sekisho.types import Level


def summarise(findings: Iterable[Finding]) -> dict[str, int]:
    """Type → number of findings; safe to record anywhere (no values, no offsets)."""
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.type] = counts.get(f.type, 0) + 1
    return counts


def marked_level(findings: Iterable[Finding]) -> Level | None:
    """The highest class a marking in the text names (【機密性3】: restricted), or None."""
    marked: Level | None = None
    for f in findings:
        if f.type == CONFIDENTIAL_LABEL and f.subtype is not None:
            level = Level.parse(f.subtype)
            if marked is None or level > marked:
                marked = level
    return marked


def _ordered(findings: Iterable[Finding], length: int) -> list[Finding]:
    """Findings by start, dropping any that overlap an earlier one or fall outside the text."""
    kept: list[Finding] = []
    last_end = 0
    for finding in sorted(findings, key=lambda f: (f.start, -f.end)):
        if finding.start < last_end or finding.end > length:
            continue
        kept.append(finding)
        last_end = finding.end
    return kept


def redact(text: str, findings: Iterable[Finding]) -> str:
    """``text`` with every finding replaced by its type token, e.g. ``[PHONE_JP]``."""
    parts: list[str] = []
    pos = 0
    for finding in _ordered(findings, len(text)):
        parts.append(text[pos : finding.start])
        parts.append(f"[{finding.type}]")
        pos = finding.end
    parts.append(text[pos:])
    return "".join(parts)


_TYPE_ALTERNATION = "|".join(sorted(TYPES, key=len, reverse=True))
# Models sometimes echo placeholders with full-width brackets; accept both.
PLACEHOLDER = lazy_compile(rf"[<＜]((?:{_TYPE_ALTERNATION})_[0-9]{{1,6}})[>＞]")
PLACEHOLDER_MAX_LEN = max(len(t) for t in TYPES) + 9
# Inside JSON text a server may write the brackets as escapes: Go's encoding/json (Ollama's
# OpenAI-compatible API) writes '<' as \u003c, an ensure_ascii writer '＜' as \uff1c.
JSON_PLACEHOLDER = lazy_compile(
    rf"(?:[<＜]|\\u003[cC]|\\u[fF][fF]1[cC])((?:{_TYPE_ALTERNATION})_[0-9]{{1,6}})"
    r"(?:[>＞]|\\u003[eE]|\\u[fF][fF]1[eE])"
)
JSON_PLACEHOLDER_MAX_LEN = PLACEHOLDER_MAX_LEN + 10


class Pseudonymiser:
    """Consistent placeholders for the values of one conversation, and their reversal.

    ``mapping`` (placeholder → original value) is what to store, in the home region, to
    continue the conversation later: ``Pseudonymiser(stored_mapping)``.
    """

    def __init__(
        self, mapping: Mapping[str, str] | None = None, *, numbered: Mapping[str, int] | None = None
    ) -> None:
        self._by_placeholder: dict[str, str] = {}
        self._by_value: dict[tuple[str, str], str] = {}
        # ``numbered``: numbers a conversation used before, whose values are not known here
        # (a conversation kept at a provider): new values are numbered after them.
        self._counters: Counter[str] = Counter(numbered or {})
        for placeholder, value in (mapping or {}).items():
            match = PLACEHOLDER.fullmatch(placeholder)
            if match is None or not isinstance(value, str):
                raise ValueError(
                    f"stored pseudonym mapping has an invalid entry {placeholder!r}: keys must "
                    "look like <PERSON_1> and values must be strings"
                )
            type_, _, number = match.group(1).rpartition("_")
            self._by_placeholder[placeholder] = value
            self._by_value[(type_, _key(value))] = placeholder
            self._counters[type_] = max(self._counters[type_], int(number))

    @property
    def numbered(self) -> dict[str, int]:
        """Per type, the highest placeholder number used so far (with those it started after)."""
        return {t: n for t, n in self._counters.items() if n > 0}

    @property
    def mapping(self) -> dict[str, str]:
        """Placeholder → original value (a copy): personal data, keep it in the home region."""
        return dict(self._by_placeholder)

    def placeholder_for(self, type_: str, value: str) -> str:
        key = (type_, _key(value))
        existing = self._by_value.get(key)
        if existing is not None:
            return existing
        self._counters[type_] += 1
        placeholder = f"<{type_}_{self._counters[type_]}>"
        self._by_value[key] = placeholder
        self._by_placeholder[placeholder] = value
        return placeholder

    def pseudonymise(self, text: str, findings: Sequence[Finding]) -> str:
        """``text`` with each finding replaced by its value's placeholder."""
        parts: list[str] = []
        pos = 0
        for finding in _ordered(findings, len(text)):
            parts.append(text[pos : finding.start])
            parts.append(self.placeholder_for(finding.type, text[finding.start : finding.end]))
            pos = finding.end
        parts.append(text[pos:])
        return "".join(parts)

    def reidentify(self, text: str, escape: Callable[[str], str] | None = None) -> str:
        """Restore the original values for every known placeholder in ``text``; ``escape``
        encodes each value for where it lands (inside a JSON string, say). With ``escape``,
        ``text`` is JSON, and a placeholder whose brackets are JSON escapes is restored too."""
        pattern = PLACEHOLDER if escape is None else JSON_PLACEHOLDER
        if "<" not in text and "＜" not in text and (escape is None or "\\u" not in text):
            return text

        def restore(match: re.Match[str]) -> str:
            value = self._by_placeholder.get(f"<{match.group(1)}>")
            if value is None:
                return match.group()
            return value if escape is None else escape(value)

        return pattern.sub(restore, text)


def _key(value: str) -> str:
    """Values that differ only in width or spacing are the same value (１２３ == 123)."""
    return fold(value).replace(" ", "").casefold()
