"""The plan as a value: actions with reasons, read by renderers and the executor alike."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from fleet.maintenance.model import Gate
from fleet.observe.model import LiveProcess
from fleet.spec.model import FleetSpec, ProfileSpec
from fleet.store.records import PidRecord

class Kind(StrEnum):
    """What an action does; the text is what the store, the journal and `--output json` say."""
    SPAWN = "spawn"
    ADOPT = "adopt"
    UPDATE = "update"
    RECLAIM = "reclaim"
    KEEP = "keep"
    REPLACE = "replace"
    DRAIN = "drain"
    KILL = "kill"
    WAIT = "wait"
    CONFLICT = "conflict"


class Reason(StrEnum):
    """Why: docs/architecture.md lists which kind gives which (a test holds the table to the planner)."""
    ACTION_FAILED = "action_failed"
    ADOPTED_ARGV_MISMATCH = "adopted_argv_mismatch"
    BUDGET_EXHAUSTED = "budget_exhausted"
    CONFIG_CONFLICT = "config_conflict"
    CRASHED = "crashed"
    DESIRED_STOPPED = "desired_stopped"
    DRAIN_COMPLETE = "drain_complete"
    DRAIN_TIMEOUT = "drain_timeout"
    DRAINING = "draining"
    EXITED_CLEANLY = "exited_cleanly"
    FIRST_APPLY = "first_apply"
    FORCED = "forced"
    GIVING_BACK = "giving_back"
    IDLE_GATE = "idle_gate"
    MAINTENANCE = "maintenance"
    NOT_MANAGED = "not_managed"
    NOT_RUNNING = "not_running"
    OWNED_BY_NATIVE_SERVICE = "owned_by_native_service"
    OWNED_BY_OTHER_FLEET = "owned_by_other_fleet"
    PID_DEAD = "pid_dead"
    PID_FOREIGN = "pid_foreign"
    PID_REUSED = "pid_reused"
    PID_UNRELATED = "pid_unrelated"
    POLICY_CHANGED = "policy_changed"
    PREVIOUS_CONTROLLER = "previous_controller"
    PRUNE_DEFERRED = "prune_deferred"
    PRUNE_DISABLED = "prune_disabled"
    RECORD_CORRUPT = "record_corrupt"
    RECORD_MISSING = "record_missing"
    REFUSED = "refused"
    RELEASED = "released"
    REMOVED_FROM_MANIFEST = "removed_from_manifest"
    REPLACEMENT = "replacement"
    RESTART_POLICY_NEVER = "restart_policy_never"
    RESTART_REQUESTED = "restart_requested"
    RUNNING = "running"
    SPAWN_FAILED = "spawn_failed"
    SPEC_CHANGED = "spec_changed"
    STARTED_BY_HAND = "started_by_hand"
    STARTUP_FAILED = "startup_failed"
    STOPPED = "stopped"
    STOPPING = "stopping"
    SUSPENDED = "suspended"
    TAKING_OVER = "taking_over"
    UPDATE_COMMAND = "update_command"
    WEDGED = "wedged"
    WINDOW_CLOSED = "window_closed"

    @classmethod
    def carried(cls, stored: str | None) -> Reason:
        """A drain's reason as the store kept it, for the later steps of that drain (`draining` when
        none was kept, or one this version does not know)."""
        if stored is None or stored not in cls._value2member_map_:
            return cls.DRAINING
        return cls(stored)


class Stage(StrEnum):
    """Which step of a drain or replace an action is (a status row's phase is another thing)."""
    BEGIN = "begin"  # ask the gateway to drain
    STOP = "stop"  # drained: the planned stop


class DrainIntent(StrEnum):
    STOP = "stop"  # desired stopped
    PRUNE = "prune"  # removed from the manifest
    REPLACE = "replace"  # a new process follows


# One symbol per class, so a reader sees at a glance whether a line touches a process.
SYMBOLS = {
    "spawn": "+", "adopt": "~", "update": "~", "reclaim": "~", "keep": " ", "replace": "-/+",
    "drain": "-", "kill": "!", "wait": ">", "conflict": "?",
}
RECORD_KINDS = ("reclaim", "adopt", "update")
KIND_ORDER = {"reclaim": 0, "adopt": 1, "update": 2, "kill": 3, "spawn": 4, "replace": 5, "drain": 6,
              "wait": 7, "conflict": 8, "keep": 9}

def format_instant(ts: float) -> str:
    """Epoch seconds, exact to the millisecond and without float noise: 1700000001, 1700000085.05."""
    return f"{ts:.3f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class DrainStart:
    """What the first step of a drain records: why the gateway stops, the reason it shows, and how long the
    drain may take before the kill."""
    intent: DrainIntent
    reason: Reason
    timeout: float


@dataclass(frozen=True)
class ExitCount:
    """How a reclaim counts the exit it finds (`fleet/plan/exits.py:count_exit`)."""
    failures: int  # before this exit
    reset_after: float  # a run at least this long starts the count afresh
    planned: bool  # a drain or a forced restart asked for this exit


@dataclass(frozen=True)
class Action:
    """One step of the plan, carrying as data everything the executor needs to perform it: the executor
    only performs and records."""
    kind: Kind
    profile: str
    reason: Reason
    message: str = ""
    not_before: float | None = None
    pid: int | None = None
    stage: Stage | None = None  # drain/replace: which step of the drain
    voluntary: bool = False
    gates: tuple[Gate, ...] = ()
    target: LiveProcess | None = None  # adopt, drain, replace, kill: the process acted on
    record: PidRecord | None = None  # reclaim: the record it removes
    drain: DrainStart | None = None  # drain/replace begin, a forced kill outside a drain: the drain it records
    kill_grace: float | None = None  # kill past a drain's deadline: the deadline moves this far past the kill
    exit_count: ExitCount | None = None  # reclaim pid_dead: how the exit is counted
    restart: bool = False  # spawn: counts as a restart of the profile
    clears_failure: bool = False  # spawn: ends a failure that stopped retries (new spec, or an operator's start)

    def __post_init__(self) -> None:
        # The vocabulary is closed: a kind or reason the code does not know fails where it is made.
        # (Checked by type first: an enum's lookup by value costs more than the rest of making an action.)
        if type(self.kind) is not Kind:
            object.__setattr__(self, "kind", Kind(self.kind))
        if type(self.reason) is not Reason:
            object.__setattr__(self, "reason", Reason(self.reason))
        if self.stage is not None and type(self.stage) is not Stage:
            object.__setattr__(self, "stage", Stage(self.stage))

    def process(self) -> LiveProcess:
        """The process this action acts on; every action that touches one carries it."""
        if self.target is None:
            raise ValueError(f"{self.kind} {self.reason} of {self.profile} names no process")
        return self.target

    @property
    def steps(self) -> tuple[str, ...]:
        if self.kind == "replace":
            return ("drain", "spawn")
        if self.kind in ("spawn", "drain", "kill"):
            return (self.kind,)
        return ()

    def due(self, now: float) -> bool:
        return self.not_before is None or self.not_before <= now

    def render(self) -> str:
        """Compact deterministic form for tests: `profile kind reason [@not_before]`."""
        text = f"{self.profile} {self.kind} {self.reason}"
        if self.stage:
            text += f" ({self.stage})"
        if self.not_before is not None:
            text += f" @{format_instant(self.not_before)}"
        return text


@dataclass(frozen=True)
class Check:
    """A finding shown beside the plan: an error or a warning, with its code and message and the profile it concerns."""
    severity: str  # error | warning
    code: str
    message: str
    profile: str | None = None
    hint: str = ""


@dataclass(frozen=True)
class Desired:
    """What the planner is to reach: a generation's fleet spec, the apply options, and the specs last applied."""
    spec: FleetSpec
    generation: int = 0
    prune: bool = True
    allow_empty: bool = False
    previous: dict[str, ProfileSpec] = field(default_factory=dict)  # last-applied specs (a removed profile's too)


@dataclass(frozen=True)
class Plan:
    """The planner's answer: its actions, the checks beside them, and why it refuses to act, when it does."""
    actions: tuple[Action, ...]
    checks: tuple[Check, ...] = ()
    refusal: str | None = None

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("spawn", "replace", "drain", "kill", "adopt", "update", "reclaim", "keep", "wait", "conflict")}
        for a in self.actions:
            out[a.kind] += 1
        return out

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind != "keep")

    @property
    def in_sync(self) -> bool:
        return not self.changes and self.refusal is None

    def shown(self) -> dict[str, Action]:
        """Each profile's headline action (its `status` row): its first one, unless a record fix (reclaim, adopt,
        update) comes before what it does next."""
        shown: dict[str, Action] = {}
        for action in self.actions:
            prev = shown.get(action.profile)
            if prev is None or prev.kind in ("reclaim", "adopt", "update"):
                shown[action.profile] = action
        return shown

    def executable(self, now: float, skip: frozenset = frozenset(),
                   only: frozenset[str] | None = None) -> tuple[Action, ...]:
        """What to do in this pass: record fixes first on their own, so the next pass sees their effect.
        skip: (profile, kind) pairs held back (they failed recently); they never block other profiles.
        only: these profiles' actions, none of the others'."""
        due = [a for a in self.actions if a.kind not in ("keep", "wait", "conflict") and a.due(now)
               and (a.profile, a.kind) not in skip and (only is None or a.profile in only)]
        records = [a for a in due if a.kind in RECORD_KINDS]
        return tuple(records or due)

    def next_deadline(self, now: float) -> float | None:
        """When the controller must look again. A running gateway's heartbeat check (a `keep`'s deadline) waits for
        the next whole second: gateways started together then share the look at their grace's end (a cold start
        of 100 spreads their deadlines over half a second: eight looks at the whole fleet in a row otherwise)."""
        times = [math.ceil(a.not_before) if a.kind == Kind.KEEP else a.not_before
                 for a in self.actions if a.not_before is not None and a.not_before > now]
        return min(times) if times else None

    def render(self) -> str:
        return "\n".join(a.render() for a in self.actions)
