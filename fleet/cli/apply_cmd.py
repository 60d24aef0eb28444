"""apply: record a new desired generation, hand it to the controller, watch it converge."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from fleet.cli.common import (
    EXIT_FAILED, EXIT_OK, EXIT_QUEUED, EXIT_REFUSED, FileOption, OutputOption, StateDirOption,
    check_output, emit_json, fail, load_or_exit, open_store, state_for,
)
from fleet.cli.controller_client import ensure_controller
from fleet.cli.gitinfo import revision_of
from fleet.cli.source_cmd import followed_source, one_writer_refusal
from fleet.controller.plan_report import PlanReport, plan_report
from fleet.controller.preview import preview
from fleet.controller.record import record_manifest
from fleet.controller.status import SETTLED_WAITS, fleet_status
from fleet.platform import current_platform
from fleet.spec.durations import parse_duration
from fleet.store.db import Store, who
from fleet.store.sources import Source, suspend_source

# Another apply recorded a newer generation before this one converged: what converges is not this manifest.
EXIT_SUPERSEDED = 5


def apply(
    file: Path = FileOption,
    state_dir: str | None = StateDirOption,
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Drain profiles removed from the manifest (default) or defer that."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Allow a manifest with no profiles to drain a running fleet."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the fleet has converged (default)."),
    timeout: str = typer.Option("5m", "--timeout", help="How long --wait waits, e.g. 90s, 5m."),
    force: bool = typer.Option(False, "--force", help="When the fleet follows a git source (`source set`): "
                               "suspend the source and apply this file anyway."),
    output: str = OutputOption,
) -> None:
    """Converge the host to the manifest.

    Validates, shows the plan, records a new desired generation, starts a controller if none
    runs (detached; it keeps the fleet converged after this command returns), then waits.

    While the fleet follows a git branch (`source set`), apply refuses (one writer) unless
    --force, which suspends the source first; `source resume` hands the fleet back to it.

    Exit: 0 converged, 1 failed or timed out, 2 invalid manifest, 3 refused (empty-fleet
    guard, native-service conflict, a followed source without --force), 4 accepted but waiting on a gate that does not open by
    itself soon (idle agents, a maintenance window; a rolling change held back by the
    disruption budget is progress, and apply waits for it), 5 superseded by a newer
    generation (another apply) before it converged.
    """
    check_output(output)
    try:
        wait_for = parse_duration(timeout)
    except ValueError as exc:
        fail(f"--timeout: {exc}")
    manifest = load_or_exit(file, output)
    state = state_for(state_dir, file, manifest)
    platform = current_platform()
    store = open_store(state, write=True)
    try:
        source = followed_source(store)
        if source is not None and not force:
            _refuse_for_source(source, file, output)
        report = plan_report(preview(manifest, state, store, platform, time.time(), prune=prune,
                                     allow_empty=allow_empty))
        if not report.applyable:
            _refuse(report, output)
        if output == "text":
            from fleet.cli.render_plan import render_text
            typer.echo(render_text(report))
            typer.echo("")
        revision = revision_of(str(file), manifest.digest)
        revision["summary"] = report.counts
        with store.tx():  # the source stops exactly when this generation takes over from it
            if source is not None:
                _suspend_for_force(store, source, file, output)
            recorded = record_manifest(store, manifest, revision, prune=prune, source="apply", lift_down=True)
        generation, created = recorded.generation, recorded.created
    finally:
        store.close()
    try:
        pid, started = ensure_controller(state)
    except RuntimeError as exc:
        fail(str(exc), EXIT_FAILED)
    if output == "text":
        typer.echo(f"generation {generation} recorded; controller pid {pid} {'started' if started else 'notified'}")
    if not wait:
        if output == "json":
            emit_json({"format_version": "1.0", "kind": "apply", "result": "accepted", "generation": generation,
                       "changed": created, "controller_pid": pid})
        raise typer.Exit(EXIT_OK)
    code, status = _wait(state, generation, wait_for, output)
    if output == "json":
        emit_json({"format_version": "1.0", "kind": "apply", "generation": generation, "changed": created,
                   "controller_pid": pid,
                   "result": {EXIT_OK: "converged", EXIT_FAILED: "failed", EXIT_QUEUED: "queued",
                              EXIT_SUPERSEDED: "superseded"}[code],
                   **({"superseded_by": status.controller.generation} if code == EXIT_SUPERSEDED else {}),
                   "profiles": [{"name": p.name, "phase": p.phase, "pid": p.pid, "note": p.note}
                                for p in status.profiles]})
    raise typer.Exit(code)


def _refuse_for_source(source: Source, file: Path, output: str) -> None:
    message = one_writer_refusal(source, file)
    if output == "json":
        emit_json({"format_version": "1.0", "kind": "apply", "result": "refused", "message": message,
                   "source": source.name})
    else:
        typer.echo(f"Refused: {message}", err=True)
    raise typer.Exit(EXIT_REFUSED)


def _suspend_for_force(store: Store, source: Source, file: Path, output: str) -> None:
    reason = f"apply --force -f {file}"
    suspend_source(store, source.name, reason=reason, by=who(), at=time.time())
    store.journal("source_suspended", f"source {source.name} suspended: {reason}",
                  data={"source": source.name, "reason": reason})
    if output == "text":
        typer.echo(f"source {source.name} suspended ({reason}); `hermes-fleet source resume` hands the fleet back "
                   f"to {source.ref} of {source.url}", err=True)


def _refuse(report: PlanReport, output: str) -> None:
    reason = report.refusal_reason
    if output == "json":
        emit_json({"format_version": "1.0", "kind": "apply", "result": "refused", "message": reason})
    else:
        typer.echo(f"Refused: {reason}", err=True)
    raise typer.Exit(EXIT_REFUSED)


# Gates that do not open by themselves soon: a person's agents going idle, a maintenance window,
# a request's not-before. A budget that is merely exhausted frees up as the rolling change drains.
LASTING_GATES = ("idle_gate", "window_closed", "maintenance")


def _held_by_lasting_gates(status) -> bool:
    """Nothing left to do but wait on a lasting gate: `apply` hands over (exit 4) instead of waiting."""
    waiting = [p for p in status.profiles if p.action.kind != "keep" and p.action.reason not in SETTLED_WAITS]
    return bool(waiting) and all(p.action.kind == "wait" and p.action.reason in LASTING_GATES for p in waiting)


def _wait(state, generation: int, timeout: float, output: str):
    platform = current_platform()
    deadline = time.monotonic() + timeout
    text = output == "text"
    seen: dict[str, str] = {}
    while True:
        status = fleet_status(state, platform, time.time())
        if status.controller.generation != generation:
            typer.echo(f"generation {generation} superseded by "
                       f"{_describe_generation(state, status.controller.generation)}; not waiting for it", err=True)
            return EXIT_SUPERSEDED, status
        if text:
            _echo_phase_changes(status, seen)
        code = _outcome(status, text) if status.controller.observed_generation >= generation else None
        if code is None:
            code = _stalled(state, status, deadline, text)
        if code is not None:
            return code, status
        time.sleep(0.1)


def _echo_phase_changes(status, seen: dict[str, str]) -> None:
    """Each profile's phase, whenever it differs from what was last printed for it."""
    for p in status.profiles:
        line = f"{p.phase}" + (f" (pid {p.pid})" if p.pid else "") + (f" {p.note}" if p.note and p.phase != "Running" else "")
        if seen.get(p.name) != line:
            seen[p.name] = line
            typer.echo(f"  {p.name}: {line}")


def _outcome(status, text: bool) -> int | None:
    """Where the controller's pass over this generation left the fleet: converged, failed, or held by a
    lasting gate; None while it is still on its way."""
    if status.converged:
        if text:
            typer.echo(f"Converged: {sum(1 for p in status.profiles if p.phase == 'Running')} running.")
        return EXIT_OK
    if status.failed:
        if text:
            for p in status.failed:
                typer.echo(f"Failed: {p.name}: {p.note}", err=True)
        return EXIT_FAILED
    if _held_by_lasting_gates(status):
        if text:
            typer.echo("Accepted; waiting on gates: " + ", ".join(f"{p.name} ({p.note})" for p in status.gated))
        return EXIT_QUEUED
    return None


def _stalled(state, status, deadline: float, text: bool) -> int | None:
    """The wait cannot end well: the controller is gone, or the time is up."""
    if not status.controller.running:
        if text:
            typer.echo("The controller is not running; see its log: " + str(state.controller_log), err=True)
        return EXIT_FAILED
    if time.monotonic() >= deadline:
        if text:
            pending = [p for p in status.profiles if p.action.kind != "keep"]
            typer.echo("Timed out waiting for: " + ", ".join(f"{p.name} ({p.note})" for p in pending), err=True)
        return EXIT_FAILED
    return None


def _describe_generation(state, generation: int) -> str:
    """'generation M (applied by WHO from WHERE)', from the store's applied revisions."""
    store = Store(state.db, readonly=True)
    try:
        rows = [r for r in store.revisions(50) if r["generation"] == generation]
    finally:
        store.close()
    if not rows:
        return f"generation {generation}"
    row = rows[0]
    where = row["manifest_path"] or row["revision"] or "an unknown manifest"
    return f"generation {generation} (applied by {row['applied_by'] or 'someone'} from {where})"
