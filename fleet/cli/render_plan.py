"""Human and JSON forms of a plan report. Renderers format the report value; they decide nothing."""

from __future__ import annotations

import time

from fleet import __version__
from fleet.cli.common import utc
from fleet.controller.plan_report import ActionReport, PlanReport, ShownChange
from fleet.plan.model import SYMBOLS
from fleet.spec.durations import format_duration

FORMAT_VERSION = "1.0"
HEADLINE = {
    "spawn": "will be spawned", "adopt": "will be adopted", "update": "will be updated in place",
    "reclaim": "will have its record reclaimed", "replace": "will be replaced", "drain": "will be drained",
    "kill": "will be killed", "wait": "waits", "conflict": "is blocked", "keep": "is unchanged",
}
# A profile a native service owns: not a surprise but a step of its own (`hermes-fleet takeover P`).
TAKEOVER_HEADLINE = "is left to its native service until taken over"
LEGEND = "  + spawn   ~ adopt/update/reclaim (records only)   -/+ replace   - drain   ! kill   > wait   ? conflict"


def local_clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _value(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _change_lines(changes: tuple[ShownChange, ...]) -> list[str]:
    lines = []
    for c in changes:
        note = "# forces replace" if c.forces_replace else "# in place"
        if c.shown is None:
            lines.append(f"      ~ {c.path} = (sensitive value {c.change})   {note}")
        else:
            lines.append(f"      ~ {c.path} = {_value(c.shown[0])} -> {_value(c.shown[1])}   {note}")
    return lines


def render_text(report: PlanReport, *, verbose: bool = False) -> str:
    out = [_headline(report), ""]
    if report.drift:
        out.append("Note: changes made outside hermes-fleet since the last apply:")
        out.extend(f"  {note.profile:<10} {note.message}" for note in report.drift)
        out.append("")
    if report.refusal:
        out.append(f"Refused: {report.refusal}")
        out.append("")
    out.extend(_actions_text(report))
    if verbose:
        out.extend(f"    {a.profile:<12} unchanged ({a.reason})" for a in report.unchanged)
    out.append(_counts_line(report.counts))
    if report.waiting:
        out.append("Waiting: " + ", ".join(f"{r.action.profile} ({_wait_text(r)})" for r in report.waiting) + ".")
    out.extend(_checks_text(report))
    return "\n".join(out)


def _headline(report: PlanReport) -> str:
    gen = (f"generation {report.last_generation} -> {report.desired_generation}" if report.new_generation
           else f"generation {report.last_generation}")
    ctl = (f"controller: running (pid {report.controller_pid})" if report.controller_running
           else "controller: not running")
    return f"{report.manifest_path}   {gen}   {ctl}"


def _actions_text(report: PlanReport) -> list[str]:
    if report.in_sync:
        return [f"No changes. The fleet matches {report.manifest_path} (generation {report.desired_generation}): "
                f"{report.running} profile(s) running."]
    out = ["hermes-fleet will perform the following actions:", LEGEND, ""]
    for r in report.changes:
        out.extend(_block(r, report.generated_at, applyable=report.applyable))
        out.append("")
    return out


def _counts_line(counts: dict[str, int]) -> str:
    return (f"Plan: {counts['spawn']} to spawn, {counts['replace']} to replace, {counts['drain']} to drain, "
            f"{counts['kill']} to kill; {counts['adopt']} to adopt, {counts['update']} to update, "
            f"{counts['reclaim']} to reclaim; {counts['keep']} unchanged.")


def _checks_text(report: PlanReport) -> list[str]:
    if not report.checks:
        return []
    out = ["", "Checks:"]
    for c in report.checks:
        who = f"{c.profile}: " if c.profile else ""
        out.append(f"  {c.severity}: {who}{c.message}" + (f" ({c.hint})" if c.hint else ""))
    return out


def _wait_text(r: ActionReport) -> str:
    if r.pending_until is not None:
        return f"{r.action.reason} until {local_clock(r.pending_until)}"
    return r.action.message or r.action.reason


def _block(r: ActionReport, now: float, *, applyable: bool = True) -> list[str]:
    a = r.action
    headline = TAKEOVER_HEADLINE if r.takeover else HEADLINE[a.kind]
    lines = [f"  # {a.profile} {headline} ({a.reason.replace('_', ' ')})",
             f"  {SYMBOLS[a.kind]:<3} {a.profile:<12} {_detail(r, now)}".rstrip()]
    if a.message:
        lines.append(f"      note: {a.message}")
    if r.takeover:
        lines.append(f"      take over: {r.takeover}" + ("" if applyable else " (or apply --take-over; plain apply "
                                                                         "refuses until then)"))
    lines.extend(_change_lines(r.changes))
    if r.waits_for:
        lines.append("      waits for: " + " · ".join(f"{g.gate} ({g.detail})" if g.detail else g.gate
                                                      for g in r.waits_for))
    return lines


def _detail(r: ActionReport, now: float) -> str:
    parts = [f"pid {r.action.pid}"] if r.action.pid else []
    if r.pending_until is not None:
        parts.append(f"not before {local_clock(r.pending_until)} (in {format_duration(r.pending_until - now)})")
    if r.drain_timeout is not None:
        parts.append(f"drain up to {format_duration(r.drain_timeout)}, then kill")
    return ", ".join(parts)


def _change_json(c: ShownChange) -> dict:
    out = {"path": c.path, "forces_replace": c.forces_replace, "sensitive": c.sensitive, "change": c.change}
    if c.shown is not None:
        out.update(before=c.shown[0], after=c.shown[1])
    return out


def _action_json(r: ActionReport) -> dict:
    a = r.action
    return {
        "profile": a.profile, "action": a.kind, "steps": list(a.steps), "reason": a.reason,
        "message": a.message, "pid": a.pid, "phase": a.stage or None, "voluntary": a.voluntary,
        "not_before": utc(a.not_before),
        "spec_hash": {"running": r.running_hash, "desired": r.desired_hash},
        "diff": [_change_json(c) for c in r.changes],
        "gates": [{"gate": g.gate, "open": g.open, "detail": g.detail} for g in a.gates],
        **({"takeover": r.takeover} if r.takeover else {}),
    }


def render_json(report: PlanReport) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "kind": "plan",
        "tool_version": __version__,
        "generated_at": utc(report.generated_at),
        "manifest": {"path": report.manifest_path, "digest": report.manifest_digest},
        "generation": {"desired": report.desired_generation, "last_applied": report.last_generation,
                       "new": report.new_generation},
        "controller": {"running": report.controller_running, "pid": report.controller_pid},
        "basis": {"profiles": {b.profile: {"pid": b.pid, "create_time": b.create_time, "spec_hash": b.spec_hash,
                                           "record": b.record} for b in report.basis}},
        "applyable": report.applyable,
        "refusal": report.refusal,
        "summary": report.counts,
        "changes": [_action_json(r) for r in report.changes],
        # A drift message in JSON is its words on one line, as the text note has always been read back.
        "drift": [{"profile": n.profile, "message": " ".join(n.message.split())} for n in report.drift],
        "checks": [{"severity": c.severity, "code": c.code, "profile": c.profile, "message": c.message, "hint": c.hint}
                   for c in report.checks],
        "errors": [],
    }
