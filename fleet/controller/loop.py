"""The controller: one process per state directory that keeps observed == desired.

forever { wait for (child exit | wake-up | earliest not_before | resync); observe; plan; execute }
"""

from __future__ import annotations

import dataclasses
import os
import random
import selectors
import signal
import sys
import time

from fleet import __version__
from fleet.controller.desired import DesiredSource
from fleet.controller.maintenance_tick import IDLE_POLL_SECONDS, MaintenanceTick, track_idle
from fleet.controller.record import DOWN
from fleet.controller.wake import WakeSocket
from fleet.execute.executor import Executor
from fleet.execute.logs import LogGuard
from fleet.observe.observer import Observer
from fleet.plan.planner import plan
from fleet.platform.systemd_scope import scope_command
from fleet.service.notify import SdNotify
from fleet.spec.model import DRIVER_HERMES
from fleet.spec.secrets import mask_text
from fleet.store.claims import CLAIM_RENEW_SECONDS, own_claim, release_claim, write_claim
from fleet.store.db import ProfileHistory, Store
from fleet.store.fence import Fence
from fleet.store.health import HealthFile
from fleet.store.layout import StateDir, ensure_state_dir
from fleet.store.lock import LockHeld, SupervisorLock
from fleet.store.retention import apply_retention

RESYNC_SECONDS = 30.0
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
IDLE_WAIT_SECONDS = 60.0
RETENTION_EVERY = 60.0  # how often the journal, requests and adoption logs are trimmed
STORE_BUSY_SECONDS = 5.0  # a store locked longer than this: keep supervising from memory (see StoreBookkeeping)
# Between passes the fence is re-checked at least this often, so a controller whose state directory
# was removed or replaced exits promptly even while nothing wakes it.
FENCE_POLL_SECONDS = 2.0
EXIT_OK, EXIT_FATAL, EXIT_CONFIG, EXIT_LOCKED, EXIT_FENCED = 0, 1, 2, 3, 4


def held_now(failing: dict, now: float) -> frozenset:
    return frozenset(k for k, (_, until) in failing.items() if until > now)


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    try:
        print(f"{stamp} hermes-fleet[{os.getpid()}] {mask_text(message)}", file=sys.stderr, flush=True)
    except OSError:
        pass  # a full disk under the log must not stop the supervision


def _superseded(store: Store, generation: int, planned_from: ProfileHistory) -> bool:
    """The desired state of this profile changed while this pass ran: a newer generation, or an operator's
    `stop`, `start` or `down` of it."""
    try:
        current = store.current_generation()
        now = store.history(planned_from.name)
    except Exception:  # noqa: BLE001 - a store that cannot be read now: go on with what was read
        return False
    return (current is not None and current.generation != generation) or \
        (now.override_desired, now.override_by) != (planned_from.override_desired, planned_from.override_by)


class Controller:
    def __init__(self, state: StateDir, platform, *, clock=time.time):
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
            if wake.identity is not None:
                fence.hold("wake socket", wake.path, wake.identity)
        fenced: list[str] = []  # why this process no longer owns the state directory

        def breached() -> bool:
            # Everything on disk must still be what this process opened before it writes or signals.
            if not fenced:
                why = fence.breach()
                if why:
                    fenced.append(why)
            return bool(fenced)

        def on_signal(signum, _frame):
            self.stopping = True
            try:
                os.write(wfd, b"x")
            except OSError:
                pass

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        notifier = SdNotify.from_env()
        source = DesiredSource(store)
        observer = Observer(self.state, store, self.platform)
        executor = Executor(self.state, store, self.platform, epoch=epoch, spec_of=lambda n: specs.get(n),
                            clock=self.clock, scope_command=scope_command)
        maintenance = MaintenanceTick(str(self.state.db), store, epoch)
        waiters: dict[int, int] = {}
        specs: dict = {}
        failing: dict[tuple[str, str], tuple[int, float]] = {}  # (profile, action) -> (failures, retry at)
        scan = True
        ready_sent = False
        retained_at: float | None = None
        bookkeeping = StoreBookkeeping(store, HealthFile(self.state), self.clock)
        log_guard = LogGuard(str(self.state.logs))
        claims = _Claims(self.state, store, epoch)
        try:
            while not self.stopping:
                if breached():
                    break
                desired, specs = source.current()
                now = self.clock()
                bookkeeping.tick(now)
                timeout = IDLE_WAIT_SECONDS
                acted = False
                if desired is not None:
                    observed = observer.observe(specs, now=now, scan=scan)
                    current = plan(desired, observed, now)
                    if not observed.scanned and any(a.kind == "spawn" and not executor.saw_its_gateway_end(a.profile)
                                                    for a in current.executable(now, held_now(failing, now))):
                        # Never spawn blind beside a live process we have not seen: look for one first. A
                        # respawn after an exit this controller watched needs no scan: it saw the predecessor die.
                        observed = observer.observe(specs, now=now, scan=True)
                        current = plan(desired, observed, now)
                    scan = False
                    if breached():
                        break
                    claims.update(desired, specs, observed)
                    # Actions that failed recently wait out their backoff instead of spinning the loop.
                    held = held_now(failing, now)
                    for action in current.executable(now, held):
                        if breached():
                            break
                        key = (action.profile, action.kind)
                        acted = True
                        history = observed.get(action.profile).history
                        try:
                            if not executor.execute(action, observed.get(action.profile),
                                                    lambda: _superseded(store, desired.generation, history)):
                                break  # the desired state changed meanwhile: plan again at once, from it
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
                            scan = True
                            continue
                    if retained_at is None or not 0 <= now - retained_at < RETENTION_EVERY:
                        retained_at = now
                        self._retain(store, desired.spec.retention, now)
                    if breached():
                        break
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
                if not ready_sent:
                    notifier.ready(f"{len(specs)} profiles")
                    ready_sent = True
                notifier.watchdog()
                if notifier.watchdog_interval:
                    timeout = min(timeout, notifier.watchdog_interval)
                if acted:
                    continue
                timeout = max(0.0, bookkeeping.bound(timeout, self.clock()))
                if not wake.sock:
                    timeout = min(timeout, 1.0)  # no wake socket: poll the store instead
                events = self._wait(sel, timeout, breached, log_guard)
                if fenced:
                    break
                for key, _ in events:
                    if key.data == "wake":
                        bookkeeping.retry_soon()  # a CLI command wrote: the store may take writes again
                        if "scan" in wake.drain():
                            scan = True
                    elif key.data == "signal":
                        try:
                            os.read(rfd, 64)
                        except OSError:
                            pass
        finally:
            log_guard.close()
            for fd in waiters.values():
                os.close(fd)
            sel.close()
            wake.close()
            os.close(rfd)
            os.close(wfd)
            notifier.stopping()
            if fenced:
                # Nothing goes into a store that may be another controller's, or no one's.
                log(f"{fenced[0]}; another controller may own this state directory now; exiting without "
                    f"touching any gateway")
            else:
                store.journal("controller_stopped", f"controller pid {os.getpid()} stopped",
                              epoch=epoch)
                bookkeeping.finish()
                log("controller stopped; gateways left running")
        return EXIT_FENCED if fenced else EXIT_OK

    @staticmethod
    def _wait(sel, timeout: float, breached, log_guard: LogGuard) -> list:
        """select() in slices, checking the fence between them (and the logs' sizes, see LogGuard);
        returns early once it is breached."""
        deadline = time.monotonic() + timeout
        while True:
            events = log_guard.select(sel, min(max(0.0, deadline - time.monotonic()), FENCE_POLL_SECONDS))
            if events or time.monotonic() >= deadline or breached():
                return events

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


class _Claims:
    """This fleet's claims on the Hermes homes it manages: written when missing, renewed within the lease,
    taken over when stale (with a journal entry), released when a profile leaves the fleet or `down` holds
    it. Another fleet's live claim is left alone: the planner reports that profile as a conflict."""

    def __init__(self, state: StateDir, store: Store, epoch: int):
        self.state = state
        self.store = store
        self.epoch = epoch
        self.mine = own_claim(state, store.meta("store_id") or "", os.getpid())
        self.homes: dict[str, float] = {}  # Hermes home -> when this process last wrote its claim there
        self.unwritable: set[str] = set()  # homes whose claim could not be written (logged once)

    def update(self, desired, specs: dict, observed) -> None:
        if self.mine is None:
            return
        now = time.time()
        wanted = {}
        for name in desired.spec.names:
            spec = specs.get(name)
            # A fleet brought `down` gives its homes back: another fleet may take them at once.
            held_down = observed.get(name).history.override_verb == DOWN
            if spec is not None and spec.driver == DRIVER_HERMES and not held_down:
                wanted[spec.hermes_home] = name
        for home in [h for h in self.homes if h not in wanted]:
            release_claim(home, self.mine)
            del self.homes[home]
        for home, name in wanted.items():
            obs = observed.get(name)
            if obs.other_fleet or obs.claim == "other":
                continue
            written = self.homes.get(home)
            if obs.claim == "ours" and written is not None and 0.0 <= now - written < CLAIM_RENEW_SECONDS:
                continue
            try:
                write_claim(home, dataclasses.replace(self.mine, renewed_at=now))
            except OSError as exc:
                if home not in self.unwritable:
                    self.unwritable.add(home)
                    log(f"{name}: cannot write the claim in {home}: {exc}")
                continue
            self.unwritable.discard(home)
            self.homes[home] = now
            if obs.claim == "stale":
                self.store.journal("claim_taken_over", f"{home}: stale claim of {obs.claim_note} taken over "
                                   f"(its controller is gone and its lease lapsed)", profile=name, epoch=self.epoch,
                                   data={"home": home, "previous": obs.claim_note})


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
            self.retry_at = now + ERROR_BACKOFF[min(self.failures, len(ERROR_BACKOFF) - 1)]
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
