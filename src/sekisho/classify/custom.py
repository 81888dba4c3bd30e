"""Per-tenant custom rules: project code names, customer lists, internal identifiers.

A rule is either a list of terms or a regular expression. Terms match however they are
written (full-width or half-width, upper or lower case, any dash look-alike, ideographic
spaces): each term is compiled into a regex whose character classes already accept every
form, so matching costs one regex pass on the original text and spans index it directly.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sekisho.classify._text import DASH, SPACE
from sekisho.classify.findings import CUSTOM, Finding

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@cache
def _variants() -> dict[str, set[str]]:
    """Every character that folds (NFKC + casefold) to a given ASCII or katakana character."""
    variants: dict[str, set[str]] = {}
    for cp in [*range(0x21, 0x7F), *range(0xFF01, 0xFF5F), *range(0xFF61, 0xFFA0)]:
        ch = chr(cp)
        key = unicodedata.normalize("NFKC", ch).casefold()
        if len(key) == 1:
            variants.setdefault(key, {key}).add(ch)
            if ch.isascii() and ch.isalpha():
                variants[key].add(ch.upper())
    return variants


def _char_class(ch: str) -> str:
    # DASH is the body of a regex class: its backslash only escapes the hyphen, it is no dash.
    if ch == "-" or (ch != "\\" and ch in DASH):
        return f"[{DASH}]"
    if ch.isspace():
        return f"[{SPACE}]+"
    variants = _variants().get(ch)
    if not variants or len(variants) == 1:
        return re.escape(ch)
    return "[" + "".join(re.escape(v) for v in sorted(variants)) + "]"


_WORD = "A-Za-z0-9Ａ-Ｚａ-ｚ０-９"


def _term_parts(term: str) -> tuple[str, str]:
    """The class of ``term``'s first character and a regex for the rest, which checks (behind
    it) that the term does not start or end inside a word."""
    key = unicodedata.normalize("NFKC", term).casefold().strip()
    first = _char_class(key[0])
    rest = "".join(_char_class(ch) for ch in key[1:])
    if key[:1].isascii() and key[:1].isalnum():
        rest = rf"(?<![{_WORD}].)" + rest
    if key[-1:].isascii() and key[-1:].isalnum():
        rest += rf"(?![{_WORD}])"
    return first, rest


def term_pattern(term: str) -> str:
    """A regex source that matches ``term`` in any width, case and dash form."""
    first, rest = _term_parts(term)
    return first + rest


def _terms_pattern(terms: Sequence[str]) -> str:
    """One regex for many terms, longest first. It opens with one class of every first
    character, so the regex engine skips the text between them at C speed (an alternation of
    terms opening with classes or look-behinds would be tried at every position); each
    alternative then checks, behind it, that its own first character was the one read."""
    parts = [_term_parts(t) for t in sorted(terms, key=len, reverse=True)]
    firsts = "".join(sorted({_class_body(first) for first, _ in parts}))
    alternatives = "|".join(f"(?<={first}){rest}" for first, rest in parts)
    return f"[{firsts}](?:{alternatives})"


def _class_body(char_class: str) -> str:
    """What goes inside [...] for one character class from _char_class."""
    if char_class.startswith("[") and char_class.endswith("]"):
        return char_class[1:-1]
    return char_class  # an escaped literal


@dataclass(frozen=True, slots=True)
class CustomRule:
    """A tenant's own rule. Findings have type CUSTOM and ``subtype`` = ``name``.

    Give exactly one of ``terms`` (matched with normalisation) or ``pattern`` (a Python regex,
    matched as written; keep it free of nested quantifiers, it runs on every prompt).
    """

    name: str
    terms: Sequence[str] = field(default=())
    pattern: str | None = None
    score: float = 0.9

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"custom rule name {self.name!r} must be 1-64 characters of letters, digits, "
                "'_', '.', '-' (it appears in findings and the ledger)"
            )
        if isinstance(self.terms, str):
            raise ValueError(f"custom rule {self.name!r}: terms must be a list, not one string")
        if bool(self.terms) == (self.pattern is not None):
            raise ValueError(
                f"custom rule {self.name!r} needs exactly one of 'terms' (a list) or 'pattern'"
            )
        if any(not t.strip() for t in self.terms):
            raise ValueError(f"custom rule {self.name!r}: terms must not be empty strings")
        if self.pattern is not None:
            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(
                    f"custom rule {self.name!r}: pattern {self.pattern!r} is not a valid "
                    f"regular expression: {exc}"
                ) from None
            if compiled.match(""):
                raise ValueError(
                    f"custom rule {self.name!r}: pattern {self.pattern!r} matches the empty "
                    "string, which would match everywhere"
                )
        if not 0.0 < self.score <= 1.0:
            raise ValueError(f"custom rule {self.name!r}: score must be in (0, 1]")

    def compile(self) -> re.Pattern[str]:
        if self.pattern is not None:
            return re.compile(self.pattern)
        return re.compile(_terms_pattern(self.terms))


class CustomDetector:
    def __init__(self, rules: Sequence[CustomRule]) -> None:
        names = [r.name for r in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"custom rule names must be unique; repeated: {', '.join(duplicates)}")
        self._rules = [(rule, rule.compile()) for rule in rules]

    def detect(self, text: str, out: list[Finding]) -> None:
        for rule, pattern in self._rules:
            for match in pattern.finditer(text):
                if match.end() > match.start():
                    out.append(Finding(CUSTOM, match.start(), match.end(), rule.score, rule.name))


def rules_from_config(
    section: Mapping[str, Any], where: str = "classification"
) -> tuple[list[CustomRule], list[str]]:
    """Custom rules and extra labels from a tenant's ``classification:`` config section.

    Errors are ``ValueError`` naming the key path (``classification.custom[1].pattern``), so
    the config loader can report file, key and reason.
    """
    if not isinstance(section, Mapping):
        raise ValueError(f"{where}: expected a mapping with 'custom' and/or 'labels'")
    unknown = sorted(set(section) - {"custom", "labels"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: custom, labels")
    rules: list[CustomRule] = []
    custom = section.get("custom") or []
    if not isinstance(custom, list):
        raise ValueError(f"{where}.custom: expected a list of rules")
    for index, item in enumerate(custom):
        path = f"{where}.custom[{index}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{path}: expected a mapping with name and terms or pattern")
        extra = sorted(set(item) - {"name", "terms", "pattern", "score"})
        if extra:
            raise ValueError(f"{path}: unknown key(s) {', '.join(extra)}")
        terms = item.get("terms") or ()
        if not isinstance(terms, list | tuple) or not all(isinstance(t, str) for t in terms):
            raise ValueError(f"{path}.terms: expected a list of strings")
        try:
            rules.append(
                CustomRule(
                    name=str(item.get("name", "")),
                    terms=tuple(terms),
                    pattern=item.get("pattern"),
                    score=float(item.get("score", 0.9)),
                )
            )
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
    labels = section.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(w, str) and w for w in labels):
        raise ValueError(f"{where}.labels: expected a list of non-empty strings")
    CustomDetector(rules)  # duplicate names are an error here, not at the first request
    return rules, list(labels)
