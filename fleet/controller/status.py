"""What the fleet looks like now, per profile, for `status`, `apply --wait` and the service
commands: computed read-only from the store and the host, never from controller memory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

from fleet.controller.desired import DesiredSource
from fleet.observe.model import LiveProcess, Observed, ProfileObservation
from fleet.observe.observer import Observer
from fleet.plan.exits import describe_exit
from fleet.plan.model import Action, Desired, Plan
from fleet.plan.planner import plan
from fleet.platform.base import Platform
from fleet.platform.controller_process import holder_runs
from fleet.spec.model import DRIVER_HERMES, FleetSpec, ProfileSpec
from fleet.spec.secrets import mask_text
from fleet.store.db import ProfileHistory, Store
from fleet.store.health import read_degraded
from fleet.store.layout import StateDir
from fleet.store.lock import read_holder
from fleet.store.metrics_state import EndpointState, read_endpoint_state
from fleet.store.sources import Source, get_source

GATED_REASONS = ("idle_gate", "budget_exhausted", "window_closed", "maintenance")
SETTLED_WAITS = ("suspended", "exited_cleanly", "restart_policy_never", "not_managed", "prune_deferred")


class Phase(StrEnum):
    """Where a profile is, as `status` says it (Argo CD's words where they fit)."""
    RUNNING = "Running"
    STARTING = "Starting"
    BACKOFF = "Backoff"
    DRAINING = "Draining"
    STOPPED = "Stopped"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    WAITING = "Waiting"
    MISSING = "Missing"
    REMOVING = "Removing"


class Health(StrEnum):
    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    SUSPENDED = "Suspended"
    MISSING = "Missing"


class Sync(StrEnum):
    """Whether what runs is what the manifest says."""
    SYNCED = "Synced"
    OUT_OF_SYNC = "OutOfSync"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class ControllerStatus:
    """The controller as `status` tells it: whether it runs, the generation it reached, its metrics."""
    running: bool
    pid: int | None
    epoch: int | None
    version: str | None
    since: float | None
    generation: int
    observed_generation: int
    store_degraded: str | None = None  # "<reason> since <time>" while the controller keeps its bookkeeping in memory
    metrics: EndpointState | None = None  # where it serves metrics, or why not (None: not configured)

    @property
    def converged_generation(self) -> bool:
        return self.running and self.generation == self.observed_generation


@dataclass(frozen=True)
class Hold:
    """A person's `stop` or `down` keeping a profile stopped that the manifest wants running."""
    by: str  # stop | down
    user: str | None
    since: float | None


def hold_of(history: ProfileHistory) -> Hold | None:
    if history.override_desired != "stopped":
        return None
    return Hold(by=history.override_verb or "stop", user=history.override_user, since=history.override_at)


def _clock(ts: float | None, now: float) -> str:
    if ts is None:
        return "an unknown time"
    same_day = time.localtime(ts)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", time.localtime(ts))


def hold_note(hold: Hold, now: float, profile: str, action: Action | None = None) -> str:
    """e.g. "down since 17:39 by root; `apply` or `start alpha` brings it back"."""
    who = f" by {hold.user}" if hold.user else ""
    if hold.by == "release" and action is not None and action.reason == "released":
        # "released to hermes-gateway-alpha.service; `hermes-fleet takeover alpha` takes it back"
        where, _, back = action.message.partition("; ")
        return f"{where} since {_clock(hold.since, now)}{who}; {back}"
    if hold.by == "down":
        return f"down since {_clock(hold.since, now)}{who}; `apply` or `start {profile}` brings it back"
    return f"stopped since {_clock(hold.since, now)}{who}; `start {profile}` brings it back"


def held_down_message(held: tuple[ProfileHistory, ...], now: float) -> str:
    """One line for the log of a controller that starts while `down` is in force."""
    first = min(held, key=lambda h: h.override_at or now)
    who = f" by {first.override_user}" if first.override_user else ""
    return (f"the fleet is down (since {_clock(first.override_at, now)}{who}): {len(held)} profile(s) stay stopped "
            f"until `hermes-fleet apply` or `hermes-fleet start PROFILE`")


@dataclass(frozen=True)
class ProfileStatus:
    """One profile as `status` shows it: its phase, sync, health, process and next action."""
    name: str
    phase: Phase
    sync: Sync
    health: Health
    pid: int | None
    started_at: float | None
    restarts: int
    last_exit: str | None  # None: no exit seen yet
    heartbeat_age: float | None
    active_agents: int | None
    gateway_state: str | None
    spec_hash: str | None
    desired_spec_hash: str | None
    desired: str
    note: str
    action: Action
    hold: Hold | None = None  # set when a `stop`/`down` keeps stopped what the manifest wants running


class SourceSync(StrEnum):
    """Whether the fleet runs what the followed branch says."""
    SYNCED = "Synced"  # the fetched commit is applied and its generation is the newest
    OUT_OF_SYNC = "OutOfSync"  # a newer commit is not applied (yet, or it failed), or another generation came later
    SUSPENDED = "Suspended"  # not followed now: `source resume`
    UNKNOWN = "Unknown"  # nothing fetched yet


@dataclass(frozen=True)
class SourceStatus:
    """The followed git source as `status` and `source show` tell it."""
    source: Source
    generation: int  # the newest generation in the store

    @property
    def sync(self) -> SourceSync:
        s = self.source
        if s.suspended:
            return SourceSync.SUSPENDED
        if not s.fetched_commit:
            return SourceSync.UNKNOWN
        if s.fetched_commit == s.applied_commit and s.applied_generation == self.generation:
            return SourceSync.SYNCED
        return SourceSync.OUT_OF_SYNC

    @property
    def failing(self) -> bool:
        """A failure is shown: the last commit looked at was not applied, or the fetches fail."""
        return self.source.failing


def source_status(store: Store) -> SourceStatus | None:
    source = get_source(store)
    if source is None:
        return None
    return SourceStatus(source, store.current_generation_number() or 0)


@dataclass(frozen=True)
class FleetStatus:
    """The whole fleet as `status` shows it: the controller, each profile, the plan and the source."""
    controller: ControllerStatus
    profiles: tuple[ProfileStatus, ...]
    plan: Plan
    observed: Observed
    source: SourceStatus | None = None  # the git branch the controller follows, if any

    @property
    def converged(self) -> bool:
        return self.controller.converged_generation and settled(self.profiles, self.plan)

    @property
    def failed(self) -> tuple[ProfileStatus, ...]:
        return tuple(p for p in self.profiles if p.phase == Phase.FAILED)

    @property
    def held(self) -> tuple[ProfileStatus, ...]:
        return tuple(p for p in self.profiles if p.hold is not None)

    @property
    def gated(self) -> tuple[ProfileStatus, ...]:
        return tuple(p for p in self.profiles if p.action.kind == "wait" and p.action.reason in GATED_REASONS)


def controller_status(state: StateDir, store: Store, platform: Platform) -> ControllerStatus:
    holder = read_holder(state)
    running = holder_runs(state, platform, holder)
    generation = store.current_generation_number() or 0
    return ControllerStatus(running=running, pid=holder.pid if holder and running else None,
                            epoch=holder.epoch if holder else None, version=holder.version if holder else None,
                            since=holder.started_at if holder else None,
                            generation=generation, observed_generation=store.observed_generation,
                            store_degraded=_store_degraded(state) if running else None,
                            metrics=_metrics(state) if running else None)


def _metrics(state: StateDir) -> EndpointState | None:
    endpoint = read_endpoint_state(state)
    return endpoint if endpoint is not None and endpoint.configured else None


def _store_degraded(state: StateDir) -> str | None:
    problem = read_degraded(state)
    if problem is None:
        return None
    since = problem.get("since")
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return (f"{problem.get('message', problem.get('kind'))} since {when}; "
            f"{problem.get('pending', 0)} bookkeeping write(s) kept in memory")


def _phase(action: Action, obs: ProfileObservation, hermes: bool) -> tuple[Phase, Health]:
    """(phase, health): what the chosen action says first, then whether and how the gateway runs."""
    by_action = _phase_of_action(action)
    if by_action is not None:
        return by_action
    if obs.process is None:
        return _phase_without_process(action, obs.history)
    if action.kind == "wait" and action.reason in GATED_REASONS:
        return Phase.WAITING, Health.HEALTHY
    if _still_starting(obs, obs.process, hermes):
        return Phase.STARTING, Health.PROGRESSING
    return Phase.RUNNING, Health.HEALTHY


def _phase_of_action(action: Action) -> tuple[Phase, Health] | None:
    """The phases an action decides whether or not a gateway runs; None for the others."""
    kind, reason = action.kind, action.reason
    if kind == "conflict":
        return Phase.FAILED, Health.DEGRADED
    if reason == "suspended":
        return Phase.SUSPENDED, Health.SUSPENDED
    if kind == "wait" and reason == "action_failed":
        return Phase.BACKOFF, Health.DEGRADED
    if kind == "keep" and reason in ("stopped", "released"):
        return Phase.STOPPED, Health.HEALTHY
    if kind == "wait" and reason in ("taking_over", "giving_back"):
        return Phase.WAITING, Health.PROGRESSING
    if kind in ("drain", "replace") or reason in ("draining", "stopping"):
        return (Phase.REMOVING if reason == "removed_from_manifest" else Phase.DRAINING), Health.PROGRESSING
    if kind == "kill":
        return Phase.FAILED if reason == "wedged" else Phase.DRAINING, Health.DEGRADED
    return None


def _phase_without_process(action: Action, history: ProfileHistory) -> tuple[Phase, Health]:
    if action.kind == "spawn" and action.not_before is not None and history.failures:
        return Phase.BACKOFF, Health.DEGRADED
    if action.kind == "spawn":
        return Phase.STARTING, Health.PROGRESSING
    if action.reason in ("exited_cleanly", "restart_policy_never"):
        return Phase.STOPPED, Health.MISSING
    return Phase.MISSING, Health.MISSING


def _still_starting(obs: ProfileObservation, proc: LiveProcess, hermes: bool) -> bool:
    st = obs.status
    if hermes:
        # Hermes writes `running` once its adapters are up; until then it is not
        return st is None or st.pid != proc.pid or st.state in ("starting", "startup_failed")
    return st is not None and st.state == "starting"


def fleet_status(state: StateDir, platform: Platform, now: float, *, scan: bool = False) -> FleetStatus:
    store = Store(state.db, readonly=True)
    try:
        ctl = controller_status(state, store, platform)
        followed = source_status(store)
        desired, specs = DesiredSource(store).current()
        desired = desired if desired is not None else _nothing_applied()
        observed = Observer(state, store, platform).observe(specs, now=now, scan=scan)
        current = plan(desired, observed, now)
    finally:
        store.close()
    rows = profile_rows(desired, observed, current, now)
    return FleetStatus(controller=ctl, profiles=rows, plan=current, observed=observed, source=followed)


def profile_rows(desired: Desired, observed: Observed, current: Plan, now: float) -> tuple[ProfileStatus, ...]:
    """One row per profile the plan covers, sorted by name: what `status` shows and the metrics export."""
    actions = current.shown()
    return tuple(_profile_status(name, actions[name], observed.get(name), desired.spec.profile(name), now)
                 for name in sorted(actions))


def settled(rows: tuple[ProfileStatus, ...], current: Plan) -> bool:
    """Every profile where the manifest wants it, with nothing left to do."""
    # A record fix still to be done (reclaim, adopt) hides behind the profile's `keep` row: not yet.
    return all((p.action.kind == "keep" or (p.action.kind == "wait" and p.action.reason in SETTLED_WAITS))
               and p.phase != Phase.STARTING for p in rows) \
        and not any(a.kind in ("reclaim", "adopt") for a in current.actions)


def _nothing_applied() -> Desired:
    """Before the first `apply`: an empty fleet the planner may plan for (it only fixes records)."""
    return Desired(FleetSpec("default", 0, 1, (), "", ""), 0, allow_empty=True)


def _profile_status(name: str, action: Action, obs: ProfileObservation, spec: ProfileSpec | None,
                    now: float) -> ProfileStatus:
    proc = obs.process
    running_hash = proc.spec_hash if proc else None
    hold = hold_of(obs.history) if spec is not None and spec.desired == "running" else None
    phase, health = _phase(action, obs, spec is not None and spec.driver == DRIVER_HERMES)
    return ProfileStatus(
        name=name, phase=phase, sync=_sync(spec, proc, running_hash, hold), health=health,
        pid=proc.pid if proc else None, started_at=proc.started_at if proc else None,
        restarts=obs.history.restarts, last_exit=_last_exit(obs.history), heartbeat_age=_heartbeat_age(obs, now),
        active_agents=obs.status.active if obs.status else None,
        gateway_state=obs.status.state if obs.status else None, spec_hash=running_hash,
        desired_spec_hash=spec.spec_hash if spec else None, desired=obs.history.desired_state(spec),
        note=hold_note(hold, now, name, action) if hold and action.kind == "keep" else _note(action),
        action=action, hold=hold)


def _last_exit(history: ProfileHistory) -> str | None:
    if history.last_exit_class is None:
        return None
    return describe_exit(history.last_exit_code, history.last_exit_class)


def _heartbeat_age(obs: ProfileObservation, now: float) -> float | None:
    """Seconds since the gateway's last heartbeat; None without one from this very process (a heartbeat
    older than its start was written by a predecessor)."""
    proc = obs.process
    if obs.heartbeat_at and proc and obs.heartbeat_at >= proc.started_at - 1:
        return now - obs.heartbeat_at
    return None


def _sync(spec, proc, running_hash: str | None, hold: Hold | None) -> Sync:
    """Synced only when what runs is what the manifest says: a profile that a `stop` or `down` keeps
    stopped, or that runs while the manifest wants it stopped, is OutOfSync."""
    if hold is not None and hold.by == "release":
        return Sync.OUT_OF_SYNC  # its native unit runs it (a process of unknown spec): not what the manifest says
    if spec is None or (proc is not None and running_hash is None):
        return Sync.UNKNOWN
    if hold is not None:
        return Sync.OUT_OF_SYNC
    if spec.desired == "stopped":
        return Sync.SYNCED if proc is None else Sync.OUT_OF_SYNC
    return Sync.SYNCED if running_hash == spec.spec_hash else Sync.OUT_OF_SYNC


def _note(action: Action) -> str:
    if action.kind == "keep":
        return ""
    text = f"{action.kind} ({action.reason})"
    if action.message:
        text += f": {action.message}"
    return mask_text(text)
