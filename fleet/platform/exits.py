"""Exit watches for POSIX (fleet.platform.base.ExitWatch): one descriptor that becomes readable when any
watched gateway exits, whether or not it is our child (an adopted gateway is not).

- Linux: a pidfd per gateway in one epoll; the epoll's own descriptor is what the controller selects on.
- macOS and the BSDs: one kqueue with an EVFILT_PROC/NOTE_EXIT filter per gateway.
- Elsewhere: none; the controller polls.
A reported exit is forgotten, so the descriptor is quiet again until the next one.
"""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Callable
from typing import Any


class PollingExitWatch:
    """Nothing to wait on: every PID is left to polling."""

    def fileno(self) -> int:
        return -1

    def watch(self, pids: frozenset[int]) -> frozenset[int]:
        return pids

    def exited(self) -> frozenset[int]:
        return frozenset()

    def close(self) -> None:
        pass


class _ReportOnce:
    """The bookkeeping all watches share: a PID reported as exited is not armed again while it stays in the
    watched set (the controller reclaims it on the pass the report causes)."""

    def __init__(self) -> None:
        self.armed: set[int] = set()
        self.reported: set[int] = set()

    def plan(self, pids: frozenset[int]) -> tuple[set[int], set[int]]:
        """(to arm, to disarm) for watching exactly `pids`."""
        self.reported &= pids
        return set(pids) - self.armed - self.reported, self.armed - set(pids)

    def report(self, pids: set[int]) -> frozenset[int]:
        pids &= self.armed
        self.armed -= pids
        self.reported |= pids
        return frozenset(pids)


class PidfdExitWatch:
    """Linux: pidfds (readable once the process exits) in one epoll."""

    _epoll: Any
    _readable: int
    _pidfd_open: Callable[[int], int]

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}  # pid -> pidfd
        self._pids: dict[int, int] = {}  # pidfd -> pid
        self._state = _ReportOnce()
        if sys.platform != "linux":
            raise OSError("pidfds are Linux's")
        self._pidfd_open = os.pidfd_open
        self._epoll = select.epoll()
        self._readable = select.EPOLLIN

    def fileno(self) -> int:
        return int(self._epoll.fileno())

    def watch(self, pids: frozenset[int]) -> frozenset[int]:
        arm, disarm = self._state.plan(pids)
        for pid in disarm:
            self._forget(pid)
        unwatched = set()
        for pid in arm:
            try:
                fd = self._pidfd_open(pid)
            except OSError:  # gone already (ESRCH), or the kernel has no pidfds
                unwatched.add(pid)
                continue
            self._fds[pid], self._pids[fd] = fd, pid
            self._epoll.register(fd, self._readable)
            self._state.armed.add(pid)
        return frozenset(unwatched)

    def exited(self) -> frozenset[int]:
        ready = {self._pids[fd] for fd, _ in self._epoll.poll(0) if fd in self._pids}
        gone = self._state.report(ready)
        for pid in gone:
            self._forget(pid)
        return gone

    def _forget(self, pid: int) -> None:
        self._state.armed.discard(pid)
        fd = self._fds.pop(pid, None)
        if fd is None:
            return
        del self._pids[fd]
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass
        os.close(fd)

    def close(self) -> None:
        for pid in list(self._fds):
            self._forget(pid)
        self._epoll.close()


class KqueueExitWatch:
    """macOS and the BSDs: EVFILT_PROC/NOTE_EXIT filters, one-shot, in one kqueue. `kq` is the module that
    has kqueue, kevent and the KQ_* constants (the select module; a stand-in in tests)."""

    def __init__(self, kq: Any = select):
        self._kq = kq
        self._queue = kq.kqueue()
        self._state = _ReportOnce()

    def fileno(self) -> int:
        return int(self._queue.fileno())

    def _event(self, pid: int, flags: int) -> Any:
        kq = self._kq
        return kq.kevent(pid, filter=kq.KQ_FILTER_PROC, flags=flags, fflags=kq.KQ_NOTE_EXIT)

    def watch(self, pids: frozenset[int]) -> frozenset[int]:
        arm, disarm = self._state.plan(pids)
        for pid in disarm:
            self._state.armed.discard(pid)
            try:
                self._queue.control([self._event(pid, self._kq.KQ_EV_DELETE)], 0, 0)
            except OSError:  # it fired meanwhile; a one-shot filter is gone with it
                pass
        unwatched = set()
        for pid in arm:
            try:
                self._queue.control([self._event(pid, self._kq.KQ_EV_ADD | self._kq.KQ_EV_ONESHOT)], 0, 0)
            except OSError:  # ESRCH: it exited before we looked
                unwatched.add(pid)
                continue
            self._state.armed.add(pid)
        return frozenset(unwatched)

    def exited(self) -> frozenset[int]:
        events = self._queue.control(None, max(1, len(self._state.armed)), 0)
        return self._state.report({int(e.ident) for e in events if e.fflags & self._kq.KQ_NOTE_EXIT})

    def close(self) -> None:
        self._queue.close()
