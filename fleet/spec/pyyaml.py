"""PyYAML, as every module of fleet imports it.

Importing PyYAML compiles its pure-Python reader's check for unprintable characters, a character class
spanning Unicode: about a third of the import, 6-10 ms of every command that reads a manifest. fleet
parses with libyaml, which checks those characters itself; the pure-Python reader runs only for a document
libyaml cannot take (fleet.spec.yamlsource). So while PyYAML is imported, that one pattern is made a
`LazyPattern`, compiled if the reader ever runs; every other pattern compiles as usual, and nothing stays
replaced after the import.
"""

from __future__ import annotations

import re
import sys

from fleet.spec.lazy_pattern import LazyPattern

# PyYAML's `Reader.NON_PRINTABLE`, as written in yaml/reader.py since 5.1. Another text (a release that
# changes it) compiles as usual: slower, never wrong.
READER_NON_PRINTABLE = "[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010ffff]"


def _import_pyyaml() -> None:
    if "yaml" in sys.modules:
        return
    real_compile = re.compile

    def compile_reader_check_lazily(pattern, flags=0):
        if pattern == READER_NON_PRINTABLE and flags == 0:
            return LazyPattern(pattern)
        return real_compile(pattern, flags)

    re.compile = compile_reader_check_lazily
    try:
        import yaml  # noqa: F401
    finally:
        re.compile = real_compile


_import_pyyaml()

import yaml  # noqa: E402  (imported above, with the reader's check left for its first use)

__all__ = ["yaml"]
