"""A regular expression compiled on its first use."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

_compile = re.compile  # the real one, whoever stands in for `re.compile` later (see fleet.spec.pyyaml)


class LazyPattern:
    """Stands in for a compiled pattern that most runs never use: some patterns cost milliseconds to
    compile (a character class of the whole of Unicode, a dozen secret rules), a command's budget is
    tens of milliseconds, and most commands mask nothing and read no YAML by the pure-Python reader."""

    __slots__ = ("_compiled", "_flags", "_source")

    def __init__(self, source: str, flags: int = 0):
        self._source, self._flags = source, flags
        self._compiled: re.Pattern[str] | None = None

    def _pattern(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._compiled = _compile(self._source, self._flags)
        return self._compiled

    def search(self, text: str, *args: int) -> re.Match[str] | None:
        return self._pattern().search(text, *args)

    def match(self, text: str, *args: int) -> re.Match[str] | None:
        return self._pattern().match(text, *args)

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        return self._pattern().finditer(text)

    def sub(self, replacement: str | Callable[[re.Match[str]], str], text: str) -> str:
        return self._pattern().sub(replacement, text)

    def __getattr__(self, name: str) -> Any:
        """Everything else a compiled pattern has (`pattern`, `flags`, `fullmatch`...), from the compiled one."""
        return getattr(self._pattern(), name)
