"""Whether a directory takes writes now: the probe behind excusing a heartbeat its gateway could not write."""

from __future__ import annotations

import os
import shutil
import sys


def write_refusal(directory: str) -> str | None:
    """Why `directory` refuses a new write (read-only file system, no space left), or None when it would
    take one or when that cannot be told (the directory is missing: its writer may create it). Never
    writes: a probe file would itself fail on a full disk and would race the gateway on a healthy one."""
    if not os.path.isdir(directory):
        return None
    if not os.access(directory, os.W_OK):
        return "read-only file system" if _read_only_mount(directory) else "directory not writable"
    try:
        if shutil.disk_usage(directory).free == 0:
            return "no space left"
    except OSError:
        return None
    return None


def _read_only_mount(directory: str) -> bool:
    if sys.platform == "win32":
        return False
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False
