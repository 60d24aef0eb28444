"""Gateway logs: a file the child holds itself (never a pipe through the controller), so a
gateway outlives its controller and is adopted with its log as it was.

Bounded while the gateway runs: the controller's LogGuard checks the logs' sizes every second while one
grows or is past half its cap, every LOG_QUIET_CHECK_SECONDS while none does (an idle fleet's controller
then wakes a fifth as often), and every LOG_FLOOD_CHECK_SECONDS for a while after one was over its cap; it
copy-truncates a log over the cap: its bytes are copied to `<log>.1` (the older rotated files shift up, the oldest
goes first), then the log is truncated; the gateway writes with O_APPEND, so its next write
lands at the new end. What is lost: the bytes written between the copy reaching the end and the
truncate (a window of microseconds), and a line still being written then (the copy ends at a line's
end: no line is torn); under a flood (over FLOOD_SLACK per check interval) also
the oldest bytes beyond MAX_LOG_BYTES + FLOOD_SLACK and the newest written while those are
copied. On disk at any time: KEEP_ROTATED rotated files of at most MAX_LOG_BYTES + FLOOD_SLACK,
plus the live log (the cap plus what a flood writes in one check interval: up to LOG_QUIET_CHECK_SECONDS for
a flood that begins in a quiet spell, one second for one that begins while a log grows). At a spawn, with no
writer left, a log over the cap is renamed, and cut to the same bound if a flood outran a dead
controller."""

from __future__ import annotations

import os
import time

from fleet.platform.fileio import read_at

MAX_LOG_BYTES = 10 * 1024 * 1024
KEEP_ROTATED = 3
FLOOD_SLACK = 1024 * 1024
LOG_CHECK_SECONDS = 1.0
LOG_QUIET_CHECK_SECONDS = 5.0
LOG_FLOOD_CHECK_SECONDS = 0.05
FLOOD_STICKY_SECONDS = 10.0
_CHUNK = 1024 * 1024
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _shift(path: str, keep: int) -> None:
    for i in range(keep - 1, 0, -1):
        src, dst = f"{path}.{i}", f"{path}.{i + 1}"
        if os.path.lexists(src):
            os.replace(src, dst)


def rotate_if_large(path: str, max_bytes: int = MAX_LOG_BYTES, keep: int = KEEP_ROTATED) -> bool:
    """At a spawn, with no writer left: a log over the cap becomes `<log>.1`. One a flood left while no
    controller watched it is cut like a copy-truncate under a flood (its newest max_bytes + FLOOD_SLACK
    kept), so a rotated file is bounded whichever way it was rotated."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return False
    if size < max_bytes:
        return False
    if size > max_bytes + FLOOD_SLACK:
        return trim_running(path, max_bytes, keep)
    _shift(path, keep)
    os.replace(path, f"{path}.1")
    return True


def trim_running(path: str, max_bytes: int = MAX_LOG_BYTES, keep: int = KEEP_ROTATED) -> bool:
    """Copy-truncate a log that a running process appends to, if it is over `max_bytes`."""
    try:
        src = os.open(path, os.O_RDWR | _NOFOLLOW)
    except OSError:
        return False
    tmp = f"{path}.rotating"
    try:
        size = os.fstat(src).st_size
        if size < max_bytes:
            return False
        for stale in (tmp, f"{path}.{keep}" if keep > 0 else tmp):  # the oldest goes first: bounded at all times
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        try:
            budget = max_bytes + FLOOD_SLACK
            offset = max(0, size - budget)  # only under a flood: the oldest bytes beyond the budget go
            copied, line_end = 0, -1
            while budget > 0:
                chunk = read_at(src, min(_CHUNK, budget), offset)
                if not chunk:
                    break
                os.write(dst, chunk)
                if b"\n" in chunk:
                    line_end = copied + chunk.rindex(b"\n") + 1
                offset += len(chunk)
                budget -= len(chunk)
                copied += len(chunk)
            # Right after the last read found the end: only what lands in between is lost.
            os.ftruncate(src, 0)
            if 0 < line_end < copied:
                # A read can see a write half done: the line being written at the truncate is lost, not torn.
                os.ftruncate(dst, line_end)
        finally:
            os.close(dst)
        if keep > 0:
            _shift(path, keep)
            os.replace(tmp, f"{path}.1")
        else:
            os.unlink(tmp)
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    finally:
        os.close(src)


class LogGuard:
    """Keeps every `*.log` in the logs directory within its cap, between the controller's passes:
    the controller waits for events through `select()`, which checks the logs on the way. No
    thread: a killed controller releases everything (its lock included) at once."""

    def __init__(self, directory: str, max_bytes: int = MAX_LOG_BYTES, keep: int = KEEP_ROTATED):
        self.directory = directory
        self.max_bytes = max_bytes
        self.keep = keep
        self.open: dict[str, tuple[int, int]] = {}  # log name -> (inode, a read-only descriptor of it)
        self.sizes: dict[str, int] = {}  # log name -> its size at the last check
        self.growing = True  # a log grew (or is past half its cap) at the last check: look again in a second
        self.next_check = 0.0
        self.flooding_until = 0.0

    def select(self, selector, timeout: float):
        """selector.select(timeout), cut short when the logs are due for a check (their cadence: see the module):
        then it checks them and returns no events, so the caller's own check (the fence) shares the wake-up."""
        now = time.monotonic()
        if now >= self.next_check:
            if self.check():
                self.flooding_until = now + FLOOD_STICKY_SECONDS  # a flood rarely stops at once
            self.next_check = now + self.interval(now)
            return []
        return selector.select(max(0.0, min(timeout, self.next_check - now)))

    def interval(self, now: float) -> float:
        if now < self.flooding_until:
            return LOG_FLOOD_CHECK_SECONDS
        return LOG_CHECK_SECONDS if self.growing else LOG_QUIET_CHECK_SECONDS

    def check(self) -> bool:
        """One pass over the logs; True when one was over its cap (check again soon). One directory read, and
        the size of each log from a descriptor the guard keeps open (a seek to its end), reopened when the
        file changes: ~0.1 ms of CPU at N=100, but the wake-up that runs it costs the idle controller several
        times that, hence the quiet cadence."""
        trimmed = False
        try:
            entries = [e for e in os.scandir(self.directory) if e.name.endswith(".log")]
        except OSError:
            return False
        sizes: dict[str, int] = {}
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                held = self.open.get(entry.name)
                if held is None or held[0] != entry.inode():
                    if held is not None:
                        os.close(held[1])
                        del self.open[entry.name]
                    held = self.open[entry.name] = (entry.inode(), os.open(entry.path, os.O_RDONLY | _NOFOLLOW))
                size = sizes[entry.name] = os.lseek(held[1], 0, os.SEEK_END)
                if size < self.max_bytes:
                    continue
            except OSError:
                continue
            trimmed = trim_running(entry.path, self.max_bytes, self.keep) or trimmed
        for name in set(self.open) - set(sizes):
            os.close(self.open.pop(name)[1])
        self.growing = any(size > self.sizes.get(name, -1) or size >= self.max_bytes // 2
                           for name, size in sizes.items())
        self.sizes = sizes
        return trimmed

    def close(self) -> None:
        for _, fd in self.open.values():
            os.close(fd)
        self.open.clear()
