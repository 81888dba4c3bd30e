"""Name dictionaries shipped with the package (data/*.txt), loaded once on first use."""

from __future__ import annotations

from functools import cache


def _words(filename: str) -> frozenset[str]:
    from importlib import resources  # here, not at import: it costs ~10 ms to import

    text = (
        resources.files("sekisho.classify").joinpath("data").joinpath(filename).read_text("utf-8")
    )
    words: set[str] = set()
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        words.update(line.split())
    return frozenset(words)


@cache
def surnames_ja() -> frozenset[str]:
    return _words("surnames_ja.txt")


@cache
def given_ja() -> frozenset[str]:
    return _words("given_ja.txt")


@cache
def given_en() -> frozenset[str]:
    return _words("given_en.txt")


@cache
def surnames_en() -> frozenset[str]:
    return _words("surnames_en.txt")


@cache
def romanised_upper() -> frozenset[str]:
    """Upper-case romanised names, for travel records written ``YAMADA/TARO``."""
    return frozenset(w.upper() for w in given_en() | surnames_en() if w.isascii())
