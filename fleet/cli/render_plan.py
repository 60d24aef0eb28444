"""Human and JSON forms of a plan. Renderers read the plan value; they decide nothing."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from fleet import __version__
from fleet.controller.preview import Preview
from fleet.plan.fielddiff import FieldChange, diff_specs
from fleet.plan.model import SYMBOLS, Action
from fleet.spec.durations import format_duration

FORMAT_VERSION = "1.0"
HEADLINE = {
    "spawn": "will be spawned", "adopt": "will be adopted", "update": "will be updated in place",
    "reclaim": "will have its record reclaimed", "replace": "will be replaced", "drain": "will be drained",
    "kill": "will be killed", "wait": "waits", "conflict": "is blocked", "keep": "is unchanged",
}


def utc(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _value(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def field_changes(pv: Preview, name: str) -> list[FieldChange]:
    return diff_specs(pv.previous.get(name), pv.desired.spec.profile(name)) if pv.previous.get(name) else []


def _change_lines(changes: list[FieldChange]) -> list[str]:
    lines = []
    for c in changes:
        note = "# forces replace" if c.forces_replace else "# in place"
        shown = c.shown()
        if shown is None:
            lines.append(f"      ~ {c.path} = (sensitive value {c.change})   {note}")
        else:
            lines.append(f"      ~ {c.path} = {_value(shown[0])} -> {_value(shown[1])}   {note}")
    return lines


def render_text(pv: Preview, *, profile: str | None = None, verbose: bool = False) -> str:
    now = pv.observed.observed_at
    rev = pv.manifest.path
    ctl = pv.controller
    gen = (f"generation {pv.last_generation} -> {pv.desired.generation}" if pv.new_generation
           else f"generation {pv.last_generation}")
    ctl_text = f"controller: running (pid {ctl.pid})" if ctl.running else "controller: not running"
    out = [f"{rev}   {gen}   {ctl_text}", ""]
    actions = [a for a in pv.plan.actions if profile is None or a.profile == profile]
    drift = _drift(pv, profile)
    if drift:
        out.append("Note: changes made outside hermes-fleet since the last apply:")
        out.extend(f"  {line}" for line in drift)
        out.append("")
    if pv.plan.refusal:
        out.append(f"Refused: {pv.plan.refusal}")
        out.append("")
    changes = [a for a in actions if a.kind != "keep"]
    if not changes and not pv.plan.refusal:
        running = sum(1 for a in actions if a.kind == "keep" and a.reason == "running")
        out.append(f"No changes. The fleet matches {pv.manifest.path} (generation {pv.desired.generation}): "
                   f"{running} profile(s) running.")
    else:
        out.append("hermes-fleet will perform the following actions:")
        out.append("  + spawn   ~ adopt/update/reclaim (records only)   -/+ replace   - drain   ! kill   > wait   ? conflict")
        out.append("")
        for a in changes:
            out.extend(_block(pv, a, now))
            out.append("")
    if verbose:
        for a in actions:
            if a.kind == "keep":
                out.append(f"    {a.profile:<12} unchanged ({a.reason})")
    counts = pv.plan.counts()
    out.append(f"Plan: {counts['spawn']} to spawn, {counts['replace']} to replace, {counts['drain']} to drain, "
               f"{counts['kill']} to kill; {counts['adopt']} to adopt, {counts['update']} to update, "
               f"{counts['reclaim']} to reclaim; {counts['keep']} unchanged.")
    waiting = [a for a in changes if a.kind == "wait" or (a.not_before and a.not_before > now)]
    if waiting:
        out.append("Waiting: " + ", ".join(f"{a.profile} ({_wait_text(a, now)})" for a in waiting) + ".")
    checks = [c for c in pv.checks if profile is None or c.profile in (None, profile)]
    if checks:
        out.append("")
        out.append("Checks:")
        for c in checks:
            who = f"{c.profile}: " if c.profile else ""
            out.append(f"  {c.severity}: {who}{c.message}" + (f" ({c.hint})" if c.hint else ""))
    return "\n".join(out)


def _wait_text(a: Action, now: float) -> str:
    if a.not_before and a.not_before > now:
        return f"{a.reason} until {local_clock(a.not_before)}"
    return a.message or a.reason


def _block(pv: Preview, a: Action, now: float) -> list[str]:
    sym = SYMBOLS[a.kind]
    lines = [f"  # {a.profile} {HEADLINE[a.kind]} ({a.reason.replace('_', ' ')})"]
    detail = f"pid {a.pid}" if a.pid else ""
    if a.not_before and a.not_before > now:
        detail += (", " if detail else "") + f"not before {local_clock(a.not_before)} (in {format_duration(a.not_before - now)})"
    if a.kind in ("drain", "replace") and a.phase == "begin":
        spec = pv.desired.spec.profile(a.profile) or pv.previous.get(a.profile)
        if spec:
            detail += (", " if detail else "") + f"drain up to {format_duration(spec.drain.timeout)}, then kill"
    lines.append(f"  {sym:<3} {a.profile:<12} {detail}".rstrip())
    if a.message:
        lines.append(f"      note: {a.message}")
    lines.extend(_change_lines(field_changes(pv, a.profile)))
    closed = [g for g in a.gates if not g.open]
    if closed:
        lines.append("      waits for: " + " · ".join(f"{g.gate} ({g.detail})" if g.detail else g.gate for g in closed))
    return lines


def _drift(pv: Preview, profile: str | None) -> list[str]:
    lines = []
    for name, obs in sorted(pv.observed.profiles.items()):
        if profile and name != profile:
            continue
        proc = obs.process
        if proc is not None and proc.source in ("cmdline", "match"):
            lines.append(f"{name:<10} gateway started by hand (pid {proc.pid}), no record")
        elif proc is not None and proc.source in ("env_marker", "hermes_pidfile"):
            lines.append(f"{name:<10} running (pid {proc.pid}) without a record")
        if obs.record_verdict == "dead":
            lines.append(f"{name:<10} pid {obs.record.pid} has exited since it was recorded")
        elif obs.record_problem:
            lines.append(f"{name:<10} {obs.record_problem}")
    return lines


def _change_json(c: FieldChange) -> dict:
    out = {"path": c.path, "forces_replace": c.forces_replace, "sensitive": c.sensitive, "change": c.change}
    shown = c.shown()
    if shown is not None:
        out.update(before=shown[0], after=shown[1])
    return out


def render_json(pv: Preview, *, profile: str | None = None) -> dict:
    now = pv.observed.observed_at
    actions = [a for a in pv.plan.actions if profile is None or a.profile == profile]
    basis = {}
    for name, obs in sorted(pv.observed.profiles.items()):
        proc = obs.process
        basis[name] = {"pid": proc.pid if proc else None, "create_time": proc.create_time if proc else None,
                       "spec_hash": proc.spec_hash if proc else None, "record": obs.record is not None}
    return {
        "format_version": FORMAT_VERSION,
        "kind": "plan",
        "tool_version": __version__,
        "generated_at": utc(now),
        "manifest": {"path": pv.manifest.path, "digest": pv.manifest.digest},
        "generation": {"desired": pv.desired.generation, "last_applied": pv.last_generation,
                       "new": pv.new_generation},
        "controller": {"running": pv.controller.running, "pid": pv.controller.pid},
        "basis": {"profiles": basis},
        "applyable": pv.plan.refusal is None and not any(c.severity == "error" for c in pv.checks
                                                         if c.code == "owned_by_native_service"),
        "refusal": pv.plan.refusal,
        "summary": pv.plan.counts(),
        "changes": [{
            "profile": a.profile, "action": a.kind, "steps": list(a.steps), "reason": a.reason,
            "message": a.message, "pid": a.pid, "phase": a.phase or None, "voluntary": a.voluntary,
            "not_before": utc(a.not_before),
            "spec_hash": {"running": _running_hash(pv, a.profile),
                          "desired": (pv.desired.spec.profile(a.profile).spec_hash
                                      if pv.desired.spec.profile(a.profile) else None)},
            "diff": [_change_json(c) for c in field_changes(pv, a.profile)],
            "gates": [{"gate": g.gate, "open": g.open, "detail": g.detail} for g in a.gates],
        } for a in actions if a.kind != "keep"],
        "drift": [{"profile": line.split()[0], "message": " ".join(line.split()[1:])} for line in _drift(pv, profile)],
        "checks": [{"severity": c.severity, "code": c.code, "profile": c.profile, "message": c.message, "hint": c.hint}
                   for c in pv.checks if profile is None or c.profile in (None, profile)],
        "errors": [],
    }


def _running_hash(pv: Preview, name: str) -> str | None:
    obs = pv.observed.profiles.get(name)
    return obs.process.spec_hash if obs and obs.process else None
