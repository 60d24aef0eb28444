"""plan(desired, observed, now) -> Plan. Pure: no I/O, no clock, no psutil.

Each profile is planned on its own; only the stagger (spawn spacing) and the maintenance
budget couple them, so a sibling's failure never changes another profile's action.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TypeGuard

from fleet.maintenance.gates import idle_gate, window_gate
from fleet.maintenance.model import Gate, MaintenanceRequest
from fleet.observe import hermes_files as hf
from fleet.observe.model import LiveProcess, Observed, Orphan, ProfileObservation, Verdict, WriteRefusal
from fleet.plan.exits import CRASH_CLASSES, TERMINAL_CLASSES
from fleet.plan.model import (
    KIND_ORDER,
    Action,
    Check,
    Desired,
    DrainIntent,
    DrainStart,
    ExitCount,
    Kind,
    Plan,
    Reason,
    Stage,
    format_instant,
)
from fleet.spec.model import DRIVER_HERMES, ProfileSpec
from fleet.store.takeovers import FLEET, GIVE_BACK, GIVING_BACK, RELEASE, TAKEOVER, UNIT_STARTING

# After an action on a profile failed (any exception), that action waits this long before it is
# tried again (the n-th consecutive failure picks the n-th entry; the last repeats). A spawn that
# failed follows the profile's own restart backoff and start limit instead.
ACTION_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def plan(desired: Desired, observed: Observed, now: float, only: frozenset[str] | None = None) -> Plan:
    """`only`: plan these profiles alone. Their records' fixes (reclaim, adopt) are then exactly the whole plan's
    for them; their spawns and replacements are spaced and budgeted against each other only, not the fleet."""
    inventory = {e.name: e for e in observed.inventory}
    names = sorted(set(desired.spec.names) | set(inventory) | set(observed.profiles))
    if only is not None:
        names = [name for name in names if name in only]
    refusal = _refusal(desired, observed)
    actions: list[Action] = []
    checks: list[Check] = []
    for name in names:
        obs = observed.get(name)
        pspec = desired.spec.profile(name)
        last_applied = pspec or desired.previous.get(name)
        if refusal and pspec is None:
            actions += [_with_effects(a, last_applied, obs) for a in _records_only(obs, observed.epoch)]
            continue
        request = next((r for r in observed.maintenance if r.covers(name)), None) if observed.maintenance else None
        planned = _plan_profile(name, pspec, inventory.get(name), obs, desired, observed.epoch, now, request)
        actions += [_with_effects(a, last_applied, obs) for a in _hold_failed(planned, obs.history, now)]
        checks += _profile_checks(name, pspec, obs)
    checks += [_orphan_check(orphan) for orphan in observed.orphans]

    actions = _apply_budget(actions, desired, observed)
    actions = _apply_stagger(actions, desired, observed, now)
    actions.sort(key=lambda a: (KIND_ORDER[a.kind], a.profile))
    return Plan(actions=tuple(actions), checks=tuple(checks), refusal=refusal)


def _refusal(desired: Desired, observed: Observed) -> str | None:
    """The empty-fleet guard: a manifest without profiles does not drain a running fleet unless told to."""
    if desired.spec.profiles or not desired.prune or desired.allow_empty:
        return None
    if not any(e.state == "active" for e in observed.inventory):
        return None
    return ("the manifest has no profiles but the fleet runs "
            f"{len(observed.inventory)}; refusing to drain everything (pass --allow-empty if you mean it)")


def _profile_checks(name: str, spec: ProfileSpec | None, obs: ProfileObservation) -> list[Check]:
    """What a profile's observation warns of beside its actions: an untrusted record, an owner other than us."""
    checks = []
    if obs.record_problem:
        checks.append(Check("warning", "record_untrusted", obs.record_problem, name))
    if obs.other_fleet and spec is not None:
        checks.append(Check("error", "owned_by_other_fleet", obs.other_fleet, name,
                            "one Hermes home is managed by one fleet: stop it there, or drop the profile "
                            "from this fleet.yaml"))
    if obs.native_service and spec is not None and not _handed_over(obs):
        checks.append(Check("error", "owned_by_native_service",
                            f"a native service supervises this profile: {obs.native_service}", name,
                            f"`hermes-fleet takeover {name}` (or `apply --take-over`) moves it under the fleet; "
                            "or remove it (hermes gateway uninstall), or drop the profile from fleet.yaml"))
    return checks


def _handed_over(obs: ProfileObservation) -> bool:
    """A take-over or release of the native unit is under way, or the profile was released to it: the unit is
    no conflict then, it is the point."""
    return obs.takeover is not None or obs.history.override_verb == RELEASE


def _orphan_check(orphan: Orphan) -> Check:
    """A process that looks like a gateway but is no profile's: reported with what to do, never touched."""
    if orphan.reason == "duplicate":
        code, hint = "duplicate_process", "a second process for one profile; stop it by hand after checking it"
    elif orphan.reason.startswith("unproven"):
        code, hint = "unproven_process", ("no marker or Hermes lock proves it this fleet's; "
                                          "never adopted nor signalled: stop it by hand")
    else:
        code, hint = "unmanaged_orphan", "add it to fleet.yaml to adopt it"
    return Check("warning", code, f"pid {orphan.pid} looks like {orphan.profile}'s gateway ({orphan.reason})",
                 orphan.profile, hint)


def action_retry_at(history) -> float | None:
    """When an action that failed on this profile may run again (None: nothing failed)."""
    if not history.action_error_kind or history.action_error_at is None or history.action_error_kind == Kind.SPAWN:
        return None
    n = max(history.action_errors, 1)
    return history.action_error_at + ACTION_BACKOFF[min(n, len(ACTION_BACKOFF)) - 1]


def _hold_failed(actions: list[Action], history, now: float) -> list[Action]:
    """The action that failed last time waits out its own backoff; the profile's other actions and
    every sibling go on. Its wait takes no stagger slot and no budget."""
    retry = action_retry_at(history)
    if retry is None or retry <= now:
        return actions
    failed = next((a for a in actions if a.kind == history.action_error_kind), None)
    if failed is None:
        return actions
    # The profile's other actions (a spawn after a failed reclaim, say) wait with it: it is in trouble.
    return [Action(Kind.WAIT, failed.profile, Reason.ACTION_FAILED,
                   f"{failed.kind} failed {history.action_errors} time(s): {history.action_error}; "
                   f"next try at {format_instant(retry)}", not_before=retry, pid=failed.pid,
                   gates=(Gate("backoff", False, f"until {format_instant(retry)}"),))]


# A record the identity rule did not prove this profile's gateway is removed, for this reason.
RECLAIMED = {Verdict.DEAD: Reason.PID_DEAD, Verdict.REUSED: Reason.PID_REUSED, Verdict.FOREIGN: Reason.PID_FOREIGN,
             Verdict.UNRELATED: Reason.PID_UNRELATED, Verdict.CORRUPT: Reason.RECORD_CORRUPT}


def _records_only(obs: ProfileObservation, epoch: int) -> list[Action]:
    return [a for a in _record_actions(obs, epoch)] or [Action(Kind.KEEP, obs.name, Reason.REFUSED)]


def _record_actions(obs: ProfileObservation, epoch: int) -> list[Action]:
    out = []
    verdict = obs.record_verdict
    if verdict in RECLAIMED:
        why = RECLAIMED[verdict]
        pid = obs.record.pid if obs.record else None
        out.append(Action(Kind.RECLAIM, obs.name, why, obs.record_problem or f"pid {pid} has exited", pid=pid))
    proc = obs.process
    if proc is not None:
        if proc.source != "record":
            reason = Reason.STARTED_BY_HAND if proc.source in ("cmdline", "match") else Reason.RECORD_MISSING
            out.append(Action(Kind.ADOPT, obs.name, reason, f"pid {proc.pid} found by {proc.source.replace('_', ' ')}",
                              pid=proc.pid))
        elif proc.record_epoch is not None and proc.record_epoch < epoch:
            out.append(Action(Kind.ADOPT, obs.name, Reason.PREVIOUS_CONTROLLER,
                              f"pid {proc.pid} recorded by controller epoch {proc.record_epoch}", pid=proc.pid))
    return out


def _plan_profile(name: str, spec: ProfileSpec | None, inv, obs: ProfileObservation, desired: Desired,
                  epoch: int, now: float, request: MaintenanceRequest | None = None) -> list[Action]:
    actions = _record_actions(obs, epoch)
    if spec is None:
        return _unmanaged_flow(name, inv, obs, desired, actions, now)
    hands_off = _hands_off(name, spec, obs, actions, now)
    if hands_off is not None:
        return hands_off
    if obs.history.desired_state(spec) == "stopped":
        return actions + _stopped_flow(name, spec, obs, now)
    if obs.process is not None:
        return actions + _running_or_policy_update(name, spec, obs, desired.previous.get(name), now, request)
    return actions + _absent_flow(name, spec, obs, now)


def _gateway(obs: ProfileObservation) -> LiveProcess:
    """The process of a profile whose flow is only taken while it has one."""
    assert obs.process is not None, f"{obs.name}: this flow needs a running gateway"
    return obs.process


def _unmanaged_flow(name: str, inv, obs: ProfileObservation, desired: Desired, actions: list[Action],
                    now: float) -> list[Action]:
    """A profile not in fleet.yaml: pruned, unless this apply defers pruning or its inventory entry says
    prune: false; a process in no inventory either is only reported."""
    proc = obs.process
    if inv is None:
        if proc is not None:  # ours once (a record) but in no inventory: report, never touch
            return [Action(Kind.WAIT, name, Reason.NOT_MANAGED, f"pid {proc.pid} is not in fleet.yaml nor in the inventory")]
        return actions
    if not desired.prune and inv.state == "active":
        return actions + [Action(Kind.WAIT, name, Reason.PRUNE_DEFERRED, "not in fleet.yaml; pruning deferred (--no-prune)")]
    if not inv.prune:
        return actions + [Action(Kind.UPDATE, name, Reason.PRUNE_DISABLED,
                                 "not in fleet.yaml and prune: false; left running, unmanaged")]
    if proc is None:
        return actions + [Action(Kind.UPDATE, name, Reason.REMOVED_FROM_MANIFEST,
                                 f"not in fleet.yaml; last applied in generation {inv.last_generation}")]
    # Drained as its last-applied spec says: a Hermes gateway's stop waits for its acknowledged, idle drain.
    return actions + _stop_flow(name, desired.previous.get(name), obs, Reason.REMOVED_FROM_MANIFEST, now)


def _hands_off(name: str, spec: ProfileSpec, obs: ProfileObservation, actions: list[Action],
               now: float) -> list[Action] | None:
    """What is left to do for a profile that is not ours to act on: another fleet's, suspended, a native
    service's, or one whose native unit is being taken over or given back. None: it is ours."""
    proc = obs.process
    if obs.other_fleet:
        # Another fleet's gateway or claim: adopting, signalling or spawning beside it would start a tug of war.
        return [a for a in actions if a.kind == Kind.RECLAIM] + [
            Action(Kind.CONFLICT, name, Reason.OWNED_BY_OTHER_FLEET, obs.other_fleet)]
    if spec.suspend:
        return actions + [Action(Kind.WAIT, name, Reason.SUSPENDED, "suspend: true; observed only",
                                 gates=(Gate("suspended", False),))]
    if _handed_over(obs):
        return _native_handover(name, spec, obs, actions, now)
    if obs.native_service and (proc is None or proc.source != "record"):
        # Never adopt what another supervisor owns: our record would hide the conflict from then on.
        return [a for a in actions if a.kind != "adopt"] + [
            Action(Kind.CONFLICT, name, Reason.OWNED_BY_NATIVE_SERVICE,
                   f"a native service supervises this profile: {obs.native_service}")]
    return None


# The sources of a process that is positively the fleet's own: a record it wrote, or its markers. Hermes' lock
# proof alone (the `hermes_pidfile` source) holds for a native unit's gateway just as well.
FLEETS_OWN = ("record", "env_marker")


def _native_handover(name: str, spec: ProfileSpec, obs: ProfileObservation, actions: list[Action],
                     now: float) -> list[Action] | None:
    """A take-over or release of the profile's native unit under way (fleet/store/takeovers.py), or a profile
    released to its unit. The unit's gateway is never adopted, signalled or spawned beside: only the fleet's own
    gateway is kept, or drained and stopped while it goes back. None: plan it like any profile (a take-over's
    spawn and its verification)."""
    tk, proc = obs.takeover, obs.process
    ours = proc is not None and proc.source in FLEETS_OWN
    fixes = [a for a in actions if a.kind == Kind.RECLAIM or (a.kind == Kind.ADOPT and ours)]
    if tk is None:  # released: the unit runs it; `takeover` takes it back
        return fixes + [Action(Kind.KEEP, name, Reason.RELEASED, _released_to(obs))]
    if tk.kind == TAKEOVER and tk.state not in (GIVING_BACK, UNIT_STARTING):
        reason = Reason.TAKING_OVER
    else:  # a take-over's rollback, a release
        reason = Reason.GIVING_BACK
    return _handover_step(name, spec, obs, fixes, ours, reason, now)


def _handover_step(name: str, spec: ProfileSpec, obs: ProfileObservation, fixes: list[Action], ours: bool,
                   reason: Reason, now: float) -> list[Action] | None:
    tk, proc = obs.takeover, obs.process
    assert tk is not None, "only while a take-over or release is under way"
    if tk.phase == FLEET and proc is not None and not ours:  # the unit is stopped: this is nobody's to adopt
        return fixes + [Action(Kind.WAIT, name, reason, f"{tk.describe()}; pid {proc.pid} is not the fleet's",
                               pid=proc.pid)]
    if tk.phase == FLEET:
        return None
    if tk.phase == GIVE_BACK and (proc is None or ours):
        return fixes + _give_back(name, spec, obs, tk.describe(), now)
    return fixes + [Action(Kind.WAIT, name, reason, tk.describe(), pid=proc.pid if proc else None)]


def _give_back(name: str, spec: ProfileSpec, obs: ProfileObservation, doing: str, now: float) -> list[Action]:
    """The fleet's own gateway drains and stops; then the unit gets the home back (the controller's part)."""
    if obs.process is not None:
        return _stop_flow(name, spec, obs, Reason.GIVING_BACK, now)
    if obs.history.drain_intent:
        return [Action(Kind.UPDATE, name, Reason.DRAIN_COMPLETE, "the fleet's gateway has exited")]
    return [Action(Kind.WAIT, name, Reason.GIVING_BACK, doing)]


def _released_to(obs: ProfileObservation) -> str:
    unit = os.path.basename(obs.native_service) if obs.native_service else None
    where = f"released to {unit}" if unit else "released to its native unit (none is installed now)"
    return f"{where}; `hermes-fleet takeover {obs.name}` takes it back"


def _stopped_flow(name: str, spec: ProfileSpec, obs: ProfileObservation, now: float) -> list[Action]:
    """A profile desired stopped: its gateway drained and stopped, the drain closed once it is gone."""
    if obs.process is not None:
        return _stop_flow(name, spec, obs, Reason.DESIRED_STOPPED, now)
    if obs.history.drain_intent:
        return [Action(Kind.UPDATE, name, Reason.DRAIN_COMPLETE, "stopped")]
    return [Action(Kind.KEEP, name, Reason.STOPPED)]


def _running_or_policy_update(name: str, spec: ProfileSpec, obs: ProfileObservation, previous: ProfileSpec | None,
                              now: float, request: MaintenanceRequest | None) -> list[Action]:
    """A running gateway's flow; one that is kept while only its policy changed records the new policy."""
    running = _running_flow(name, spec, obs, now, request)
    if running[0].kind == Kind.KEEP and previous is not None and previous is not spec and previous != spec:
        return [Action(Kind.UPDATE, name, Reason.POLICY_CHANGED, "policy changed; applied in place", pid=_gateway(obs).pid)]
    return running


def _stop_flow(name, spec, obs: ProfileObservation, reason: Reason, now: float) -> list[Action]:
    h, proc = obs.history, _gateway(obs)
    if h.drain_intent and h.drain_pid == proc.pid:
        return _continue_drain(name, spec, obs, now)
    return [Action(Kind.DRAIN, name, reason, "drain, then stop", pid=proc.pid, stage=Stage.BEGIN)]


def _continue_drain(name, spec, obs: ProfileObservation, now: float) -> list[Action]:
    """A drain under way: wait for idle, then the planned stop, and kill when the deadline passes."""
    h, proc = obs.history, _gateway(obs)
    if h.drain_deadline is not None and now >= h.drain_deadline:
        return [Action(Kind.KILL, name, Reason.DRAIN_TIMEOUT, "drain deadline passed", pid=proc.pid)]
    if h.drain_signalled is not None:
        return [Action(Kind.WAIT, name, Reason.STOPPING, "planned stop sent; waiting for exit", not_before=h.drain_deadline,
                       pid=proc.pid)]
    if _drained(spec, obs):
        kind = Kind.REPLACE if h.drain_intent == DrainIntent.REPLACE else Kind.DRAIN
        return [Action(kind, name, Reason.carried(h.drain_reason), "drained; planned stop", pid=proc.pid, stage=Stage.STOP)]
    return [Action(Kind.WAIT, name, Reason.DRAINING, _drain_wait_note(obs),
                   not_before=min(h.drain_deadline or now + 1.0, now + 1.0), pid=proc.pid)]


def _drained(spec, obs: ProfileObservation) -> bool:
    """Whether the planned stop may follow the drain request. A gateway that is not Hermes' drains itself on
    the stop marker: at once. A Hermes gateway (or one whose spec is lost: trust only what is proven) only
    once idle under this very drain (hermes_files.idle_under_drain): it acknowledged the request and reports
    no agent work. Its state file read outside a drain does not count API runs, so neither `running` with 0
    active agents nor any time without an acknowledgement proves it idle; the deadline bounds the wait."""
    if spec is not None and spec.driver != DRIVER_HERMES:
        return True
    return hf.idle_under_drain(obs.status, obs.history.drain_started, _gateway(obs).pid)


def _drain_wait_note(obs: ProfileObservation) -> str:
    """What a Hermes drain waits for: the gateway's answer to the request, then its last agents."""
    st = obs.status
    if not hf.drain_acknowledged(st, obs.history.drain_started, _gateway(obs).pid) or st is None:
        return "waiting for the gateway to acknowledge the drain"
    return "active agents unknown" if st.active is None else f"{st.active} active agent(s)"


def _heartbeat_stale(spec: ProfileSpec, obs: ProfileObservation, now: float) -> str | None:
    proc = _gateway(obs)
    if now - proc.started_at < spec.health.startup_grace or _heartbeat_excuse(spec, obs, now):
        return None
    hb = obs.heartbeat_at
    if hb is not None and hb >= proc.started_at - 1.0:
        age = now - hb
        return f"heartbeat {age:.0f}s old (limit {spec.health.heartbeat_stale:g}s)" if age > spec.health.heartbeat_stale else None
    if spec.driver == DRIVER_HERMES and now - proc.started_at > spec.health.startup_grace + spec.health.heartbeat_stale:
        return "no heartbeat since start"
    return None


def _heartbeat_excuse(spec: ProfileSpec, obs: ProfileObservation, now: float) -> WriteRefusal | None:
    """The heartbeat's directory refused writes within the last heartbeat limit: the gateway could not have
    written it, so its silence is not a hang. It gets a whole limit after the directory takes writes again."""
    blocked = obs.heartbeat_blocked
    return blocked if blocked is not None and now - blocked.at <= spec.health.heartbeat_stale else None


def _heartbeat_deadline(spec: ProfileSpec, obs: ProfileObservation, now: float) -> float | None:
    """When this gateway's heartbeat would turn stale: the controller wakes then to check it."""
    proc = _gateway(obs)
    grace_end = proc.started_at + spec.health.startup_grace
    hb = obs.heartbeat_at
    if hb is not None and hb >= proc.started_at - 1.0:
        due = max(hb + spec.health.heartbeat_stale, grace_end) + 0.05
    elif spec.driver == DRIVER_HERMES:
        due = grace_end + spec.health.heartbeat_stale + 0.05
    elif now < grace_end:
        due = grace_end + 0.05  # a gateway of another kind may beat: a look then gives its first heartbeat a deadline
    else:
        return None
    excuse = _heartbeat_excuse(spec, obs, now)
    if excuse is not None:
        due = max(due, excuse.at + spec.health.heartbeat_stale + 0.05)
    return due if due > now else None


def _running_flow(name, spec: ProfileSpec, obs: ProfileObservation, now: float,
                  request: MaintenanceRequest | None = None) -> list[Action]:
    h, proc = obs.history, _gateway(obs)
    if h.drain_intent and h.drain_pid == proc.pid:
        return _continue_drain(name, spec, obs, now)
    stale = _heartbeat_stale(spec, obs, now)
    if stale:
        return [Action(Kind.KILL, name, Reason.WEDGED, stale, pid=proc.pid)]
    req = obs.restart_request
    if req is not None and req.created_at > proc.started_at:
        return [_operator_restart(name, req, proc.pid)]
    if _maintenance_due(request, proc):
        return [_maintenance(name, spec, obs, request, now)]
    if proc.spec_hash is not None and proc.spec_hash != spec.spec_hash:
        return [_voluntary_replace(name, spec, obs, Reason.SPEC_CHANGED, "spec changed")]
    if not proc.external_supervisor_flag:
        return [_voluntary_replace(name, spec, obs, Reason.ADOPTED_ARGV_MISMATCH,
                                   "runs without --external-supervisor; `hermes update` would fight the fleet")]
    return [Action(Kind.KEEP, name, Reason.RUNNING, _excuse_note(spec, obs, now), pid=proc.pid,
                   not_before=_heartbeat_deadline(spec, obs, now))]


def _excuse_note(spec: ProfileSpec, obs: ProfileObservation, now: float) -> str:
    excuse = _heartbeat_excuse(spec, obs, now)
    if excuse is None:
        return ""
    if excuse.lifted:
        return (f"heartbeat not checked: its directory took writes again {now - excuse.at:.0f}s ago, "
                f"after refusing them ({excuse.why})")
    return f"heartbeat not checked: its directory refused writes ({excuse.why}) {now - excuse.at:.0f}s ago"


def _operator_restart(name: str, req, pid: int) -> Action:
    """An operator's restart of a gateway started before it: --force kills it, a plain one drains it first."""
    if req.kind == "force_restart":
        return Action(Kind.KILL, name, Reason.FORCED, "restart --force", pid=pid)
    return Action(Kind.REPLACE, name, Reason.RESTART_REQUESTED, f"requested by {req.requested_by or 'an operator'}",
                  pid=pid, stage=Stage.BEGIN)


def _maintenance_due(request: MaintenanceRequest | None, proc) -> TypeGuard[MaintenanceRequest]:
    """An open maintenance request this gateway has not been restarted for yet."""
    return request is not None and request.is_open and proc.started_at <= request.since


def _maintenance(name, spec: ProfileSpec, obs: ProfileObservation, req: MaintenanceRequest, now: float) -> Action:
    """A queued restart/update: only through the idle and window gates (unless a person said --now)."""
    label = _maintenance_label(req)
    pid = _gateway(obs).pid
    if req.not_before is not None and now < req.not_before:
        return Action(Kind.WAIT, name, Reason.MAINTENANCE, f"{label}: not before {format_instant(req.not_before)}",
                      not_before=req.not_before,
                      pid=pid, voluntary=True)
    gates = () if req.now else _maintenance_gates(spec, obs, req, now)
    if not all(g.open for g in gates):
        return _gates_closed(name, spec, obs, req, gates, now)
    if req.update_pending:
        return Action(Kind.WAIT, name, Reason.UPDATE_COMMAND, f"{label}: gates open; the update command runs first",
                      pid=pid, voluntary=True, gates=gates)
    return Action(Kind.REPLACE, name, Reason.MAINTENANCE, label, pid=pid, stage=Stage.BEGIN, voluntary=True, gates=gates)


def _maintenance_gates(spec: ProfileSpec, obs: ProfileObservation, req: MaintenanceRequest,
                       now: float) -> tuple[Gate, ...]:
    """The gates a maintenance restart passes unless a person said --now: idle long enough, inside a window."""
    st = obs.status
    return (idle_gate(st.active if st else None, st.state if st else None, obs.history.idle_since,
                      _idle_seconds(spec, req), now), window_gate(spec.maintenance.windows, now))


def _idle_seconds(spec: ProfileSpec, req: MaintenanceRequest) -> float:
    """How long the gateway must be idle: the request's own idle time, else the profile's maintenance.idle."""
    return spec.maintenance.idle if req.idle_seconds is None else req.idle_seconds


def _maintenance_label(req: MaintenanceRequest) -> str:
    return f"maintenance #{req.id} ({req.action})"


def _gates_closed(name, spec: ProfileSpec, obs: ProfileObservation, req: MaintenanceRequest,
                  gates: tuple[Gate, ...], now: float) -> Action:
    """The wait on closed gates, named for the first; an idle gate wakes the controller when it opens."""
    closed = [g for g in gates if not g.open]
    reason = Reason.WINDOW_CLOSED if closed[0].gate == "window" else Reason.IDLE_GATE
    wake_at = _idle_reached_at(spec, obs, req) if closed[0].gate == "idle" else None
    message = f"{_maintenance_label(req)}: " + "; ".join(g.detail for g in closed)
    return Action(Kind.WAIT, name, reason, message, pid=_gateway(obs).pid, voluntary=True, gates=gates,
                  not_before=wake_at if wake_at and wake_at > now else None)


def _idle_reached_at(spec: ProfileSpec, obs: ProfileObservation, req: MaintenanceRequest) -> float | None:
    """When an idle gateway will have been idle long enough (None: it is not idle now)."""
    if obs.history.idle_since is None or (obs.status and obs.status.active):
        return None
    return obs.history.idle_since + _idle_seconds(spec, req)


def _voluntary_replace(name, spec: ProfileSpec, obs: ProfileObservation, reason: Reason, message: str) -> Action:
    active = obs.status.active if obs.status else None
    idle = Gate("idle", not active, f"{active} active agent(s)" if active else "no active agents")
    if not idle.open:
        return Action(Kind.WAIT, name, Reason.IDLE_GATE, f"{message}; waits until no agent is active ({active} now)",
                      pid=_gateway(obs).pid, voluntary=True, gates=(idle,))
    return Action(Kind.REPLACE, name, reason, message, pid=_gateway(obs).pid, stage=Stage.BEGIN, voluntary=True, gates=(idle,))


def _absent_flow(name, spec: ProfileSpec, obs: ProfileObservation, now: float) -> list[Action]:
    h = obs.history
    out: list[Action] = []
    if h.drain_intent:
        out.append(Action(Kind.UPDATE, name, Reason.DRAIN_COMPLETE, "previous process has exited"))
        if h.drain_intent == DrainIntent.REPLACE:
            return out + [Action(Kind.SPAWN, name, Reason.REPLACEMENT, "drained; starting the new spec")]
    fresh_request = _fresh_restart_request(obs)
    held = None if fresh_request else _held_down(name, spec, h)
    if held is not None:
        return out + [held]
    return out + [_spawn(name, spec, h, fresh_request, now)]


def _fresh_restart_request(obs: ProfileObservation) -> bool:
    """An operator's start or restart given after the last exit: it skips the backoff, the start limit, the
    restart policy and a failure that would otherwise stop the retries."""
    req, h = obs.restart_request, obs.history
    return req is not None and (h.last_exit_at is None or req.created_at > h.last_exit_at)


def _held_down(name, spec: ProfileSpec, h) -> Action | None:
    """Why a gateway that exited is not started again: a failure of this very spec that retrying cannot fix,
    or the restart policy. None: it is started again."""
    if h.last_exit_class in TERMINAL_CLASSES and h.failed_spec_hash == spec.spec_hash:
        return _terminal_failure(name, h)
    if h.last_exit_class is None or h.last_exit_class in ("planned", "restart_now"):
        return None
    if spec.restart.policy == "never":
        return Action(Kind.WAIT, name, Reason.RESTART_POLICY_NEVER, "exited; restart policy is never")
    if spec.restart.policy == "on-failure" and h.last_exit_class == "clean":
        return Action(Kind.WAIT, name, Reason.EXITED_CLEANLY, "exited 0; restart policy is on-failure")
    return None


def _terminal_failure(name, h) -> Action:
    """Exit 78 or a failed startup of this spec: a conflict until the spec changes or an operator starts it."""
    fatal = h.last_exit_class == "fatal_config"
    why = "exit 78: configuration conflict" if fatal else "startup failed"
    return Action(Kind.CONFLICT, name, Reason.CONFIG_CONFLICT if fatal else Reason.STARTUP_FAILED,
                  f"{why} ({h.failed_reason or 'see the log'}); not retried until the spec changes or "
                  f"`hermes-fleet start {name}`")


def _spawn(name, spec: ProfileSpec, h, fresh_request: bool, now: float) -> Action:
    """The spawn of a gateway that is not running, named for what ended the last one (or that none ran yet),
    held back by its backoff and start limit if any."""
    # The reason stays a local assigned in these branches: tests/test_architecture_doc.py reads every reason
    # the planner can give from its source, and follows locals and parameters, not return values.
    if h.action_error_kind == Kind.SPAWN:
        reason = Reason.SPAWN_FAILED
    elif h.last_start is None:
        reason = Reason.FIRST_APPLY
    elif h.last_exit_class in CRASH_CLASSES:
        reason = Reason.CRASHED
    elif h.last_exit_class == "restart_now":
        reason = Reason.RESTART_REQUESTED
    elif h.last_exit_class == "planned":
        reason = Reason.REPLACEMENT
    else:
        reason = Reason.NOT_RUNNING
    not_before, limited = _spawn_not_before(spec, h, fresh_request, now)
    message = _spawn_message(reason, h)
    if limited and not_before is not None:
        message += f"; {limited}"
    return Action(Kind.SPAWN, name, reason, message, not_before=not_before,
                  gates=(Gate("backoff", not_before is None, f"until {format_instant(not_before)}" if not_before else ""),))


def _spawn_not_before(spec: ProfileSpec, h, fresh_request: bool, now: float) -> tuple[float | None, str | None]:
    """When the spawn may run (None: now): the later of the restart backoff and the start limit, both skipped
    for an operator's fresh request; and why, when the start limit holds it (crash-looping)."""
    if fresh_request:
        return None, None
    not_before = _backoff_until(spec, h)
    earliest, limited = _start_limit(spec, h.recent_starts)
    if earliest is not None and (not_before is None or earliest > not_before):
        not_before = earliest
    if not_before is not None and not_before <= now:
        return None, limited
    return not_before, limited


def _backoff_until(spec: ProfileSpec, h) -> float | None:
    """When the restart backoff lets a gateway that ended by itself start again (None: no backoff)."""
    if h.last_exit_class in CRASH_CLASSES + ("clean",) and h.last_exit_at is not None:
        return h.last_exit_at + spec.restart.delay(max(h.failures, 1))
    return None


def _spawn_message(reason: str, h) -> str:
    """What `diff` and `status` say about the spawn: the exit code and restart count after a crash."""
    if reason == Reason.CRASHED:
        code = h.last_exit_code if h.last_exit_code is not None else "(code unknown)"
        return f"exited {code}; restart {h.failures}"
    if reason == Reason.FIRST_APPLY:
        return "new profile"
    if reason == Reason.SPAWN_FAILED:
        return f"could not start ({h.action_errors or h.failures} time(s)): {h.action_error}"
    return "not running"


def _start_limit(spec: ProfileSpec, starts: tuple[float, ...]) -> tuple[float | None, str | None]:
    """The earliest next start allowed by the floor and the start limit (systemd's StartLimitBurst/
    IntervalSec): never two starts within `floor`, never more than `burst` within `interval`.
    Returns (earliest, why) where why is set when the profile is crash-looping."""
    if not starts:
        return None, None
    r = spec.restart
    earliest = starts[-1] + r.floor
    why = None
    if r.start_limit_burst > 0 and len(starts) >= r.start_limit_burst:
        window_start = starts[-r.start_limit_burst]
        if starts[-1] - window_start < r.start_limit_interval:
            why = (f"crash-looping: {r.start_limit_burst} starts within {r.start_limit_interval:g}s; "
                   f"slowed to one try per {r.start_limit_interval:g}s")
            earliest = max(earliest, window_start + r.start_limit_interval)
    return earliest, why


def _wants_running(spec: ProfileSpec | None, history) -> bool:
    return spec is not None and not spec.suspend and history.desired_state(spec) == "running"


def _apply_budget(actions: list[Action], desired: Desired, observed: Observed) -> list[Action]:
    """At most max_concurrent profiles disrupted voluntarily at once; one down involuntarily counts too."""
    if not any(_begins_voluntary_replace(a) for a in actions):
        return actions  # the common pass: nothing to hold back, and no need to ask every profile what it holds
    limit = desired.spec.max_concurrent_maintenance
    in_use = {name for name, obs in observed.profiles.items() if _holds_budget(obs, desired.spec.profile(name))}
    out = []
    for a in sorted(actions, key=lambda a: a.profile):
        if _begins_voluntary_replace(a):
            if len(in_use) >= limit and a.profile not in in_use:
                out.append(_budget_wait(a, in_use, limit))
                continue
            in_use.add(a.profile)
        out.append(a)
    return out


def _holds_budget(obs: ProfileObservation, spec: ProfileSpec | None) -> bool:
    """Whether a profile is in maintenance already: being replaced, or down and meant to run again."""
    h = obs.history
    if obs.process is not None:
        return h.drain_intent == DrainIntent.REPLACE
    if not _wants_running(spec, h):
        return False
    if h.last_exit_class == "planned":
        return True  # drained on purpose and not yet respawned: still in maintenance
    # A profile that could not even be spawned was never capacity: it holds no budget.
    return h.failures > 0 and h.last_exit_class in CRASH_CLASSES and h.action_error_kind != "spawn"


def _begins_voluntary_replace(a: Action) -> bool:
    return a.kind == Kind.REPLACE and a.voluntary and a.stage == Stage.BEGIN


def _budget_wait(a: Action, in_use: set[str], limit: int) -> Action:
    """A voluntary replace held back while the budget is spent, naming who spends it."""
    busy = ", ".join(sorted(in_use))
    return Action(Kind.WAIT, a.profile, Reason.BUDGET_EXHAUSTED, f"{a.message}: budget: {busy} in maintenance",
                  pid=a.pid, voluntary=True, gates=a.gates + (Gate("budget", False, f"{len(in_use)} of {limit} in use"),))


def _apply_stagger(actions: list[Action], desired: Desired, observed: Observed, now: float) -> list[Action]:
    """Spawns at least `stagger` apart, fleet-wide, in name order; each keeps its own backoff too."""
    if not any(a.kind == Kind.SPAWN for a in actions):
        return actions
    slot = observed.last_spawn_at

    def failing(a: Action) -> bool:
        return a.kind == Kind.SPAWN and observed.get(a.profile).history.action_error_kind == Kind.SPAWN

    out = []
    # Ready-now spawns take the early slots; one in crash backoff never holds a sibling's first start back,
    # and one whose last attempt failed comes after every other ready spawn.
    for a in sorted(actions, key=lambda a: ((a.kind == Kind.SPAWN and a.not_before) or 0.0, failing(a), a.profile)):
        if a.kind != "spawn":
            out.append(a)
            continue
        pspec = desired.spec.profile(a.profile)
        gap = pspec.stagger if pspec else desired.spec.stagger
        ready = max(now, a.not_before or now, (slot + gap) if slot is not None else now)
        if not (failing(a) and ready > now):
            # A failed attempt starts nothing: its retry reserves no slot a sibling could have used.
            slot = ready
        nb = ready if ready > now else None
        if nb != a.not_before:
            a = replace(a, not_before=nb, gates=a.gates + (Gate("stagger", nb is None, f"{gap:g}s between spawns"),))
        out.append(a)
    return out


# -- what the executor needs, as data ---------------------------------------------------------------------
KILL_GRACE = 5.0  # after a kill, how long before the kill is tried again
SECONDS_WITHOUT_SPEC = 60.0  # the schema's drain.timeout and restart.reset_after, for a profile with no spec left
RESTARTING_SPAWNS = (Reason.CRASHED, Reason.REPLACEMENT, Reason.RESTART_REQUESTED, Reason.NOT_RUNNING)


def _with_effects(action: Action, spec: ProfileSpec | None, obs: ProfileObservation) -> Action:
    """The action with everything its execution needs: the process or record it acts on, the drain it
    records, how the exit it finds counts, what a spawn ends. `spec` is the profile's last-applied spec
    (a removed profile's too)."""
    h = obs.history
    if action.kind == Kind.RECLAIM:
        count = ExitCount(h.failures, spec.restart.reset_after if spec else SECONDS_WITHOUT_SPEC,
                          planned=bool(h.drain_intent)) if action.reason == Reason.PID_DEAD else None
        return replace(action, record=obs.record, exit_count=count)
    if action.kind == Kind.SPAWN and spec is not None:
        clears = bool(h.failed_spec_hash) and (h.failed_spec_hash != spec.spec_hash or obs.restart_request is not None)
        return replace(action, restart=action.reason in RESTARTING_SPAWNS and bool(h.last_start),
                       clears_failure=clears)
    if action.kind in (Kind.ADOPT, Kind.DRAIN, Kind.REPLACE, Kind.KILL):
        return replace(action, target=obs.process, drain=_drain_start(action, spec, h),
                       kill_grace=KILL_GRACE if action.kind == Kind.KILL and action.reason == Reason.DRAIN_TIMEOUT else None)
    return action


def _drain_start(action: Action, spec: ProfileSpec | None, h) -> DrainStart | None:
    """The drain an action begins: a drain or replace's first step; a forced restart outside any drain,
    whose kill is the stop (its deadline covers only the kernel tearing the tree down)."""
    timeout = spec.drain.timeout if spec else SECONDS_WITHOUT_SPEC
    if action.stage == Stage.BEGIN and action.kind == Kind.REPLACE:
        return DrainStart(DrainIntent.REPLACE, action.reason, timeout)
    if action.stage == Stage.BEGIN and action.kind == Kind.DRAIN:
        intent = DrainIntent.PRUNE if action.reason == Reason.REMOVED_FROM_MANIFEST else DrainIntent.STOP
        return DrainStart(intent, action.reason, timeout)
    if action.kind == Kind.KILL and action.reason == Reason.FORCED and not h.drain_intent:
        return DrainStart(DrainIntent.REPLACE, Reason.FORCED, KILL_GRACE)
    return None
