"""Regular expressions compiled on first use.

Compiling the detectors' patterns takes tens of milliseconds; doing it at import would make
every ``import sekisho.classify`` (and every CLI start) pay for it. A ``LazyPattern`` compiles
when one of its matching methods is first looked up, then keeps the compiled pattern's own
bound methods in its slots: later calls go straight to C, with no Python frame in between
(the scanner makes dozens of such calls per prompt).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

_DELEGATED = ("finditer", "findall", "search", "match", "fullmatch", "sub")


class LazyPattern:
    __slots__ = ("_compiled", "_flags", "_source", *_DELEGATED)

    # Filled with the compiled pattern's bound methods on first use (see __getattr__).
    finditer: Callable[..., Iterator[re.Match[str]]]
    findall: Callable[..., list[Any]]
    search: Callable[..., re.Match[str] | None]
    match: Callable[..., re.Match[str] | None]
    fullmatch: Callable[..., re.Match[str] | None]
    sub: Callable[..., str]

    def __init__(self, source: str | Callable[[], str], flags: int = 0) -> None:
        self._source = source
        self._flags = flags
        self._compiled: re.Pattern[str] | None = None

    def __getattr__(self, name: str) -> Any:
        # Called only while a delegated slot is still empty, i.e. before the first use.
        if name not in _DELEGATED:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        compiled = self.compiled
        for method in _DELEGATED:
            setattr(self, method, getattr(compiled, method))
        return getattr(compiled, name)

    @property
    def compiled(self) -> re.Pattern[str]:
        if self._compiled is None:
            source = self._source if isinstance(self._source, str) else self._source()
            self._compiled = re.compile(source, self._flags)
        return self._compiled

    @property
    def pattern(self) -> str:
        return self.compiled.pattern

    @property
    def groupindex(self) -> Any:
        return self.compiled.groupindex


def lazy_compile(source: str | Callable[[], str], flags: int = 0) -> LazyPattern:
    return LazyPattern(source, flags)
