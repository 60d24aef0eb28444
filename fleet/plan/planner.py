"""plan(desired, observed, now) -> Plan. Pure: no I/O, no clock, no psutil.

Each profile is planned on its own; only the stagger (spawn spacing) and the maintenance
budget couple them, so a sibling's failure never changes another profile's action.
"""

from __future__ import annotations

from fleet.maintenance.gates import idle_gate, window_gate
from fleet.maintenance.model import MaintenanceRequest
from fleet.observe.model import Observed, ProfileObservation
from fleet.plan.exits import CRASH_CLASSES, TERMINAL_CLASSES
from fleet.plan.model import KIND_ORDER, Action, Check, Desired, Gate, Plan, format_instant
from fleet.spec.model import DRIVER_HERMES, ProfileSpec

# A drain request not acknowledged by the gateway within this long (an older Hermes without
# external drain) is followed by the planned stop anyway, if no agent is known to be active.
DRAIN_ACK_GRACE = 5.0
# After an action on a profile failed (any exception), that action waits this long before it is
# tried again (the n-th consecutive failure picks the n-th entry; the last repeats). A spawn that
# failed follows the profile's own restart backoff and start limit instead.
ACTION_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def plan(desired: Desired, observed: Observed, now: float) -> Plan:
    spec = desired.spec
    inventory = {e.name: e for e in observed.inventory}
    names = sorted(set(spec.names) | set(inventory) | set(observed.profiles))
    checks: list[Check] = []
    refusal = None
    if not spec.profiles and any(e.state == "active" for e in observed.inventory) and desired.prune \
            and not desired.allow_empty:
        refusal = ("the manifest has no profiles but the fleet runs "
                   f"{len(observed.inventory)}; refusing to drain everything (pass --allow-empty if you mean it)")

    per_profile: dict[str, list[Action]] = {}
    for name in names:
        obs = observed.get(name)
        pspec = spec.profile(name)
        if refusal and pspec is None:
            per_profile[name] = _records_only(obs, observed.epoch)
            continue
        request = next((r for r in observed.maintenance if r.covers(name)), None)
        per_profile[name] = _hold_failed(_plan_profile(name, pspec, inventory.get(name), obs, desired, observed.epoch,
                                                       now, request), obs.history, now)
        if obs.record_problem:
            checks.append(Check("warning", "record_untrusted", obs.record_problem, name))
        if obs.other_fleet and pspec is not None:
            checks.append(Check("error", "owned_by_other_fleet", obs.other_fleet, name,
                                "one Hermes home is managed by one fleet: stop it there, or drop the profile "
                                "from this fleet.yaml"))
        if obs.native_service and pspec is not None:
            checks.append(Check("error", "owned_by_native_service",
                                f"a native service supervises this profile: {obs.native_service}", name,
                                "remove it (hermes gateway uninstall) or drop the profile from fleet.yaml"))
    for orphan in observed.orphans:
        code = "duplicate_process" if orphan.reason == "duplicate" else \
            "unproven_process" if orphan.reason.startswith("unproven") else "unmanaged_orphan"
        checks.append(Check("warning", code, f"pid {orphan.pid} looks like {orphan.profile}'s gateway ({orphan.reason})",
                            orphan.profile, {"unmanaged_orphan": "add it to fleet.yaml to adopt it",
                                             "unproven_process": "no marker or Hermes lock proves it this fleet's; "
                                                                 "never adopted nor signalled: stop it by hand"}.get(
                                code, "a second process for one profile; stop it by hand after checking it")))

    actions = [a for acts in per_profile.values() for a in acts]
    actions = _apply_budget(actions, desired, observed, now)
    actions = _apply_stagger(actions, desired, observed, now)
    actions.sort(key=lambda a: (KIND_ORDER[a.kind], a.profile))
    return Plan(actions=tuple(actions), checks=tuple(checks), refusal=refusal)


def action_retry_at(history) -> float | None:
    """When an action that failed on this profile may run again (None: nothing failed)."""
    if not history.action_error_kind or history.action_error_at is None or history.action_error_kind == "spawn":
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
    return [Action("wait", failed.profile, "action_failed",
                   f"{failed.kind} failed {history.action_errors} time(s): {history.action_error}; "
                   f"next try at {format_instant(retry)}", not_before=retry, pid=failed.pid,
                   gates=(Gate("backoff", False, f"until {format_instant(retry)}"),))]


def _records_only(obs: ProfileObservation, epoch: int) -> list[Action]:
    return [a for a in _record_actions(obs, epoch)] or [Action("keep", obs.name, "refused")]


def _record_actions(obs: ProfileObservation, epoch: int) -> list[Action]:
    out = []
    verdict = obs.record_verdict
    if verdict in ("dead", "reused", "foreign", "unrelated", "corrupt"):
        why = {"dead": "pid_dead", "reused": "pid_reused", "foreign": "pid_foreign", "unrelated": "pid_unrelated",
               "corrupt": "record_corrupt"}[verdict]
        out.append(Action("reclaim", obs.name, why, obs.record_problem or f"pid {obs.record.pid} has exited",
                          pid=obs.record.pid if obs.record else None))
    proc = obs.process
    if proc is not None:
        if proc.source != "record":
            reason = "started_by_hand" if proc.source in ("cmdline", "match") else "record_missing"
            out.append(Action("adopt", obs.name, reason, f"pid {proc.pid} found by {proc.source.replace('_', ' ')}",
                              pid=proc.pid))
        elif proc.record_epoch is not None and proc.record_epoch < epoch:
            out.append(Action("adopt", obs.name, "previous_controller",
                              f"pid {proc.pid} recorded by controller epoch {proc.record_epoch}", pid=proc.pid))
    return out


def _plan_profile(name: str, spec: ProfileSpec | None, inv, obs: ProfileObservation, desired: Desired,
                  epoch: int, now: float, request: MaintenanceRequest | None = None) -> list[Action]:
    actions = _record_actions(obs, epoch)
    proc = obs.process
    h = obs.history

    if spec is None:
        if inv is None:
            if proc is not None:  # ours once (a record) but in no inventory: report, never touch
                return [Action("wait", name, "not_managed", f"pid {proc.pid} is not in fleet.yaml nor in the inventory")]
            return actions
        if not desired.prune and inv.state == "active":
            return actions + [Action("wait", name, "prune_deferred", "not in fleet.yaml; pruning deferred (--no-prune)")]
        if not inv.prune:
            return actions + [Action("update", name, "prune_disabled",
                                     "not in fleet.yaml and prune: false; left running, unmanaged")]
        if proc is None:
            return actions + [Action("update", name, "removed_from_manifest",
                                     f"not in fleet.yaml; last applied in generation {inv.last_generation}")]
        return actions + _stop_flow(name, None, obs, "prune", "removed_from_manifest", now)

    if obs.other_fleet:
        # Another fleet's gateway or claim: adopting, signalling or spawning beside it would start a tug of war.
        return [a for a in actions if a.kind == "reclaim"] + [
            Action("conflict", name, "owned_by_other_fleet", obs.other_fleet)]
    if spec.suspend:
        return actions + [Action("wait", name, "suspended", "suspend: true; observed only",
                                 gates=(Gate("suspended", False),))]
    if obs.native_service and (proc is None or proc.source != "record"):
        # Never adopt what another supervisor owns: our record would hide the conflict from then on.
        actions = [a for a in actions if a.kind != "adopt"]
        return actions + [Action("conflict", name, "owned_by_native_service",
                                 f"a native service supervises this profile: {obs.native_service}")]

    wanted = h.desired_state(spec)
    if wanted == "stopped":
        if proc is None:
            if h.drain_intent:
                return actions + [Action("update", name, "drain_complete", "stopped")]
            return actions + [Action("keep", name, "stopped")]
        return actions + _stop_flow(name, spec, obs, "stop", "desired_stopped", now)

    if proc is not None:
        running = _running_flow(name, spec, obs, now, request)
        previous = desired.previous.get(name)
        if running[0].kind == "keep" and previous is not None and previous != spec:
            running = [Action("update", name, "policy_changed", "policy changed; applied in place", pid=proc.pid)]
        return actions + running
    return actions + _absent_flow(name, spec, obs, now)


def _stop_flow(name, spec, obs: ProfileObservation, intent: str, reason: str, now: float) -> list[Action]:
    h, proc = obs.history, obs.process
    if h.drain_intent and h.drain_pid == proc.pid:
        return _continue_drain(name, spec, obs, now)
    return [Action("drain", name, reason, "drain, then stop", pid=proc.pid, phase="begin")]


def _continue_drain(name, spec, obs: ProfileObservation, now: float) -> list[Action]:
    """A drain under way: wait for idle, then the planned stop, and kill when the deadline passes."""
    h, proc = obs.history, obs.process
    kind = "replace" if h.drain_intent == "replace" else "drain"
    if h.drain_deadline is not None and now >= h.drain_deadline:
        return [Action("kill", name, "drain_timeout", "drain deadline passed", pid=proc.pid)]
    if h.drain_signalled is not None:
        return [Action("wait", name, "stopping", "planned stop sent; waiting for exit", not_before=h.drain_deadline,
                       pid=proc.pid)]
    st = obs.status
    active = st.active if st else None
    hermes = spec is None or spec.driver == DRIVER_HERMES
    acknowledged = st is not None and st.state in ("draining", "stopped") and (active or 0) == 0
    unacknowledged_idle = (now - (h.drain_started or now)) >= DRAIN_ACK_GRACE and (active or 0) == 0
    if not hermes or acknowledged or unacknowledged_idle:
        return [Action(kind, name, h.drain_reason or "draining", "drained; planned stop", pid=proc.pid, phase="stop")]
    waiting = f"{active} active agent(s)" if active else "waiting for the gateway to acknowledge the drain"
    return [Action("wait", name, "draining", waiting,
                   not_before=min(h.drain_deadline or now + 1.0, now + 1.0), pid=proc.pid)]


def _heartbeat_stale(spec: ProfileSpec, obs: ProfileObservation, now: float) -> str | None:
    proc = obs.process
    if now - proc.started_at < spec.health.startup_grace:
        return None
    hb = obs.heartbeat_at
    if hb is not None and hb >= proc.started_at - 1.0:
        age = now - hb
        return f"heartbeat {age:.0f}s old (limit {spec.health.heartbeat_stale:g}s)" if age > spec.health.heartbeat_stale else None
    if spec.driver == DRIVER_HERMES and now - proc.started_at > spec.health.startup_grace + spec.health.heartbeat_stale:
        return "no heartbeat since start"
    return None


def _heartbeat_deadline(spec: ProfileSpec, obs: ProfileObservation, now: float) -> float | None:
    """When this gateway's heartbeat would turn stale: the controller wakes then to check it."""
    proc = obs.process
    grace_end = proc.started_at + spec.health.startup_grace
    hb = obs.heartbeat_at
    if hb is not None and hb >= proc.started_at - 1.0:
        due = max(hb + spec.health.heartbeat_stale, grace_end) + 0.05
    elif spec.driver == DRIVER_HERMES:
        due = grace_end + spec.health.heartbeat_stale + 0.05
    else:
        return None
    return due if due > now else None


def _running_flow(name, spec: ProfileSpec, obs: ProfileObservation, now: float,
                  request: MaintenanceRequest | None = None) -> list[Action]:
    h, proc = obs.history, obs.process
    if h.drain_intent and h.drain_pid == proc.pid:
        return _continue_drain(name, spec, obs, now)
    stale = _heartbeat_stale(spec, obs, now)
    if stale:
        return [Action("kill", name, "wedged", stale, pid=proc.pid)]
    req = obs.restart_request
    if req is not None and req.created_at > proc.started_at:
        if req.kind == "force_restart":
            return [Action("kill", name, "forced", "restart --force", pid=proc.pid)]
        return [Action("replace", name, "restart_requested", f"requested by {req.requested_by or 'an operator'}",
                       pid=proc.pid, phase="begin")]
    if request is not None and request.is_open and proc.started_at <= request.since:
        return [_maintenance(name, spec, obs, request, now)]
    if proc.spec_hash is not None and proc.spec_hash != spec.spec_hash:
        return [_voluntary_replace(name, spec, obs, "spec_changed", "spec changed")]
    if not proc.external_supervisor_flag:
        return [_voluntary_replace(name, spec, obs, "adopted_argv_mismatch",
                                   "runs without --external-supervisor; `hermes update` would fight the fleet")]
    return [Action("keep", name, "running", pid=proc.pid, not_before=_heartbeat_deadline(spec, obs, now))]


def _maintenance(name, spec: ProfileSpec, obs: ProfileObservation, req: MaintenanceRequest, now: float) -> Action:
    """A queued restart/update: only through the idle and window gates (unless a person said --now)."""
    label = f"maintenance #{req.id} ({req.action})"
    pid = obs.process.pid
    if req.not_before is not None and now < req.not_before:
        return Action("wait", name, "maintenance", f"{label}: not before {format_instant(req.not_before)}",
                      not_before=req.not_before,
                      pid=pid, voluntary=True)
    gates: tuple[Gate, ...] = ()
    if not req.now:
        st = obs.status
        idle_seconds = spec.maintenance.idle if req.idle_seconds is None else req.idle_seconds
        gates = (idle_gate(st.active if st else None, st.state if st else None, obs.history.idle_since,
                           idle_seconds, now), window_gate(spec.maintenance.windows, now))
    closed = [g for g in gates if not g.open]
    if closed:
        reason = "window_closed" if closed[0].gate == "window" else "idle_gate"
        wake_at = None
        if closed[0].gate == "idle" and obs.history.idle_since is not None and not (obs.status and obs.status.active):
            idle_seconds = spec.maintenance.idle if req.idle_seconds is None else req.idle_seconds
            wake_at = obs.history.idle_since + idle_seconds
        return Action("wait", name, reason, f"{label}: " + "; ".join(g.detail for g in closed), pid=pid,
                      voluntary=True, gates=gates, not_before=wake_at if wake_at and wake_at > now else None)
    if req.update_pending:
        return Action("wait", name, "update_command", f"{label}: gates open; the update command runs first",
                      pid=pid, voluntary=True, gates=gates)
    return Action("replace", name, "maintenance", label, pid=pid, phase="begin", voluntary=True, gates=gates)


def _voluntary_replace(name, spec: ProfileSpec, obs: ProfileObservation, reason: str, message: str) -> Action:
    active = obs.status.active if obs.status else None
    idle = Gate("idle", not active, f"{active} active agent(s)" if active else "no active agents")
    if not idle.open:
        return Action("wait", name, "idle_gate", f"{message}; waits until no agent is active ({active} now)",
                      pid=obs.process.pid, voluntary=True, gates=(idle,))
    return Action("replace", name, reason, message, pid=obs.process.pid, phase="begin", voluntary=True, gates=(idle,))


def _absent_flow(name, spec: ProfileSpec, obs: ProfileObservation, now: float) -> list[Action]:
    h = obs.history
    out: list[Action] = []
    if h.drain_intent:
        out.append(Action("update", name, "drain_complete", "previous process has exited"))
        if h.drain_intent == "replace":
            return out + [Action("spawn", name, "replacement", "drained; starting the new spec")]
    req = obs.restart_request
    fresh_request = req is not None and (h.last_exit_at is None or req.created_at > h.last_exit_at)
    if h.last_exit_class in TERMINAL_CLASSES and h.failed_spec_hash == spec.spec_hash and not fresh_request:
        why = "exit 78: configuration conflict" if h.last_exit_class == "fatal_config" else "startup failed"
        return out + [Action("conflict", name, "config_conflict" if h.last_exit_class == "fatal_config" else "startup_failed",
                             f"{why} ({h.failed_reason or 'see the log'}); not retried until the spec changes or "
                             f"`hermes-fleet start {name}`")]
    policy = spec.restart.policy
    if h.last_exit_class is not None and not fresh_request and h.last_exit_class not in ("planned", "restart_now"):
        if policy == "never":
            return out + [Action("wait", name, "restart_policy_never", "exited; restart policy is never")]
        if policy == "on-failure" and h.last_exit_class == "clean":
            return out + [Action("wait", name, "exited_cleanly", "exited 0; restart policy is on-failure")]
    not_before = None
    if h.last_exit_class in CRASH_CLASSES + ("clean",) and h.last_exit_at is not None and not fresh_request:
        not_before = h.last_exit_at + spec.restart.delay(max(h.failures, 1))
    limited = None
    if not fresh_request:
        earliest, limited = _start_limit(spec, h.recent_starts)
        if earliest is not None and (not_before is None or earliest > not_before):
            not_before = earliest
    if h.action_error_kind == "spawn":
        reason = "spawn_failed"
    elif h.last_start is None:
        reason = "first_apply"
    elif h.last_exit_class in CRASH_CLASSES:
        reason = "crashed"
    elif h.last_exit_class == "restart_now":
        reason = "restart_requested"
    elif h.last_exit_class == "planned":
        reason = "replacement"
    else:
        reason = "not_running"
    message = {"crashed": f"exited {h.last_exit_code if h.last_exit_code is not None else '(code unknown)'}; "
                          f"restart {h.failures}",
               "first_apply": "new profile",
               "spawn_failed": f"could not start ({h.action_errors or h.failures} time(s)): {h.action_error}"
               }.get(reason, "not running")
    if not_before is not None and not_before <= now:
        not_before = None
    if limited and not_before is not None:
        message += f"; {limited}"
    return out + [Action("spawn", name, reason, message, not_before=not_before,
                         gates=(Gate("backoff", not_before is None, f"until {format_instant(not_before)}" if not_before else ""),))]


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


def _apply_budget(actions: list[Action], desired: Desired, observed: Observed, now: float) -> list[Action]:
    """At most max_concurrent profiles disrupted voluntarily at once; one down involuntarily counts too."""
    limit = desired.spec.max_concurrent_maintenance
    in_use = set()
    for name, obs in observed.profiles.items():
        h = obs.history
        if h.drain_intent == "replace" and obs.process is not None:
            in_use.add(name)
        elif obs.process is None and h.last_exit_class == "planned" and _wants_running(desired.spec.profile(name), h):
            in_use.add(name)  # drained on purpose and not yet respawned: still in maintenance
        elif obs.process is None and h.failures > 0 and h.last_exit_class in CRASH_CLASSES \
                and h.action_error_kind != "spawn" and _wants_running(desired.spec.profile(name), h):
            in_use.add(name)  # a profile that could not even be spawned was never capacity: it holds no budget
    out = []
    for a in sorted(actions, key=lambda a: a.profile):
        if a.kind == "replace" and a.voluntary and a.phase == "begin":
            if len(in_use) >= limit and a.profile not in in_use:
                busy = ", ".join(sorted(in_use))
                out.append(Action("wait", a.profile, "budget_exhausted", f"{a.message}: budget: {busy} in maintenance",
                                  pid=a.pid, voluntary=True,
                                  gates=a.gates + (Gate("budget", False, f"{len(in_use)} of {limit} in use"),)))
                continue
            in_use.add(a.profile)
        out.append(a)
    return out


def _apply_stagger(actions: list[Action], desired: Desired, observed: Observed, now: float) -> list[Action]:
    """Spawns at least `stagger` apart, fleet-wide, in name order; each keeps its own backoff too."""
    slot = observed.last_spawn_at

    def failing(a: Action) -> bool:
        return a.kind == "spawn" and observed.get(a.profile).history.action_error_kind == "spawn"

    out = []
    # Ready-now spawns take the early slots; one in crash backoff never holds a sibling's first start back,
    # and one whose last attempt failed comes after every other ready spawn.
    for a in sorted(actions, key=lambda a: (a.kind == "spawn" and a.not_before or 0.0, failing(a), a.profile)):
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
            gates = a.gates + (Gate("stagger", nb is None, f"{gap:g}s between spawns"),)
            a = Action(a.kind, a.profile, a.reason, a.message, not_before=nb, pid=a.pid, phase=a.phase,
                       voluntary=a.voluntary, gates=gates)
        out.append(a)
    return out
