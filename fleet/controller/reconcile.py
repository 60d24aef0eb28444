"""One pass (controller-runtime's `Reconcile`): read the desired state, observe, plan, execute.

The pass keeps the loop's rules: record fixes first (`Plan.executable`), a process scan before a blind spawn,
no spawn from a desired state that changed meanwhile. It never waits; the loop around it does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fleet.controller import down
from fleet.controller.bookkeeping import StoreBookkeeping
from fleet.controller.claims import HomeClaims
from fleet.controller.desired import DesiredSource
from fleet.controller.fence_watch import FenceWatch
from fleet.controller.holds import Holds
from fleet.controller.idle import track_idle
from fleet.controller.log import log
from fleet.controller.on_demand import MaintenanceOnDemand, SourceOnDemand, TakeoversOnDemand
from fleet.execute.executor import Executor
from fleet.observe.model import Observed, ProfileObservation
from fleet.observe.observer import Observer
from fleet.plan.model import Action, Desired, Plan
from fleet.plan.planner import plan
from fleet.platform.base import Platform
from fleet.store.db import ProfileHistory, Store
from fleet.store.layout import StateDir
from fleet.store.retention import apply_retention

RETENTION_EVERY = 60.0  # how often the journal, requests and adoption logs are trimmed


@dataclass(frozen=True)
class PassResult:
    """What one pass did and saw, and when the loop should run the next one."""
    profiles: int = 0  # the profiles it planned for (removed ones still in the inventory included)
    planned: bool = False  # there was a desired state to plan from
    attempted: tuple[Action, ...] = ()  # done, failed or superseded, in order
    superseded: bool = False  # a spawn found the desired state changed since it was read
    converged: bool = False  # the plan had nothing left to change
    next_run: float | None = None  # the earliest not_before or in-memory retry after the pass
    poll: bool = False  # a maintenance is in progress: look again within IDLE_POLL_SECONDS
    gateways: frozenset[int] = frozenset()  # pids of the live gateways, whose exits should wake the loop
    fenced: bool = False  # this process no longer owns the state directory: stop
    left: bool = False  # the controller was asked to leave during the pass, which then started nothing more
    down_done: bool = False  # the fleet is down as a `down` asked (fleet/controller/down.py): the controller leaves
    source_next: float | None = None  # when the followed git source wants the next pass (a fetch in flight: soon)
    failed: tuple[Action, ...] = ()  # the attempted actions that raised
    first: int = 0  # how many of `attempted` came before the pass's look (a respawn after exits, see after_exits)
    desired: Desired | None = None  # what the pass planned from, what it saw and its plan (for the metrics)
    observed: Observed | None = None
    plan: Plan | None = None

    @property
    def replan_now(self) -> bool:
        """An action changed the world after the pass looked at it (or was cut short): plan again at once instead
        of waiting."""
        return self.superseded or len(self.attempted) > self.first


FENCED = PassResult(fenced=True)


def superseded(store: Store, generation: int, planned_from: ProfileHistory) -> bool:
    """The desired state of this profile changed while this pass ran: a newer generation, or an operator's
    `stop`, `start` or `down` of it."""
    try:
        current = store.current_generation_number()
        now = store.history(planned_from.name)
    except Exception:  # noqa: BLE001 - a store that cannot be read now: go on with what was read
        return False
    return (current is not None and current != generation) or \
        (now.override_desired, now.override_by) != (planned_from.override_desired, planned_from.override_by)


def _earliest(*times: float | None) -> float | None:
    return min((t for t in times if t), default=None)


def _pid(obs: ProfileObservation) -> int | None:
    return obs.process.pid if obs.process is not None else None


def _worth_reporting(failures: int) -> bool:
    # A profile failing for hours says so at first and then now and then, not on every pass.
    return failures <= 3 or failures % 20 == 0


def _never() -> bool:
    return False


class Reconciler:
    def __init__(self, state: StateDir, store: Store, platform: Platform, *, epoch: int, fence: FenceWatch,
                 bookkeeping: StoreBookkeeping, clock, leaving: Callable[[], bool] = _never):
        self.state = state
        self.store = store
        self.clock = clock
        self.epoch = epoch
        self.fence = fence
        # A stop request (a signal, handled between two of the pass's steps): every action is whole on its own and
        # the next controller takes up what is left, so the pass starts nothing more. A pass can last seconds (a cold
        # start of 1,000 is one), longer than a service manager's stop may wait.
        self.leaving = leaving
        self.bookkeeping = bookkeeping
        self.specs: dict = {}  # the current pass's specs, the executor's too
        self.source = DesiredSource(store)
        self.observer = Observer(state, store, platform)
        self.executor = Executor(state, store, platform, epoch=epoch, spec_of=lambda n: self.specs.get(n),
                                 clock=clock)
        # Most fleets never use these: each loads with the first work for it (fleet/controller/on_demand.py).
        self.maintenance = MaintenanceOnDemand(str(state.db), store, epoch)
        self.claims = HomeClaims(state, store, epoch)
        self.takeovers = TakeoversOnDemand(state, store, platform, epoch)
        self.holds = Holds()
        self.follower = SourceOnDemand(state, store, platform, epoch=epoch, clock=clock, fenced=fence.breached)
        self.scan = True  # look at the process table in the next pass
        self.retained_at: float | None = None
        self.failed: list[Action] = []  # this pass's actions that raised
        # The last pass's desired state and look, when it changed nothing (the loop then waited): a gateway exit that
        # wakes the loop is handled from it first (after_exits).
        self.settled: tuple[Desired, Observed] | None = None

    def request_scan(self) -> None:
        self.scan = True

    def request_sync(self) -> None:
        """`hermes-fleet sync` (or a source's change): fetch the followed source in this pass."""
        self.follower.want_fetch()

    def reconcile_once(self, now: float, exited: frozenset[int] = frozenset()) -> PassResult:
        """One pass. `exited`: gateways whose exit alone woke the loop; their profiles are respawned first."""
        settled, self.settled = self.settled, None
        self.failed = []
        first = self.after_exits(settled, exited, now) if settled and exited else ()
        if self._halted():
            return self._halt_result(first)
        # The source first: a commit it records now is this very pass's desired state.
        source_next = self.follower.step(now)
        desired, self.specs = self.source.current()
        self.bookkeeping.tick(now)
        # Read before the look: a `down` is judged only by a look no other writer came after (a `down` left, an
        # `apply` or `start` that brought a profile back): otherwise by the next pass, at once.
        down_seen = (down.pending(self.store, self.epoch), self.store.data_version())
        if desired is None:  # nothing was ever applied: nothing of the fleet runs
            return PassResult(source_next=source_next, attempted=first, first=len(first), failed=tuple(self.failed),
                              down_done=self._down_finished((), None, None, down_seen) is True)
        observed, current = self._observe_and_plan(desired, now)
        if self._halted():
            return self._halt_result(first)
        self.claims.update(desired, self.specs, observed)
        observed, current, attempted, unseen, cut_short = self._act(desired, observed, current, now)
        if self._halted():  # nothing more goes into a store that may be another controller's now
            return self._halt_result(first + attempted)
        self._retain_when_due(desired, now)
        track_idle(self.store, observed, now)
        self.maintenance.advance(desired, observed, current, now)
        handover_next = self.takeovers.advance(desired, observed, attempted, now)
        self.store.set_observed_generation(desired.generation)
        if not attempted and not self.failed:
            self.settled = (desired, observed)
        # Not `first`: the look came after them. A pass whose only actions came first asks for no other pass soon.
        # Nor the reclaims whose profiles were looked at again: the pass that records a `down`'s last exits ends it.
        down_done = self._down_finished(unseen, observed, current, down_seen)
        return PassResult(
            profiles=len(self.specs), planned=True, attempted=first + attempted, first=len(first),
            superseded=cut_short or down_done is None,
            converged=current.in_sync,
            next_run=_earliest(current.next_deadline(now), self.holds.next_retry(now), handover_next),
            poll=bool(observed.maintenance) or self.maintenance.busy(),
            gateways=frozenset(o.process.pid for o in observed.profiles.values() if o.process is not None),
            source_next=source_next, failed=tuple(self.failed), desired=desired, observed=observed, plan=current,
            down_done=down_done is True)

    def _act(self, desired: Desired, observed: Observed, current: Plan, now: float
             ) -> tuple[Observed, Plan, tuple[Action, ...], tuple[Action, ...], bool]:
        """The pass's actions, then the reclaimed profiles looked at again and acted on (`_after_reclaims`). Returns
        the look and plan as they are after that, the actions, those no look of the pass came after, and whether
        one was superseded."""
        attempted, cut_short = self._execute(desired, observed, current, now)
        if cut_short or self._halted():
            return observed, current, attempted, attempted, cut_short
        observed, current, respawned, cut_short, looked_again = self._after_reclaims(desired, observed, current,
                                                                                    attempted)
        unseen = tuple(a for a in attempted if a.profile not in looked_again) + respawned
        return observed, current, attempted + respawned, unseen, cut_short

    def after_exits(self, settled: tuple[Desired, Observed], exited: frozenset[int], now: float) -> tuple[Action, ...]:
        """The profiles whose gateways (this controller's children or adoptees) just exited, reclaimed and respawned
        before the pass looks at every profile: at 1,000 profiles that look was most of a respawn's latency.
        From the last pass's look, which changed nothing since, with these profiles and what concerns the whole
        fleet read afresh: the planner decides each profile on its own (its siblings weigh only in the stagger,
        never to hurry it), so they get the steps a whole pass would give them. Only the profiles with a reclaim
        due: their records fixes (`Plan.executable` gives those alone) and what follows them (`_after_reclaims`);
        nothing when the desired state changed since (the pass plans from it)."""
        last_desired, last_observed = settled
        names = frozenset(name for name, obs in last_observed.profiles.items()
                          if obs.process is not None and obs.process.pid in exited)
        if not names:
            return ()
        desired, self.specs = self.source.current()
        if desired is None or desired.generation != last_desired.generation:
            return ()
        observed = self.observer.refreshed(last_observed, self.specs, names, now=now)
        current = plan(desired, observed, now, only=names)
        reclaims = frozenset(a.profile for a in current.executable(now, self.holds.held(now), names)
                             if a.kind == "reclaim")
        if not reclaims:
            return ()
        self.executor.begin_pass()  # its look at the process table comes after these deaths were seen
        attempted, cut_short = self._execute(desired, observed, current, now, only=reclaims)  # records first
        if cut_short or self._halted():
            return attempted
        return attempted + self._after_reclaims(desired, observed, current, attempted)[2]

    def _down_finished(self, attempted: tuple[Action, ...], observed: Observed | None, current: Plan | None,
                       seen: tuple[str | None, int]) -> bool | None:
        """After a pass that changed nothing: whether a `down` left for this controller is done (no gateway of the
        fleet runs), which it then says before it leaves; a `down` overtaken by `apply` or `start` (a profile no
        longer held stopped) is dropped, which its command reports. None when another process wrote to the store
        after the pass looked (`seen`: the request and the store's data version before the look): the request
        may be newer than the look, or the hold lifted since; that look judges neither, another pass does, at once."""
        if attempted or self.failed:
            return False
        request = down.pending(self.store, self.epoch)
        if request is None:
            return False
        if (request, self.store.data_version()) != seen:
            return None
        shown = current.shown() if current is not None else {}
        profiles = observed.profiles if observed is not None else {}
        back = sorted(name for name in shown if name in profiles
                      and profiles[name].history.override_desired != "stopped")
        if back:
            down.drop(self.store, request, self.epoch, f"down overtaken: {', '.join(back)} brought back", done=False)
            return False
        running = [name for name, action in shown.items() if name in profiles
                   and down.waited_for(_pid(profiles[name]), action)]
        if running:
            return False
        down.drop(self.store, request, self.epoch, "the fleet is down: no gateway runs; the controller leaves",
                  done=True)
        return True

    def _halted(self) -> bool:
        return self.fence.breached() or self.leaving()

    def _halt_result(self, attempted: tuple[Action, ...] = ()) -> PassResult:
        return FENCED if self.fence.breached() else PassResult(left=True, attempted=attempted)

    def _observe_and_plan(self, desired: Desired, now: float) -> tuple[Observed, Plan]:
        observed = self.observer.observe(self.specs, now=now, scan=self.scan)
        current = plan(desired, observed, now)
        if not observed.scanned and self._would_spawn_blind(current, now):
            # Never spawn blind beside a live process we have not seen: look for one first. A
            # respawn after an exit this controller watched needs no scan: it saw the predecessor die.
            observed = self.observer.observe(self.specs, now=now, scan=True)
            current = plan(desired, observed, now)
        self.scan = False
        return observed, current

    def _after_reclaims(self, desired: Desired, observed: Observed, current: Plan,
                        attempted: tuple[Action, ...]) -> tuple[Observed, Plan, tuple[Action, ...], bool, frozenset[str]]:
        """The profiles whose dead gateway's record this pass reclaimed: looked at again and planned at once, so a
        respawn is one pass, not two (a pass looks at every profile: at 1,000 that is most of the latency).
        Only the profiles whose own gateway (spawned or adopted by this controller) ended, and whose leftovers it
        ended, with no action of this pass failed: a record it did not write says nothing of what runs, and the
        look again reads records, not the process table (the next pass looks at the host first). Also returns
        the profiles looked at again."""
        failed = {a.profile for a in self.failed}
        ready = frozenset(a.profile for a in attempted if a.kind == "reclaim" and a.profile not in failed
                          and self.executor.saw_its_gateway_end(a.profile))
        if not ready:
            return observed, current, (), False, ready
        now = self.clock()
        observed = self.observer.refreshed(observed, self.specs, ready, now=now)
        current = plan(desired, observed, now)
        respawned, cut_short = self._execute(desired, observed, current, now, only=ready)
        return observed, current, respawned, cut_short, ready

    def _would_spawn_blind(self, current: Plan, now: float) -> bool:
        return any(a.kind == "spawn" and not self.executor.saw_its_gateway_end(a.profile)
                   for a in current.executable(now, self.holds.held(now)))

    def _execute(self, desired: Desired, observed: Observed, current: Plan, now: float,
                 only: frozenset[str] | None = None) -> tuple[tuple[Action, ...], bool]:
        """Performs what is due (of `only` these profiles); returns the actions attempted and whether a spawn was
        superseded."""
        attempted: list[Action] = []
        if only is None:
            self.executor.begin_pass()
        # Actions that failed recently wait out their backoff instead of spinning the loop.
        for action in current.executable(now, self.holds.held(now), only):
            if self._halted():
                break
            attempted.append(action)
            if not self._perform(action, observed.get(action.profile), desired.generation, now):
                return tuple(attempted), True  # the desired state changed meanwhile: plan again at once, from it
        return tuple(attempted), False

    def _perform(self, action: Action, obs: ProfileObservation, generation: int, now: float) -> bool:
        """False when the action started nothing because the desired state changed since it was read."""
        history = obs.history
        try:
            if not self.executor.execute(action, obs, lambda: superseded(self.store, generation, history)):
                return False
            self._succeeded(action, history)
        except Exception as exc:  # noqa: BLE001 - one profile's failure must not stop the loop
            self.failed.append(action)
            count = self._record_failure(action, history, exc, now)
            if _worth_reporting(count):
                log(f"{action.profile}: {action.kind} failed: {type(exc).__name__}: {exc}")
            # What the failed action left behind is unknown (a process may have started):
            # look at the host before the next spawn.
            self.scan = True
        return True

    def _succeeded(self, action: Action, history: ProfileHistory) -> None:
        self.holds = self.holds.cleared(action.profile, action.kind)
        if history.action_error_kind == action.kind and action.kind != "spawn":
            self.store.update_history(action.profile, action_error=None, action_error_kind=None,
                                      action_error_at=None, action_errors=0)

    def _record_failure(self, action: Action, history: ProfileHistory, exc: Exception, now: float) -> int:
        """Any exception of an action is that profile's failure, kept in the store: the planner backs
        it off (and `status` shows it) while every other profile goes on. Returns how many in a row."""
        in_store = history.action_errors if history.action_error_kind == action.kind else 0
        count = max(in_store + 1, self.holds.failures(action.profile, action.kind) + 1)
        error = f"{type(exc).__name__}: {exc}"[:500]
        try:
            self.store.update_history(action.profile, action_error=error, action_error_kind=action.kind,
                                      action_error_at=now, action_errors=count)
            if _worth_reporting(count):
                self.store.journal("error", f"{action.kind} failed: {error}", profile=action.profile,
                                   epoch=self.epoch)
            self.holds = self.holds.cleared(action.profile, action.kind)
        except Exception:  # noqa: BLE001 - the store itself is in trouble: hold the action in memory instead
            self.holds = self.holds.after_failure(action.profile, action.kind, count, now)
        return count

    def _retain_when_due(self, desired: Desired, now: float) -> None:
        if self.retained_at is not None and 0 <= now - self.retained_at < RETENTION_EVERY:
            return
        self.retained_at = now
        try:
            gone = apply_retention(self.store, self.state, desired.spec.retention, now)
        except Exception as exc:  # noqa: BLE001 - trimming history never stops the fleet
            log(f"retention failed: {type(exc).__name__}: {exc}")
            return
        if gone:
            log(f"retention: {gone} old journal rows, requests or adoption-log lines dropped")
