"""PyYAML as fleet imports it: the pure-Python reader's check for unprintable characters is compiled on
its first use, refuses exactly what PyYAML's own pattern refuses, and `re.compile` is the standard one
again once the import is done. Each case runs in a fresh interpreter, where fleet imports PyYAML first."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import json, re, sys
    real_compile = re.compile
    from fleet.spec.pyyaml import READER_NON_PRINTABLE, yaml
    from fleet.spec.lazy_pattern import LazyPattern
    reader_check = yaml.reader.Reader.NON_PRINTABLE
    lazy_at_first = isinstance(reader_check, LazyPattern)
    own = real_compile(READER_NON_PRINTABLE)
    # Every character class boundary of the pattern, each side of it, and a spread of the rest.
    edges = [0x00, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x1F, 0x20, 0x7E, 0x7F, 0x84, 0x85, 0x86, 0x9F, 0xA0,
             0xD7FF, 0xD800, 0xDFFF, 0xE000, 0xFFFD, 0xFFFE, 0xFFFF, 0x10000, 0x10FFFF]
    codes = sorted(set(edges) | set(range(0, 0x110000, 997)))
    differ = [c for c in codes if bool(reader_check.search(chr(c))) != bool(own.search(chr(c)))]
    try:
        yaml.load("a: b\\x07\\n", Loader=yaml.SafeLoader)
        refused = None
    except yaml.reader.ReaderError as exc:
        refused = exc.character
    print(json.dumps({
        "lazy_at_first": lazy_at_first,
        "source_is_pyyamls": reader_check.pattern == READER_NON_PRINTABLE,
        "compile_restored": re.compile is real_compile,
        "other_patterns_compiled": isinstance(yaml.resolver.Resolver.yaml_implicit_resolvers["t"][0][1], re.Pattern),
        "differ": differ,
        "refused": refused,
    }))
""")


def run_probe() -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_readers_check_waits_for_its_first_use_and_refuses_exactly_what_pyyamls_pattern_refuses():
    found = run_probe()
    assert found["lazy_at_first"], "PyYAML's reader compiled its check at import (has its pattern text changed?)"
    assert found["source_is_pyyamls"]
    assert found["differ"] == []
    assert found["refused"] == 7


def test_nothing_stays_replaced_after_the_import():
    found = run_probe()
    assert found["compile_restored"]
    assert found["other_patterns_compiled"]
