"""Who holds a file's lock, or has it open: best effort, for the message of a store that is locked.

It reads /proc/locks and /proc/<pid>/fd, which only Linux has (without them the answers are empty). It is the one piece of the
platform the store uses, so it imports nothing of fleet and has its own row at the bottom of the layer table
(docs/architecture.md), below the store."""

from __future__ import annotations

import os
import sys


def _file_ids(path: str) -> dict[tuple[int, int, int], str]:
    """(major, minor, inode) -> name of the database and its companion files, as /proc/locks names them."""
    ids: dict[tuple[int, int, int], str] = {}
    if sys.platform == "win32":  # no device numbers, and no /proc/locks to match them against
        return ids
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        try:
            st = os.stat(name)
        except OSError:
            continue
        ids[(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)] = name
    return ids


def describe_pid(pid: int) -> str:
    """`pid N (its command line, cut at 80 characters)`, or `pid N` when the command line cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        argv = []
    return f"pid {pid}" + (f" ({' '.join(argv)[:80]})" if argv else "")


def lock_holders(path: str) -> list[int]:
    """Best effort: the processes holding a write lock on the SQLite database `path` (from /proc/locks), else
    those that have it open (a scan of /proc/*/fd). Empty where neither is available."""
    ids = _file_ids(path)
    me = os.getpid()
    return _write_lock_holders(ids, me) or _openers(set(ids.values()), me)


def _write_lock_holders(ids: dict[tuple[int, int, int], str], me: int) -> list[int]:
    writers: list[int] = []
    for line in _proc_locks():
        lock = _write_lock(line)
        if lock is None:
            continue
        pid, key = lock
        if key in ids and pid not in (me, -1) and pid not in writers:
            writers.append(pid)
    return writers


def _proc_locks() -> list[str]:
    try:
        with open("/proc/locks") as fh:
            return fh.read().splitlines()
    except OSError:
        return []


def _write_lock(line: str) -> tuple[int, tuple[int, int, int]] | None:
    """(pid, (major, minor, inode)) of a write lock held in a /proc/locks line; None for anything else."""
    parts = line.split()
    if "->" in parts or len(parts) < 6:
        return None  # a waiter, not a holder
    try:
        kind_at = next(i for i, p in enumerate(parts) if p in ("POSIX", "FLOCK", "OFDLCK"))
        mode, pid, dev_ino = parts[kind_at + 2], int(parts[kind_at + 3]), parts[kind_at + 4]
        major, minor, ino = dev_ino.split(":")
        key = (int(major, 16), int(minor, 16), int(ino))
    except (StopIteration, IndexError, ValueError):
        return None
    return (pid, key) if mode == "WRITE" else None


def _openers(names: set[str], me: int) -> list[int]:
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return []
    return [pid for pid in pids if pid != me and _has_open(pid, names)]


def _has_open(pid: int, names: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in names:
                return True
        except OSError:
            continue
    return False
