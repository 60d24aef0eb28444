"""What the controller waits on between passes: a signal (through a self-pipe), a CLI's wake-up datagram,
a gateway's exit (one pidfd per live gateway), and the time its pass asked for."""

from __future__ import annotations

import os
import selectors
import time
from dataclasses import dataclass

from fleet.controller.wake import WakeSocket
from fleet.execute.logs import LogGuard
from fleet.store.layout import StateDir

# Between passes the fence is re-checked at least this often, so a controller whose state directory
# was removed or replaced exits promptly even while nothing wakes it.
FENCE_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Woken:
    by_cli: bool = False  # a CLI command wrote to the store and said so
    scan: bool = False  # ... and asked for a look at the process table


class Wakeups:
    def __init__(self, state: StateDir, platform):
        self.platform = platform
        self.wake = WakeSocket(state)
        self.selector = selectors.DefaultSelector()
        self.signal_r, self.signal_w = os.pipe()
        os.set_blocking(self.signal_w, False)
        os.set_blocking(self.signal_r, False)
        self.selector.register(self.signal_r, selectors.EVENT_READ, "signal")
        if self.wake.sock:
            self.selector.register(self.wake.sock, selectors.EVENT_READ, "wake")
        self.waiters: dict[int, int] = {}  # gateway pid -> its exit waiter (pidfd)

    def interrupt(self) -> None:
        """From a signal handler: end the current wait at once."""
        try:
            os.write(self.signal_w, b"x")
        except OSError:
            pass

    def watch(self, live: frozenset[int]) -> None:
        """Keep one exit waiter (pidfd) per live gateway, so a death wakes us at once."""
        for pid in list(self.waiters):
            if pid not in live:
                fd = self.waiters.pop(pid)
                self.selector.unregister(fd)
                os.close(fd)
        for pid in live - set(self.waiters):
            fd = self.platform.exit_waiter(pid)
            if fd is not None:
                self.waiters[pid] = fd
                self.selector.register(fd, selectors.EVENT_READ, ("exit", pid))

    def wait(self, timeout: float, breached, log_guard: LogGuard) -> list:
        """select() in slices, checking the fence between them (and the logs' sizes, see LogGuard);
        returns early once it is breached."""
        deadline = time.monotonic() + timeout
        while True:
            events = log_guard.select(self.selector, min(max(0.0, deadline - time.monotonic()), FENCE_POLL_SECONDS))
            if events or time.monotonic() >= deadline or breached():
                return events

    def take(self, events: list) -> Woken:
        """What the events of a wait say; empties the signal pipe and the wake socket."""
        woken = Woken()
        for key, _ in events:
            if key.data == "wake":
                woken = Woken(by_cli=True, scan=woken.scan or "scan" in self.wake.drain())
            elif key.data == "signal":
                try:
                    os.read(self.signal_r, 64)
                except OSError:
                    pass
        return woken

    def close(self) -> None:
        for fd in self.waiters.values():
            os.close(fd)
        self.selector.close()
        self.wake.close()
        os.close(self.signal_r)
        os.close(self.signal_w)
