"""Whether a directory takes writes now: the probe behind excusing a heartbeat its gateway could not write."""

from __future__ import annotations

import os
import sys


def write_refusal(directory: str) -> str | None:
    """Why `directory` refuses a new file (read-only file system, not writable, no space or no inode left: an
    atomic heartbeat write needs a new file), or None when it would take one or when that cannot be told (the
    directory is missing: its writer may create it). Never writes: a probe file would itself fail on a full
    disk and would race the gateway on a healthy one."""
    if not os.path.isdir(directory):
        return None
    if sys.platform == "win32":
        if not os.access(directory, os.W_OK):
            return "directory not writable"
        import shutil  # only here: shutil loads the bz2 and lzma compressors, which a controller has no use for
        try:
            return "no space left" if shutil.disk_usage(directory).free == 0 else None
        except OSError:
            return None
    try:
        fs = os.statvfs(directory)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if not os.access(directory, os.W_OK):
        return "directory not writable"
    # As an unprivileged writer sees it (f_bavail/f_favail leave out root's reserve); a file system that
    # counts no blocks or inodes at all (f_blocks/f_files 0: btrfs' inodes, pseudo file systems) has no limit.
    if fs.f_blocks and fs.f_bavail == 0:
        return "no space left"
    if fs.f_files and fs.f_favail == 0:
        return "no inode left"
    return None
