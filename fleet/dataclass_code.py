"""The code of dataclasses' generated methods, compiled once and kept beside the package's bytecode.

`@dataclass` writes the source text of `__init__`, `__repr__`, `__eq__`, `__hash__` and, when frozen,
`__setattr__` and `__delattr__`, and compiles it with `exec` every time a module creating the class is
imported. On CPython 3.11 that compile is about 0.8 ms per frozen class, and a `status` creates some sixty of
them: a third of the command. A `.pyc` keeps a module's own code, never this.

`use_cached_dataclass_code()` gives the `dataclasses` module an `exec` that looks the text up in a table of
code objects first, and compiles (exactly as the built-in would: file name `<string>`, the compiler flags of
`dataclasses`' own source, nothing inherited from here) only what it does not find. The table is a marshal
file in the package's `__pycache__` (or under `sys.pycache_prefix`), headed by the interpreter's bytecode magic
number, so another interpreter ignores it. A process adds what it compiled when it ends (the resident
controller: once its imports are done, `release()`), unless bytecode writing is off (`PYTHONDONTWRITEBYTECODE`).
A missing, unreadable or foreign file only means compiling as before: the text is the key, so a hit is the
very code the text compiles to.

Only the entry points call it (the console script before it imports a command, the controller before it
imports its loop); a library user of `fleet` keeps the standard library untouched.
"""

from __future__ import annotations

import __future__
import builtins
import marshal
import os
import sys
from importlib.util import MAGIC_NUMBER, cache_from_source
from types import CodeType


class CompiledTexts:
    """The `exec` handed to `dataclasses`: a string it has seen runs its kept code object."""

    def __init__(self, path: str | None, flags: int):
        self.path = path
        self.flags = flags
        self.codes: dict[str, CodeType] = load(path) if path else {}
        self.used: set[str] = set()
        self.compiled = 0  # texts this process had to compile (not in the file)

    def __call__(self, source, globals=None, locals=None, /, **keywords):
        if type(source) is str:
            code = self.codes.get(source)
            if code is None:
                code = compile(source, "<string>", "exec", self.flags, dont_inherit=True)
                self.codes[source] = code
                self.compiled += 1
            self.used.add(source)
            source = code
        return builtins.exec(source, globals, locals, **keywords)

    def save(self) -> None:
        """Write the table when this process compiled something new; a failure loses only the speed-up."""
        if not self.compiled or self.path is None or sys.dont_write_bytecode:
            return
        # A changed class leaves its old texts behind (after an upgrade, say): once the table holds as many texts
        # this process did not use as it used, only the used ones are kept. Loading is most of what the table
        # costs, and a command's runs differ by a few texts (`status` and `status --deep`), not by half.
        unused = len(self.codes) - len(self.used)
        codes = self.codes if unused <= len(self.used) else {t: self.codes[t] for t in self.used}
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(temporary, "wb") as out:
                out.write(MAGIC_NUMBER + marshal.dumps(codes))
            os.replace(temporary, self.path)
            self.compiled = 0
        except (OSError, ValueError):
            try:
                os.unlink(temporary)
            except OSError:
                pass

    def release(self) -> None:
        """Save, give `dataclasses` its built-in `exec` back and drop the table: for a process that stays
        resident after its imports (the controller), so the table's code objects are freed."""
        import atexit
        import dataclasses

        self.save()
        if vars(dataclasses).get("exec") is self:
            del dataclasses.exec  # type: ignore[attr-defined]
        atexit.unregister(self.save)
        self.codes, self.used = {}, set()


def load(path: str) -> dict[str, CodeType]:
    """The table in `path`; empty when it is missing, unreadable, damaged or another interpreter's."""
    try:
        with open(path, "rb") as source:
            data = source.read()
        if not data.startswith(MAGIC_NUMBER):
            return {}
        table = marshal.loads(data[len(MAGIC_NUMBER):])
    except (OSError, EOFError, ValueError, TypeError):
        return {}
    if not isinstance(table, dict):
        return {}
    return {text: code for text, code in table.items() if type(text) is str and type(code) is CodeType}


def table_path(entry: str) -> str | None:
    """Beside the package's own bytecode: its `__pycache__`, or its place under `sys.pycache_prefix`."""
    name = f"dataclass-code-{entry}.{sys.implementation.cache_tag}.marshal"
    try:
        return os.path.join(os.path.dirname(cache_from_source(os.path.abspath(__file__))), name)
    except (NotImplementedError, ValueError):  # an interpreter without a cache tag keeps no bytecode
        return None


def source_flags(module: object) -> int:
    """The compiler flags of the `from __future__` imports in `module`: the flags the built-in `exec`
    compiles a string with when that module calls it."""
    flags = 0
    for name in __future__.all_feature_names:
        feature = getattr(module, name, None)
        if isinstance(feature, __future__._Feature):
            flags |= feature.compiler_flag
    return flags


def use_cached_dataclass_code(entry: str) -> CompiledTexts:
    """Install the table named `entry` for this process (once) and return it. Each entry point (and each
    command of the console script) keeps its own table, so a process reads only the texts it uses."""
    import atexit
    import dataclasses

    current = vars(dataclasses).get("exec")
    if isinstance(current, CompiledTexts):
        return current
    texts = CompiledTexts(table_path(entry), source_flags(dataclasses))
    dataclasses.exec = texts  # type: ignore[attr-defined]  # found before the built-in by dataclasses' calls
    atexit.register(texts.save)
    return texts
