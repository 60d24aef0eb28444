"""Reads and writes at an offset, on every OS: POSIX's pread/pwrite, and on Windows (which has neither) a
seek and a read or write. Used by the store and the log guard, below the rest of the platform."""

from __future__ import annotations

import os
import sys


def read_at(fd: int, size: int, offset: int) -> bytes:
    """On Windows this moves the descriptor's offset: for descriptors only their caller reads through."""
    if sys.platform == "win32":
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, size)
    return os.pread(fd, size, offset)


def write_at(fd: int, data: bytes, offset: int) -> int:
    """On Windows this moves the descriptor's offset: for descriptors only their caller writes through."""
    if sys.platform == "win32":
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)
    return os.pwrite(fd, data, offset)
