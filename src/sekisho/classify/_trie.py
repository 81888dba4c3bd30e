"""Alternations of literal words compiled as a trie.

Python's regex engine tries the branches of ``a|b|c`` one after another at every position.
Nesting the words by shared prefix (``A(?:KIA|SIA|Iza)|M(?:r|s)``) means a position is
rejected after one comparison per distinct first character, and the top level stays a branch
of literals, so the engine can skip positions that cannot start any word.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from sekisho.classify._lazy import LazyPattern


def trie_pattern(words: Iterable[str]) -> str:
    """A regex source matching exactly the given words, longest alternative first."""
    return _build(sorted(set(words)))


def _build(words: list[str]) -> str:
    if not words:
        return ""
    groups: dict[str, list[str]] = {}
    ends_here = False
    for word in words:
        if not word:
            ends_here = True
            continue
        groups.setdefault(word[0], []).append(word[1:])
    if not groups:
        return ""
    branches = []
    for first in sorted(groups):
        rest = _build(groups[first])
        branches.append(re.escape(first) + rest)
    if len(branches) == 1 and not ends_here:
        return branches[0]
    body = "|".join(branches)
    if ends_here:
        return f"(?:{body})?"
    return f"(?:{body})"


def trie_regex(words: Iterable[str] | Callable[[], Iterable[str]]) -> LazyPattern:
    """The trie of ``words`` as a pattern compiled on first use (``words`` may be a callable
    that yields them then, e.g. from a dictionary file)."""
    frozen = None if callable(words) else tuple(words)

    def source() -> str:
        pattern = trie_pattern(frozen if frozen is not None else words())  # type: ignore[operator]
        # Drop the outer group so the top level is a plain branch of literals.
        if pattern.startswith("(?:") and pattern.endswith(")") and _balanced(pattern[3:-1]):
            return pattern[3:-1]
        return pattern

    return LazyPattern(source)


def _balanced(source: str) -> bool:
    depth = 0
    escaped = False
    for ch in source:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0
