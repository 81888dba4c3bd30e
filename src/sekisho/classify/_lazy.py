"""Regular expressions compiled on first use.

Compiling the detectors' patterns takes tens of milliseconds; doing it at import would make
every ``import sekisho.classify`` (and every CLI start) pay for it. A ``LazyPattern`` compiles
when a method is first called and then delegates to the compiled pattern.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any


class LazyPattern:
    __slots__ = ("_compiled", "_flags", "_source")

    def __init__(self, source: str | Callable[[], str], flags: int = 0) -> None:
        self._source = source
        self._flags = flags
        self._compiled: re.Pattern[str] | None = None

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

    def finditer(self, string: str, pos: int = 0, endpos: int = 2**62) -> Iterator[re.Match[str]]:
        return self.compiled.finditer(string, pos, endpos)

    def findall(self, string: str, pos: int = 0, endpos: int = 2**62) -> list[Any]:
        return self.compiled.findall(string, pos, endpos)

    def search(self, string: str, pos: int = 0, endpos: int = 2**62) -> re.Match[str] | None:
        return self.compiled.search(string, pos, endpos)

    def match(self, string: str, pos: int = 0, endpos: int = 2**62) -> re.Match[str] | None:
        return self.compiled.match(string, pos, endpos)

    def fullmatch(self, string: str, pos: int = 0, endpos: int = 2**62) -> re.Match[str] | None:
        return self.compiled.fullmatch(string, pos, endpos)

    def sub(self, repl: str | Callable[[re.Match[str]], str], string: str, count: int = 0) -> str:
        result: str = self.compiled.sub(repl, string, count)
        return result


def lazy_compile(source: str | Callable[[], str], flags: int = 0) -> LazyPattern:
    return LazyPattern(source, flags)
