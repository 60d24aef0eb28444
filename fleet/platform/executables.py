"""Finding a program the way a POSIX process start does (shutil.which's rules), without importing shutil: it
loads the zlib, bz2 and lzma compressors, ~4 ms of every `apply` and `diff` and a megabyte of a resident
controller."""

from __future__ import annotations

import os


def which(name: str, path: str | None = None) -> str | None:
    """`name` itself when it has a directory part, else the first `name` in `path` (default: PATH), that is a
    file this user may run; None when there is none (an empty PATH searches nowhere)."""
    if os.path.dirname(name):
        return name if _runnable(name) else None
    search = path if path is not None else os.environ.get("PATH", os.defpath)
    if not search:
        return None
    for folder in search.split(os.pathsep):
        candidate = os.path.join(folder or os.curdir, name)
        if _runnable(candidate):
            return candidate
    return None


def _runnable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)
