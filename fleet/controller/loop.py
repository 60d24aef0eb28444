"""The controller: one process per state directory that keeps observed == desired.

forever { wait for (child exit | wake-up | earliest not_before | resync); reconcile_once(now) }
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

from fleet import __version__
from fleet.controller.bookkeeping import StoreBookkeeping
from fleet.controller.fence_watch import FenceWatch
from fleet.controller.idle import IDLE_POLL_SECONDS
from fleet.controller.log import log
from fleet.controller.metrics_on_demand import MetricsOnDemand
from fleet.controller.reconcile import PassResult, Reconciler
from fleet.controller.wakeups import Wakeups
from fleet.execute.logs import LogGuard
from fleet.platform.base import Platform
from fleet.service.notify import SdNotify
from fleet.store.db import Store
from fleet.store.fence import Fence
from fleet.store.health import HealthFile
from fleet.store.layout import StateDir, ensure_state_dir
from fleet.store.lock import LockHeld, SupervisorLock

RESYNC_SECONDS = 30.0
IDLE_WAIT_SECONDS = 60.0
STORE_BUSY_SECONDS = 5.0  # a store locked longer than this: keep supervising from memory (see StoreBookkeeping)
EXIT_OK, EXIT_FATAL, EXIT_CONFIG, EXIT_LOCKED, EXIT_FENCED = 0, 1, 2, 3, 4


class Controller:
    def __init__(self, state: StateDir, platform: Platform, *, clock: Callable[[], float] = time.time):
        self.state = state
        self.platform = platform
        self.clock = clock
        self.stopping = False

    def run(self) -> int:
        ensure_state_dir(self.state)
        fence = Fence()
        fence.hold("state directory", self.state.root)
        store = Store(self.state.db, durable=False, degradable=True, busy_timeout=STORE_BUSY_SECONDS)
        lock = SupervisorLock(self.state)
        try:
            lock.acquire()
        except LockHeld as exc:
            log(f"{exc}; exiting without touching any gateway")
            store.close()
            return EXIT_LOCKED
        try:
            fence.hold("supervisor lock", self.state.lock, lock.identity)
            fence.hold("database", self.state.db)
            breach = fence.breach()
            if breach:
                log(f"{breach}; another controller may own this state directory now; exiting without touching "
                    f"any gateway")
                return EXIT_FENCED
            return self._run_locked(store, lock, fence)
        finally:
            lock.release()
            store.close()

    def _run_locked(self, store: Store, lock: SupervisorLock, fence: Fence) -> int:
        wakeups = Wakeups(self.state, self.platform)
        if wakeups.wake.identity is not None:
            fence.hold("wake channel", wakeups.wake.path, wakeups.wake.identity)
        try:
            # Before the controller says it runs: a stop asked for the moment it does (a service manager's
            # restart, `controller stop` after `apply`) is a clean stop, not the signal's default death.
            self._stop_on_signals(wakeups)
            epoch = self._announce(store, lock)
        except BaseException:
            wakeups.close()
            raise
        fenced = FenceWatch(fence)
        notifier = SdNotify.from_env()
        bookkeeping = StoreBookkeeping(store, HealthFile(self.state), self.clock)
        reconciler = Reconciler(self.state, store, self.platform, epoch=epoch, fence=fenced,
                                bookkeeping=bookkeeping, clock=self.clock, leaving=lambda: self.stopping)
        log_guard = LogGuard(str(self.state.logs))
        telemetry = MetricsOnDemand(self.state, store, epoch, self.clock)
        try:
            self._loop(reconciler, wakeups, notifier, log_guard, telemetry)
        finally:
            telemetry.close()
            reconciler.follower.close()  # a git fetch in flight ends with the controller
            log_guard.close()
            wakeups.close()
            notifier.stopping()
            self._finish(store, epoch, fenced, bookkeeping)
        return EXIT_FENCED if fenced.why else EXIT_OK

    def _announce(self, store: Store, lock: SupervisorLock) -> int:
        epoch = store.bump_epoch()
        me = self.platform.process_info(os.getpid())
        lock.publish(epoch, me.create_time if me else self.clock(), me.start_ticks if me else None)
        store.journal("controller_started", f"controller pid {os.getpid()} (hermes-fleet {__version__}) epoch {epoch}",
                      epoch=epoch)
        log(f"controller started, epoch {epoch}, state {self.state.root}")
        return epoch

    def _stop_on_signals(self, wakeups: Wakeups) -> None:
        def on_stop_request() -> None:
            self.stopping = True
            wakeups.interrupt()

        self.platform.on_stop_request(on_stop_request)

    def _loop(self, reconciler: Reconciler, wakeups: Wakeups, notifier: SdNotify, log_guard: LogGuard,
              telemetry: MetricsOnDemand) -> None:
        """Only waits and calls the pass: at once after a pass that acted, else until something wakes it."""
        fenced, bookkeeping = reconciler.fence, reconciler.bookkeeping
        ready_sent = False
        exited: frozenset[int] = frozenset()
        while not self.stopping and not fenced.breached():
            now = self.clock()
            result = reconciler.reconcile_once(now, exited)
            exited = frozenset()
            if result.fenced or result.left or result.down_done:
                return
            if result.planned:
                wakeups.watch(result.gateways)
            timeout = _timeout_after(result, now)
            ended = self.clock()
            telemetry.after_pass(result, now, ended, timeout)
            timeout = telemetry.bound(timeout, ended)
            if not ready_sent:
                notifier.ready(f"{result.profiles} profiles")
                ready_sent = True
            notifier.watchdog()
            if notifier.watchdog_interval:
                timeout = min(timeout, notifier.watchdog_interval)
            if result.replan_now:
                continue
            timeout = max(0.0, bookkeeping.bound(timeout, self.clock()))
            events = wakeups.wait(timeout, fenced.breached, log_guard)
            if fenced.why:
                return
            woken = wakeups.take(events)
            if woken.stop:
                self.stopping = True
                return
            exited = woken.only_exits
            if woken.by_cli:
                bookkeeping.retry_soon()  # a CLI command wrote: the store may take writes again
            if woken.scan:
                reconciler.request_scan()
            if woken.sync:
                reconciler.request_sync()

    @staticmethod
    def _finish(store: Store, epoch: int, fenced: FenceWatch, bookkeeping: StoreBookkeeping) -> None:
        if fenced.why:
            # Nothing goes into a store that may be another controller's, or no one's.
            log(f"{fenced.why}; another controller may own this state directory now; exiting without "
                f"touching any gateway")
            return
        store.journal("controller_stopped", f"controller pid {os.getpid()} stopped", epoch=epoch)
        bookkeeping.finish()
        log("controller stopped; gateways left running")


def _timeout_after(result: PassResult, now: float) -> float:
    """How long to wait after a pass: until its next deadline (the followed source's included), at most a
    jittered resync."""
    timeout = _plan_timeout(result, now)
    if result.source_next is not None:
        timeout = min(timeout, max(0.0, result.source_next - now))
    return timeout


def _plan_timeout(result: PassResult, now: float) -> float:
    if not result.planned:
        return IDLE_WAIT_SECONDS
    resync = RESYNC_SECONDS * random.uniform(0.8, 1.2)
    timeout = min(resync, (result.next_run - now) if result.next_run else resync)
    if result.poll:
        timeout = min(timeout, IDLE_POLL_SECONDS)
    return timeout
