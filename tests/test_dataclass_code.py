"""The kept code of dataclasses' generated methods (fleet/dataclass_code.py): a class made with the table,
cold or warm, is the class the standard library makes without it, down to its methods' bytecode; a damaged
or foreign table only costs the compile; and the entry points use it. Each case runs in its own interpreter,
with `PYTHONPYCACHEPREFIX` sending the table to a temporary directory."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
from importlib.util import MAGIC_NUMBER
from pathlib import Path

import pytest

CLASSES = r'''
import dataclasses, inspect, json, sys
from dataclasses import InitVar, KW_ONLY, dataclass, field
from typing import ClassVar

@dataclass(frozen=True)
class Frozen:
    """A frozen record."""
    name: str
    count: int = 0
    tags: tuple[str, ...] = ()
    limit: float | None = None

@dataclass
class Mutable:
    items: list[int] = field(default_factory=list)
    hidden: int = field(default=3, repr=False, compare=False)
    total: int = field(init=False, default=0)
    shared: ClassVar[int] = 7
    seed: InitVar[int] = 1

    def __post_init__(self, seed: int) -> None:
        self.total = sum(self.items) + seed

@dataclass(order=True, unsafe_hash=True)
class Ordered:
    rank: int
    label: str = "x"

@dataclass(frozen=True, slots=True, kw_only=True)
class Slotted:
    a: int
    b: str = "b"

@dataclass(frozen=True)
class Mixed:
    first: int
    _: KW_ONLY
    second: int = 2

def fingerprint(fn):
    code = fn.__code__
    return [code.co_filename, code.co_flags, code.co_code.hex(), repr(code.co_consts), list(code.co_names),
            list(code.co_varnames), repr(getattr(fn, "__annotations__", {})), fn.__qualname__]

def frozen_error(obj):
    try:
        obj.name = "changed"
    except Exception as exc:
        return type(exc).__name__
    return "assigned"

summary = {}
for cls in (Frozen, Mutable, Ordered, Slotted, Mixed):
    methods = {name: fingerprint(vars(cls)[name]) for name in sorted(vars(cls))
               if callable(vars(cls)[name]) and hasattr(vars(cls)[name], "__code__")
               and vars(cls)[name].__code__.co_filename == "<string>"}
    summary[cls.__name__] = {"signature": str(inspect.signature(cls)), "doc": cls.__doc__, "methods": methods,
                             "match_args": list(getattr(cls, "__match_args__", ()))}
summary["behaviour"] = [
    repr(Frozen("a", 2)), Frozen("a") == Frozen("a"), hash(Frozen("a")) == hash(Frozen("a")), frozen_error(Frozen("a")),
    repr(Mutable([1, 2], seed=3)), Mutable([1]).total, Mutable([1], hidden=9) == Mutable([1], hidden=4),
    Ordered(1) < Ordered(2), sorted([Ordered(2, "b"), Ordered(1, "z")]) == [Ordered(1, "z"), Ordered(2, "b")],
    hash(Ordered(1)) == hash(Ordered(1)), repr(Slotted(a=1)), hasattr(Slotted(a=1), "__dict__"),
    frozen_error(Slotted(a=1)), repr(Mixed(1, second=3)),
]
texts = vars(dataclasses).get("exec")
print(json.dumps({"summary": summary, "compiled": getattr(texts, "compiled", None)}))
'''
USE_TABLE = "from fleet.dataclass_code import use_cached_dataclass_code; use_cached_dataclass_code('test')\n"


def environment(prefix: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(prefix), **extra}


def run_python(code: str, prefix: Path, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=environment(prefix, **extra_env), check=True)


def classes(prefix: Path, *, table: bool, **extra_env: str) -> dict:
    done = run_python((USE_TABLE if table else "") + CLASSES, prefix, **extra_env)
    assert done.stderr == ""  # a table that cannot be read or written is silent (an atexit error would show here)
    return json.loads(done.stdout)


def table_files(prefix: Path) -> list[Path]:
    return sorted(prefix.rglob("dataclass-code-*.marshal"))


@pytest.fixture
def plain(tmp_path) -> dict:
    made = classes(tmp_path / "plain", table=False)
    assert made["compiled"] is None
    return made["summary"]


def test_a_class_made_from_the_table_is_the_class_the_standard_library_makes(tmp_path, plain):
    prefix = tmp_path / "pycache"
    cold = classes(prefix, table=True)
    assert cold["compiled"] > 0 and len(table_files(prefix)) == 1
    warm = classes(prefix, table=True)
    assert warm["compiled"] == 0  # every method's code came from the table
    assert cold["summary"] == plain
    assert warm["summary"] == plain


DAMAGES = {
    "empty": lambda data: b"",
    "garbage": lambda data: b"garbage",
    "another interpreter's": lambda data: b"\x00\x00\x00\x00" + data[len(MAGIC_NUMBER):],
    "truncated": lambda data: data[: len(data) // 2],
    "not a table": lambda data: MAGIC_NUMBER + marshal.dumps(["a list"]),
    "values that are no code": lambda data: MAGIC_NUMBER + marshal.dumps(
        dict.fromkeys(marshal.loads(data[len(MAGIC_NUMBER):]), 1)),
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_or_foreign_table_only_costs_the_compile(tmp_path, plain, damage):
    prefix = tmp_path / "pycache"
    classes(prefix, table=True)
    [table] = table_files(prefix)
    table.write_bytes(damage(table.read_bytes()))
    again = classes(prefix, table=True)
    assert again["compiled"] > 0
    assert again["summary"] == plain
    assert classes(prefix, table=True)["compiled"] == 0  # and the rewritten table serves the next process


def test_a_table_that_cannot_be_written_only_costs_the_compile(tmp_path, plain):
    prefix = tmp_path / "pycache"
    prefix.write_text("a file where the table's folder would go")
    for _ in range(2):
        made = classes(prefix, table=True)
        assert made["compiled"] > 0 and made["summary"] == plain
    assert table_files(tmp_path) == []


def test_no_table_is_written_when_bytecode_writing_is_off(tmp_path, plain):
    prefix = tmp_path / "pycache"
    made = classes(prefix, table=True, PYTHONDONTWRITEBYTECODE="1")
    assert made["summary"] == plain
    assert table_files(prefix) == []


def test_the_resident_controller_drops_the_table_after_its_imports(tmp_path):
    """release(): saved, `dataclasses` has its built-in exec back, and no code object is kept."""
    code = (USE_TABLE.replace("; use_cached_dataclass_code('test')", "; texts = use_cached_dataclass_code('test')")
            + "import dataclasses, fleet.controller.loop\n"
              "compiled = texts.compiled\n"
              "texts.release()\n"
              "print(compiled > 0, 'exec' in vars(dataclasses), len(texts.codes))\n")
    prefix = tmp_path / "pycache"
    assert run_python(code, prefix).stdout.split() == ["True", "False", "0"]
    assert len(table_files(prefix)) == 1


def test_the_console_script_keeps_the_table(tmp_path):
    prefix = tmp_path / "pycache"
    done = subprocess.run([sys.executable, "-m", "fleet", "status", "--state-dir", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60, env=environment(prefix, HOME=str(tmp_path)))
    assert done.returncode == 2 and "no fleet state" in done.stderr
    [table] = table_files(prefix)
    assert table.stat().st_size > 0


def test_texts_no_class_uses_any_more_are_dropped_once_they_outnumber_the_used_ones(tmp_path, plain):
    """After an upgrade a table holds the old classes' texts: the next save keeps only what was used."""
    prefix = tmp_path / "pycache"
    used = classes(prefix, table=True)["compiled"]
    [table] = table_files(prefix)
    codes = marshal.loads(table.read_bytes()[len(MAGIC_NUMBER):])
    codes.pop(next(iter(codes)))  # one class changed: its new text is compiled, and the table saved again
    stale = {f"def __create_fn__():\n def old_{i}(self):\n  return {i}\n return old_{i}": compile("x = 1", "<string>", "exec")
             for i in range(used + 1)}
    table.write_bytes(MAGIC_NUMBER + marshal.dumps({**codes, **stale}))
    again = classes(prefix, table=True)
    assert again["compiled"] == 1 and again["summary"] == plain
    kept = marshal.loads(table.read_bytes()[len(MAGIC_NUMBER):])
    assert len(kept) == used and not set(kept) & set(stale)
