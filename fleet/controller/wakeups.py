"""What the controller waits on between passes: a stop request (a signal handler or a `stop` message), a
CLI's wake-up message, a gateway's exit (the platform's exit watch), and the time its pass asked for. All of
them are sockets or descriptors the platform makes selectable, so the wait is one select() on every OS."""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleet.execute.logs import LogGuard
from fleet.platform.base import Platform
from fleet.store.layout import StateDir

# How often a gateway no exit watch covers (or a store without a wake channel) is looked at.
POLL_SECONDS = 1.0
STOP = "stop"
SCAN = "scan"
SYNC = "sync"


@dataclass(frozen=True)
class Woken:
    """What woke the controller between passes, and what it was asked for."""
    by_cli: bool = False  # a CLI command wrote to the store and said so
    scan: bool = False  # ... and asked for a look at the process table
    sync: bool = False  # ... and asked for a fetch of the followed git source now (`hermes-fleet sync`)
    stop: bool = False  # asked to leave (a stop request: the service host or `hermes-fleet controller stop`)
    exited: frozenset[int] = frozenset()  # watched gateways that exited

    @property
    def only_exits(self) -> frozenset[int]:
        """The gateways that exited, when nothing else woke the controller (else empty): their profiles may be
        respawned before the pass looks at every profile."""
        return frozenset() if self.by_cli or self.stop else self.exited


class Wakeups:
    def __init__(self, state: StateDir, platform: Platform):
        self.wake = platform.open_wake_channel(state)
        self.exits = platform.exit_watch()
        self.unwatched: frozenset[int] = frozenset()  # gateways no exit watch covers: polled
        self.selector = selectors.DefaultSelector()
        # A socket pair, not a pipe: on Windows select() takes sockets only.
        self._interrupt_r, self._interrupt_w = socket.socketpair()
        self._interrupt_r.setblocking(False)
        self._interrupt_w.setblocking(False)
        self.selector.register(self._interrupt_r, selectors.EVENT_READ, "interrupt")
        for channel, key in ((self.wake, "wake"), (self.exits, "exit")):
            if channel.fileno() >= 0:
                self.selector.register(channel.fileno(), selectors.EVENT_READ, key)

    @property
    def polls(self) -> bool:
        """Whether something must be looked at on a timer: the store (no wake channel) or a gateway."""
        return self.wake.fileno() < 0 or bool(self.unwatched)

    def interrupt(self) -> None:
        """From a signal handler: end the current wait at once."""
        try:
            self._interrupt_w.send(b"x")
        except OSError:
            pass

    def watch(self, live: frozenset[int]) -> None:
        """Watch exactly the live gateways, so a death wakes us at once."""
        self.unwatched = self.exits.watch(live)

    def wait(self, timeout: float, breached: Callable[[], bool], log_guard: LogGuard) -> list:
        """select() until an event or `timeout`, waking as the logs are due for a check (LogGuard: every second
        while one grows, every few seconds while none does) and checking the fence at each of those wake-ups,
        so a controller whose state directory was removed or replaced exits promptly even while nothing else
        wakes it; returns early once it is breached."""
        if self.polls:
            timeout = min(timeout, POLL_SECONDS)
        deadline = time.monotonic() + timeout
        while True:
            events = log_guard.select(self.selector, max(0.0, deadline - time.monotonic()))
            if events or time.monotonic() >= deadline or breached():
                return events

    def take(self, events: list) -> Woken:
        """What the events of a wait say; empties the interrupt pair, the wake channel and the exit watch."""
        by_cli = scan = sync = stop = False
        exited: frozenset[int] = frozenset()
        for key, _ in events:
            if key.data == "wake":
                messages = self.wake.drain()
                by_cli, scan, stop = True, scan or SCAN in messages, stop or STOP in messages
                sync = sync or SYNC in messages
            elif key.data == "exit":
                exited = self.exits.exited()
            elif key.data == "interrupt":
                try:
                    self._interrupt_r.recv(64)
                except OSError:
                    pass
        return Woken(by_cli=by_cli, scan=scan, sync=sync, stop=stop, exited=exited)

    def close(self) -> None:
        self.selector.close()
        self.exits.close()
        self.wake.close()
        self._interrupt_r.close()
        self._interrupt_w.close()
