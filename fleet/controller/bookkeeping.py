"""The controller's side of a degraded store: retried with backoff, reported once, published for `status`."""

from __future__ import annotations

import time

from fleet.controller.holds import backoff_after
from fleet.controller.log import log
from fleet.store.db import Store
from fleet.store.health import HealthFile


class StoreBookkeeping:
    """While the store refuses writes (full, locked, read-only, I/O errors) the controller keeps its
    bookkeeping in memory and goes on supervising; this retries the store with backoff, says so in
    the log and in the health file `status` reads, and notes when the store has caught up."""

    def __init__(self, store: Store, health: HealthFile, clock):
        self.store = store
        self.health = health
        self.clock = clock
        self.failures = 0
        self.retry_at = 0.0
        self.reported: tuple | None = None

    def tick(self, now: float) -> None:
        problem = self.store.degraded
        if problem is None:
            return
        if now >= self.retry_at:
            if self.store.catch_up():
                log(f"store recovered: {problem.pending} bookkeeping write(s) kept in memory since "
                    f"{time.strftime('%H:%M:%S', time.localtime(problem.since))} are in the store")
                self.store.journal("store_recovered", f"store degraded ({problem.kind}) since "
                                   f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(problem.since))}; "
                                   f"caught up {problem.pending} write(s)", data={"kind": problem.kind})
                self.failures = 0
                self.retry_at = 0.0
                self.reported = None
                self.health.publish(None)
                return
            self.retry_at = now + backoff_after(self.failures + 1)
            self.failures += 1
        self.report()

    def report(self) -> None:
        problem = self.store.degraded
        if problem is None:
            return
        key = (problem.kind, problem.message)
        if key != self.reported:
            log(f"store degraded: {problem.message}; supervising from memory, retrying with backoff")
            self.reported = key
        self.health.publish(problem.kind, problem.message, problem.since, problem.pending)

    def bound(self, timeout: float, now: float) -> float:
        if self.store.degraded is None:
            return timeout
        self.report()
        return min(timeout, max(0.0, self.retry_at - now))

    def retry_soon(self) -> None:
        self.retry_at = 0.0

    def finish(self) -> None:
        problem = self.store.degraded
        if problem is not None and not self.store.catch_up():
            log(f"store still degraded at exit: {problem.pending} bookkeeping write(s) kept in memory are lost; "
                f"the next controller adopts the gateways")
        self.health.publish(None)
        self.health.close()
