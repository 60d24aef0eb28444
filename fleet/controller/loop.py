"""The controller: one process per state directory that keeps observed == desired.

forever { wait for (child exit | wake-up | earliest not_before | resync); observe; plan; execute }
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import sys
import time

from fleet import __version__
from fleet.controller.desired import DesiredSource
from fleet.controller.maintenance_tick import IDLE_POLL_SECONDS, MaintenanceTick, track_idle
from fleet.controller.wake import WakeSocket
from fleet.execute.executor import Executor
from fleet.observe.observer import Observer
from fleet.plan.planner import plan
from fleet.store.db import Store
from fleet.store.layout import StateDir, ensure_state_dir
from fleet.store.lock import LockHeld, SupervisorLock
from fleet.store.retention import apply_retention

RESYNC_SECONDS = 30.0
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
IDLE_WAIT_SECONDS = 60.0
RETENTION_EVERY = 60.0  # how often the journal, requests and adoption logs are trimmed
EXIT_OK, EXIT_FATAL, EXIT_CONFIG, EXIT_LOCKED = 0, 1, 2, 3


def held_now(failing: dict, now: float) -> frozenset:
    return frozenset(k for k, (_, until) in failing.items() if until > now)


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    print(f"{stamp} hermes-fleet[{os.getpid()}] {message}", file=sys.stderr, flush=True)


def _notifier():
    try:
        from fleet.service.notify import SdNotify
    except ImportError:
        return None
    return SdNotify.from_env() if hasattr(SdNotify, "from_env") else SdNotify()


def _scope_command():
    try:
        from fleet.platform.systemd_scope import scope_command
    except ImportError:
        return None
    return scope_command


class Controller:
    def __init__(self, state: StateDir, platform, *, clock=time.time):
        self.state = state
        self.platform = platform
        self.clock = clock
        self.stopping = False
        self.passes = 0

    def run(self) -> int:
        ensure_state_dir(self.state)
        store = Store(self.state.db, durable=False)
        lock = SupervisorLock(self.state)
        try:
            lock.acquire()
        except LockHeld as exc:
            log(f"{exc}; exiting without touching any gateway")
            store.close()
            return EXIT_LOCKED
        try:
            return self._run_locked(store, lock)
        finally:
            lock.release()
            store.close()

    def _run_locked(self, store: Store, lock: SupervisorLock) -> int:
        epoch = store.bump_epoch()
        me = self.platform.process_info(os.getpid())
        lock.publish(epoch, me.create_time if me else self.clock())
        store.journal("controller_started", f"controller pid {os.getpid()} (hermes-fleet {__version__}) epoch {epoch}",
                      epoch=epoch)
        log(f"controller started, epoch {epoch}, state {self.state.root}")
        wake = WakeSocket(self.state)
        sel = selectors.DefaultSelector()
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        os.set_blocking(rfd, False)
        sel.register(rfd, selectors.EVENT_READ, "signal")
        if wake.sock:
            sel.register(wake.sock, selectors.EVENT_READ, "wake")

        def on_signal(signum, _frame):
            self.stopping = True
            try:
                os.write(wfd, b"x")
            except OSError:
                pass

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        notifier = _notifier()
        source = DesiredSource(store)
        observer = Observer(self.state, store, self.platform)
        executor = Executor(self.state, store, self.platform, epoch=epoch, spec_of=lambda n: specs.get(n),
                            clock=self.clock, scope_command=_scope_command())
        maintenance = MaintenanceTick(str(self.state.db), store, epoch)
        waiters: dict[int, int] = {}
        specs: dict = {}
        watched_exits: set[str] = set()  # profiles whose last process this controller saw die
        failing: dict[tuple[str, str], tuple[int, float]] = {}  # (profile, action) -> (failures, retry at)
        scan = True
        ready_sent = False
        retained_at: float | None = None
        try:
            while not self.stopping:
                desired, specs = source.current()
                now = self.clock()
                timeout = IDLE_WAIT_SECONDS
                acted = False
                if desired is not None:
                    observed = observer.observe(specs, now=now, scan=scan)
                    current = plan(desired, observed, now)
                    if not observed.scanned and any(a.kind == "spawn" and a.profile not in watched_exits
                                                    for a in current.executable(now, held_now(failing, now))):
                        # Never spawn blind beside a live process we have not seen: look for one first. A
                        # respawn after an exit this controller watched needs no scan: it saw the predecessor die.
                        observed = observer.observe(specs, now=now, scan=True)
                        current = plan(desired, observed, now)
                    scan = False
                    # Actions that failed recently wait out their backoff instead of spinning the loop.
                    held = held_now(failing, now)
                    for action in current.executable(now, held):
                        key = (action.profile, action.kind)
                        acted = True
                        history = observed.get(action.profile).history
                        try:
                            executor.execute(action, observed.get(action.profile))
                            failing.pop(key, None)
                            if history.action_error_kind == action.kind and action.kind != "spawn":
                                store.update_history(action.profile, action_error=None, action_error_kind=None,
                                                     action_error_at=None, action_errors=0)
                        except Exception as exc:  # noqa: BLE001 - one profile's failure must not stop the loop
                            count = self._action_failed(store, epoch, action, history, exc, now, failing)
                            if count <= 3 or count % 20 == 0:
                                log(f"{action.profile}: {action.kind} failed: {type(exc).__name__}: {exc}")
                            # What the failed action left behind is unknown (a process may have started):
                            # look at the host before the next spawn.
                            watched_exits.discard(action.profile)
                            scan = True
                            continue
                        if action.kind == "reclaim" and action.reason == "pid_dead":
                            watched_exits.add(action.profile)
                        elif action.kind == "spawn":
                            watched_exits.discard(action.profile)
                    if retained_at is None or not 0 <= now - retained_at < RETENTION_EVERY:
                        retained_at = now
                        self._retain(store, desired.spec.retention, now)
                    track_idle(store, observed, now)
                    maintenance.advance(desired, observed, current, now)
                    store.set_observed_generation(desired.generation)
                    self._watch(sel, waiters, observed)
                    deadline = min([d for d in [current.next_deadline(now)] if d] +
                                   [until for _, until in failing.values() if until > now], default=None)
                    resync = RESYNC_SECONDS * random.uniform(0.8, 1.2)
                    timeout = min(resync, (deadline - now) if deadline else resync)
                    if observed.maintenance or maintenance.busy():
                        timeout = min(timeout, IDLE_POLL_SECONDS)
                self.passes += 1
                if notifier is not None:
                    if not ready_sent:
                        notifier.ready(f"{len(specs)} profiles")
                        ready_sent = True
                    notifier.watchdog()
                    if notifier.watchdog_interval:
                        timeout = min(timeout, notifier.watchdog_interval)
                if acted:
                    continue
                timeout = max(0.0, timeout)
                if not wake.sock:
                    timeout = min(timeout, 1.0)  # no wake socket: poll the store instead
                events = sel.select(timeout)
                for key, _ in events:
                    if key.data == "wake":
                        if "scan" in wake.drain():
                            scan = True
                    elif key.data == "signal":
                        try:
                            os.read(rfd, 64)
                        except OSError:
                            pass
        finally:
            for fd in waiters.values():
                os.close(fd)
            sel.close()
            wake.close()
            os.close(rfd)
            os.close(wfd)
            if notifier is not None:
                notifier.stopping()
            store.journal("controller_stopped", f"controller pid {os.getpid()} stopped", 
                          epoch=epoch)
            log("controller stopped; gateways left running")
        return EXIT_OK

    def _retain(self, store: Store, policy, now: float) -> None:
        try:
            gone = apply_retention(store, self.state, policy, now)
        except Exception as exc:  # noqa: BLE001 - trimming history never stops the fleet
            log(f"retention failed: {type(exc).__name__}: {exc}")
            return
        if gone:
            log(f"retention: {gone} old journal rows, requests or adoption-log lines dropped")

    def _action_failed(self, store: Store, epoch: int, action, history, exc: Exception, now: float,
                       failing: dict) -> int:
        """Any exception of an action is that profile's failure, kept in the store: the planner backs
        it off (and `status` shows it) while every other profile goes on. Returns how many in a row."""
        key = (action.profile, action.kind)
        count = (history.action_errors if history.action_error_kind == action.kind else 0) + 1
        count = max(count, failing.get(key, (0, 0.0))[0] + 1)
        error = f"{type(exc).__name__}: {exc}"[:500]
        try:
            store.update_history(action.profile, action_error=error, action_error_kind=action.kind,
                                 action_error_at=now, action_errors=count)
            if count <= 3 or count % 20 == 0:
                store.journal("error", f"{action.kind} failed: {error}", profile=action.profile, epoch=epoch)
            failing.pop(key, None)
        except Exception:  # noqa: BLE001 - the store itself is in trouble: hold the action in memory instead
            failing[key] = (count, now + ERROR_BACKOFF[min(count - 1, len(ERROR_BACKOFF) - 1)])
        return count

    def _watch(self, sel, waiters: dict[int, int], observed) -> None:
        """Keep one exit waiter (pidfd) per live gateway, so a death wakes us at once."""
        live = {o.process.pid for o in observed.profiles.values() if o.process is not None}
        for pid in list(waiters):
            if pid not in live:
                fd = waiters.pop(pid)
                sel.unregister(fd)
                os.close(fd)
        for pid in live - set(waiters):
            fd = self.platform.exit_waiter(pid)
            if fd is not None:
                waiters[pid] = fd
                sel.register(fd, selectors.EVENT_READ, ("exit", pid))
