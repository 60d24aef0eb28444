"""What `diff` and `apply` show of a plan, decided once from the preview of the live host: the actions with
their field changes (secrets masked), whether the plan may be applied, the drift, the checks. The renderers in
fleet/cli/render_plan.py only format this value."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fleet.controller.preview import Preview
from fleet.observe.model import ProfileObservation, Verdict
from fleet.plan.fielddiff import FieldChange, diff_specs
from fleet.maintenance.model import Gate
from fleet.plan.model import Action, Check, Reason, Stage
from fleet.service.native_units import release_command, takeover_command

# Sources of a live process found without a record: by its command line (started by hand), or by the
# markers a gateway of ours carries (its record was lost).
BY_HAND = ("cmdline", "match")
UNRECORDED = ("env_marker", "hermes_pidfile")


@dataclass(frozen=True)
class ShownChange:
    """One field's change as it may be printed: a secret, or anything derived from it, is never in `shown`."""
    path: str
    change: str  # added | removed | changed
    forces_replace: bool
    sensitive: bool
    shown: tuple[object, object] | None  # (before, after); None when only that it changed may be said


@dataclass(frozen=True)
class ActionReport:
    """One planned action as `diff` and `apply` show it, with the changes behind it and what it waits for."""
    action: Action
    changes: tuple[ShownChange, ...]  # the profile's spec, last applied -> desired
    running_hash: str | None  # the spec hash the live process runs, when known
    desired_hash: str | None
    pending_until: float | None  # not_before, while it is still ahead
    drain_timeout: float | None  # a beginning drain: how long it may take before the kill
    waits_for: tuple[Gate, ...]  # the closed gates
    takeover: str | None = None  # a profile a native service owns: the command that hands it to the fleet


@dataclass(frozen=True)
class Basis:
    """What the plan was computed against for one profile, so a reader can tell a stale plan."""
    profile: str
    pid: int | None
    create_time: float | None
    spec_hash: str | None
    record: bool


@dataclass(frozen=True)
class PlanReport:
    """One plan as `diff` and `apply` show it, limited to the profile asked for."""

    manifest_path: str
    manifest_digest: str
    generated_at: float
    desired_generation: int
    last_generation: int
    new_generation: bool
    controller_running: bool
    controller_pid: int | None
    basis: tuple[Basis, ...]  # every observed profile, whichever are shown
    applyable: bool
    refusal: str | None
    blocked_by: tuple[Check, ...]  # native services that supervise a profile: apply refuses while any does
    counts: dict[str, int]  # the whole plan's, whichever profiles are shown
    changes: tuple[ActionReport, ...]
    unchanged: tuple[Action, ...]
    running: int  # unchanged profiles that run
    waiting: tuple[ActionReport, ...]
    drift: tuple[DriftNote, ...]
    checks: tuple[Check, ...]

    @property
    def in_sync(self) -> bool:
        return not self.changes and not self.refusal

    @property
    def refusal_reason(self) -> str | None:
        """Why `apply` refuses this plan (the empty-fleet guard, native services that supervise a profile), or
        None; a followed source refuses a commit for exactly the same reasons."""
        if self.applyable:
            return None
        return self.refusal or "; ".join(f"{c.profile}: {c.message}" for c in self.blocked_by)


@dataclass(frozen=True)
class DriftNote:
    """A change made outside hermes-fleet since the last apply."""
    profile: str
    message: str


def plan_report(pv: Preview, profile: str | None = None) -> PlanReport:
    """The report of `pv`, limited to `profile` when one is given."""
    shown = [a for a in pv.plan.actions if profile is None or a.profile == profile]
    changes = tuple(_action_report(pv, a) for a in shown if a.kind != "keep")
    unchanged = tuple(a for a in shown if a.kind == "keep")
    blocked_by = _native_services(pv)
    return PlanReport(
        manifest_path=pv.manifest.path, manifest_digest=pv.manifest.digest, generated_at=pv.observed.observed_at,
        desired_generation=pv.desired.generation, last_generation=pv.last_generation,
        new_generation=pv.new_generation, controller_running=pv.controller.running,
        controller_pid=pv.controller.pid, basis=_basis(pv), applyable=pv.plan.refusal is None and not blocked_by,
        refusal=pv.plan.refusal, blocked_by=blocked_by,
        counts=pv.plan.counts(), changes=changes, unchanged=unchanged,
        running=sum(1 for a in unchanged if a.reason == "running"), waiting=_waiting(changes),
        drift=_drift(pv, profile), checks=_checks(pv, profile),
    )


def _waiting(changes: tuple[ActionReport, ...]) -> tuple[ActionReport, ...]:
    """Waits, and actions whose time has not come yet."""
    return tuple(r for r in changes if r.action.kind == "wait" or r.pending_until is not None)


def _checks(pv: Preview, profile: str | None) -> tuple[Check, ...]:
    """The fleet-wide checks, and the shown profile's; a profile a native service owns is told how to take it
    over."""
    return tuple(_with_takeover_hint(c) for c in pv.checks if profile is None or c.profile in (None, profile))


def _with_takeover_hint(c: Check) -> Check:
    if c.code != Reason.OWNED_BY_NATIVE_SERVICE or not c.profile:
        return c
    return replace(c, hint=f"take it over: {takeover_command(c.profile)} (or apply --take-over); give it back later: "
                           f"{release_command(c.profile)}; or remove the service with hermes gateway uninstall, "
                           "or drop the profile from fleet.yaml")


def _native_services(pv: Preview) -> tuple[Check, ...]:
    return tuple(c for c in pv.checks if c.code == "owned_by_native_service" and c.severity == "error")


def _action_report(pv: Preview, a: Action) -> ActionReport:
    now = pv.observed.observed_at
    desired = pv.desired.spec.profile(a.profile)
    return ActionReport(
        action=a, changes=tuple(_shown(c) for c in _field_changes(pv, a.profile)),
        running_hash=_running_hash(pv.observed.profiles.get(a.profile)),
        desired_hash=desired.spec_hash if desired else None,
        pending_until=a.not_before if a.not_before and a.not_before > now else None,
        drain_timeout=_drain_timeout(pv, a), waits_for=tuple(g for g in a.gates if not g.open),
        takeover=takeover_command(a.profile) if a.reason == Reason.OWNED_BY_NATIVE_SERVICE else None,
    )


def _field_changes(pv: Preview, name: str) -> list[FieldChange]:
    before = pv.previous.get(name)
    return diff_specs(before, pv.desired.spec.profile(name)) if before else []


def _shown(c: FieldChange) -> ShownChange:
    return ShownChange(path=c.path, change=c.change, forces_replace=c.forces_replace, sensitive=c.sensitive,
                       shown=c.shown())


def _drain_timeout(pv: Preview, a: Action) -> float | None:
    if a.kind not in ("drain", "replace") or a.stage != Stage.BEGIN:
        return None
    spec = pv.desired.spec.profile(a.profile) or pv.previous.get(a.profile)
    return spec.drain.timeout if spec else None


def _running_hash(obs: ProfileObservation | None) -> str | None:
    return obs.process.spec_hash if obs and obs.process else None


def _basis(pv: Preview) -> tuple[Basis, ...]:
    out = []
    for name, obs in sorted(pv.observed.profiles.items()):
        proc = obs.process
        out.append(Basis(profile=name, pid=proc.pid if proc else None,
                         create_time=proc.create_time if proc else None,
                         spec_hash=proc.spec_hash if proc else None, record=obs.record is not None))
    return tuple(out)


def _drift(pv: Preview, profile: str | None) -> tuple[DriftNote, ...]:
    notes: list[DriftNote] = []
    for name, obs in sorted(pv.observed.profiles.items()):
        if not profile or name == profile:
            notes.extend(DriftNote(name, message) for message in _drift_of(obs))
    return tuple(notes)


def _drift_of(obs: ProfileObservation) -> list[str]:
    """A gateway found without a record, then what became of the record."""
    messages = []
    proc = obs.process
    if proc is not None and proc.source in BY_HAND:
        messages.append(f"gateway started by hand (pid {proc.pid}), no record")
    elif proc is not None and proc.source in UNRECORDED:
        messages.append(f"running (pid {proc.pid}) without a record")
    if obs.record_verdict == Verdict.DEAD and obs.record is not None:
        messages.append(f"pid {obs.record.pid} has exited since it was recorded")
    elif obs.record_problem:
        messages.append(obs.record_problem)
    return messages
