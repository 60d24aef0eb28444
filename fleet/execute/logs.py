"""Gateway logs: a file the child holds itself (never a pipe through the controller).

Rotation renames the file: the running child keeps writing to the renamed inode, so no line
is lost, and the next spawn opens a fresh file."""

from __future__ import annotations

import os

MAX_LOG_BYTES = 10 * 1024 * 1024
KEEP_ROTATED = 3


def rotate_if_large(path: str, max_bytes: int = MAX_LOG_BYTES, keep: int = KEEP_ROTATED) -> bool:
    try:
        if os.path.getsize(path) < max_bytes:
            return False
    except OSError:
        return False
    for i in range(keep - 1, 0, -1):
        src, dst = f"{path}.{i}", f"{path}.{i + 1}"
        if os.path.exists(src):
            os.replace(src, dst)
    os.replace(path, f"{path}.1")
    return True
