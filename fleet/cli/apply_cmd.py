"""apply: record a new desired generation, hand it to the controller, watch it converge."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NoReturn

from fleet.cli.common import (
    EXIT_FAILED, EXIT_OK, EXIT_QUEUED, EXIT_REFUSED, FILE, OUTPUT, STATE_DIR, check_output, emit_json, fail,
    load_or_exit, open_store, state_for, timeout_option,
)
from fleet.cli.console import Exit, echo
from fleet.cli.declared import Arg, Opt, declare
from fleet.cli.controller_client import ensure_controller
from fleet.cli.gitinfo import guard_problem, revision_of, valid_revision
from fleet.cli.source_view import followed_source, one_writer_refusal
from fleet.cli.saved_plan import (
    PlanFileError, SavedPlan, action_change, process_change, read_plan, short_digest, tool_change,
)
from fleet.controller.plan_report import PlanReport, plan_report
from fleet.controller.preview import preview
from fleet.controller.record import record_manifest
from fleet.controller.status import SETTLED_WAITS, fleet_status
from fleet.platform import current_platform
from fleet.platform.base import Platform
from fleet.platform.controller_process import holder_runs
from fleet.spec.errors import ManifestError
from fleet.spec.load import Manifest, load_manifest
from fleet.store.db import Store, who
from fleet.store.layout import StateDir, resolve_state_dir
from fleet.store.lock import read_holder
from fleet.store.sources import Source, suspend_source

# Another apply recorded a newer generation before this one converged: what converges is not this manifest.
EXIT_SUPERSEDED = 5
# How often the wait looks at the fleet (a look at 100 profiles takes ~15 ms), and the share of a CPU it may take
# (at most 1 part in 1 + WAIT_LOOKS_PER_CPU): while a cold start of 100 runs, the host's CPUs are the children's, and
# a look every 0.1 s took a tenth of a core from them.
WAIT_POLL = 0.1
WAIT_LOOKS_PER_CPU = 9
# Until the controller has ended a pass over the generation, a look can show only the progress of that pass (a cold
# start of 100 is one pass of ~0.6 s, of 1,000 several seconds): one a second at most, for the phases it prints. Whether
# the pass ended is read from the store (two numbers) every WAIT_TICK seconds.
WAIT_PROGRESS = 1.0
WAIT_TICK = 0.02

# The codes of `apply`, printed after the options in its --help (README and docs/gitops.md list them too).
EXIT_CODES = """\b
Exit codes:
  0  converged
  1  failed, or timed out waiting
  2  invalid manifest, a usage error, PLAN is not a saved plan
  3  refused, nothing recorded: the empty-fleet guard, a native service owns a
     profile (without --take-over), a stale saved plan (the generation, the
     manifest, a process it acts on or the plan computed now changed since
     `diff --out`),
     --require-clean or --check-revision, a followed git source (without
     --force)
  4  accepted, waiting on a gate that does not open by itself soon (idle
     agents, a maintenance window; a rolling change held back by the
     disruption budget is progress, and apply waits for it)
  5  superseded by a newer generation (another apply) before it converged"""

@declare(
    Arg("plan_file", "A plan saved by `diff --out PLAN`: carry out exactly that plan (its manifest, its options), "
        "or refuse with exit 3 when anything it was computed from has changed since.", metavar="PLAN",
        show_default=False),
    FILE, STATE_DIR,
    Opt("prune", ("--prune",), "Drain profiles removed from the manifest (default) or defer that.",
        negative=("--no-prune",)),
    Opt("allow_empty", ("--allow-empty",), "Allow a manifest with no profiles to drain a running fleet."),
    Opt("wait", ("--wait",), "Wait until the fleet has converged (default).", negative=("--no-wait",)),
    Opt("timeout", ("--timeout",), "How long --wait waits, e.g. 90s, 5m."),
    Opt("require_clean", ("--require-clean",), "Refuse unless the manifest's git work tree is clean: no tracked "
        "file changed, the manifest committed."),
    Opt("check_revision", ("--check-revision",), "Refuse unless the manifest's git HEAD is SHA (at least 7 hex "
        "digits).", metavar="SHA"),
    Opt("force", ("--force",), "When the fleet follows a git source (`source set`): suspend the source and apply "
        "this file anyway."),
    Opt("take_over", ("--take-over",), "Take over the profiles that Hermes' own service (systemd unit, "
        "LaunchAgent, scheduled task) runs now, instead of refusing: as `hermes-fleet takeover P` does, each "
        "rolled back if anything fails."),
    OUTPUT,
)
def apply(
    plan_file: Path | None = None,
    file: Path = Path("fleet.yaml"),
    state_dir: str | None = None,
    prune: bool = True,
    allow_empty: bool = False,
    wait: bool = True,
    timeout: str = "5m",
    require_clean: bool = False,
    check_revision: str | None = None,
    force: bool = False,
    take_over: bool = False,
    output: str = "text",
    given: frozenset[str] = frozenset(),
) -> None:
    """Converge the host to the manifest, or carry out a saved plan.

    Validates, shows the plan, records a new desired generation, starts a controller if none
    runs (detached; it keeps the fleet converged after this command returns), then waits.

    `apply PLAN` carries out a plan saved by `diff --out PLAN` (its manifest, its options) only
    while nothing it was computed from has changed: the store's generation, the manifest's
    digest, the identity of every process it acts on, the plan itself.

    \b
    For CI-driven pushes:
      --require-clean         refuse a dirty git work tree
      --check-revision SHA    refuse unless the manifest's git HEAD is SHA
    Outside a git repository both refuse.

    While the fleet follows a git branch (`source set`), apply refuses (one writer) unless
    --force, which suspends the source first; `source resume` hands the fleet back to it.
    """
    check_output(output)
    wait_for = timeout_option(timeout)
    if check_revision is not None and not valid_revision(check_revision):
        fail(f"--check-revision: {check_revision!r} is not a commit id: give at least 7 hex digits of it")
    saved = _read_saved_plan(given, plan_file) if plan_file is not None else None
    if saved is not None:
        file, prune, allow_empty = Path(saved.manifest_path), saved.prune, saved.allow_empty
    problem = guard_problem(str(file), require_clean=require_clean, check_revision=check_revision)
    if problem:
        refuse_with(problem, output, check="require_clean" if problem.startswith("--require-clean") else "check_revision")
    if saved is None:
        manifest = load_or_exit(file, output)
        state = state_for(state_dir, file, manifest)
        report = _plan(manifest, state, prune=prune, allow_empty=allow_empty)
    else:
        manifest, state, report = _check_saved_plan(saved, state_dir, output)
    source = _followed(state)
    if source is not None and not force:
        refuse_with(one_writer_refusal(source, file), output, check="followed_source", source=source.name)
    taken = _to_take_over(report) if take_over else []
    if not report.applyable and not (taken and report.refusal is None):
        refuse(report, output)
    if output == "text":
        from fleet.cli.render_plan import render_text
        echo(render_text(report))
        echo("")
    generation, created, ids = _record(manifest, state, report, prune=prune, saved=saved, source=source,
                                       output=output, take_over=taken)
    if not ids:
        hand_over(state, generation, created, kind="apply", wait=wait, wait_for=wait_for, output=output)
    from fleet.cli.takeover_cmd import report_after_apply
    began = time.monotonic()
    try:
        hand_over(state, generation, created, kind="apply", wait=wait, wait_for=wait_for, output=output,
                  note=f"; taking over {', '.join(taken)}", extra={"takeovers": ids})
    except Exit as done:
        left = max(0.0, wait_for - (time.monotonic() - began))
        raise Exit(report_after_apply(state, ids, done.exit_code, left, output == "text") if wait
                         else done.exit_code) from None


def _to_take_over(report: PlanReport) -> list[str]:
    """The profiles a native unit supervises now: `apply --take-over` takes them over instead of refusing."""
    return sorted({c.profile for c in report.blocked_by if c.profile})


def hand_over(state: StateDir, generation: int, created: bool, *, kind: str, wait: bool, wait_for: float, output: str,
              note: str = "", extra: dict | None = None) -> NoReturn:
    """After a generation is recorded: start a controller if none runs (else wake it), then, with `wait`,
    follow the generation until it converges, fails, waits on a lasting gate or is superseded; exit so.
    `apply` and `rollback` end here. `note` follows "generation N recorded" in text, `extra` goes into the
    JSON document."""
    try:
        pid, started = ensure_controller(state)
    except RuntimeError as exc:
        fail(str(exc), EXIT_FAILED)
    if output == "text":
        echo(f"generation {generation} recorded{note}; controller pid {pid} {'started' if started else 'notified'}")
    head = {"format_version": "1.0", "kind": kind}
    if not wait:
        if output == "json":
            emit_json({**head, "result": "accepted", "generation": generation, "changed": created, **(extra or {}),
                       "controller_pid": pid})
        raise Exit(EXIT_OK)
    code, status = _wait(state, generation, wait_for, output)
    if output == "json":
        emit_json({**head, "generation": generation, "changed": created, **(extra or {}),
                   "controller_pid": pid,
                   "result": {EXIT_OK: "converged", EXIT_FAILED: "failed", EXIT_QUEUED: "queued",
                              EXIT_SUPERSEDED: "superseded"}[code],
                   **({"superseded_by": status.controller.generation} if code == EXIT_SUPERSEDED else {}),
                   "profiles": [{"name": p.name, "phase": p.phase, "pid": p.pid, "note": p.note}
                                for p in status.profiles]})
    raise Exit(code)


def _plan(manifest: Manifest, state: StateDir, *, prune: bool, allow_empty: bool) -> PlanReport:
    store = open_store(state, write=True)
    try:
        return plan_report(preview(manifest, state, store, current_platform(), time.time(), prune=prune,
                                   allow_empty=allow_empty))
    finally:
        store.close()


def _followed(state: StateDir) -> Source | None:
    store = open_store(state, write=False)
    try:
        return followed_source(store)
    finally:
        store.close()


def _record(manifest: Manifest, state: StateDir, report: PlanReport, *, prune: bool, saved: SavedPlan | None,
            source: Source | None, output: str, take_over: list[str] | None = None) -> tuple[int, bool, list[int]]:
    """The generation, recorded; for a saved plan only while the store is still at the plan's generation,
    checked in the transaction that records (so no other apply slips in between the check and the record).
    With a followed source (`--force`), the source is suspended in that same transaction: it stops exactly
    when this generation takes over from it."""
    revision = revision_of(str(manifest.path), manifest.digest)
    revision["summary"] = report.counts
    store = open_store(state, write=True)
    try:
        with store.tx():
            if saved is not None:
                stale = generation_change(saved, store)
                if stale:
                    refuse_with(stale, output, check="saved_plan")
            if source is not None:
                _suspend_for_force(store, source, manifest.path, output)
            recorded = record_manifest(store, manifest, revision, prune=prune,
                                       source="apply" if saved is None else "saved plan", lift_down=True)
            ids = _submit_take_overs(store, manifest, take_over or [], output)
    finally:
        store.close()
    return recorded.generation, recorded.created, ids


def _submit_take_overs(store: Store, manifest: Manifest, names: list[str], output: str) -> list[int]:
    """`--take-over`: the requests go into the transaction that records the generation (one or neither)."""
    if not names:
        return []
    from fleet.cli.takeover_cmd import submit_for_apply
    from fleet.store.takeovers import TakeoverError
    try:
        return submit_for_apply(store, {p.name: p for p in manifest.spec.profiles}, names)
    except TakeoverError as exc:
        refuse_with(str(exc), output, check="take_over")


# -- saved plans ----------------------------------------------------------------------------------------

def _read_saved_plan(given: frozenset[str], plan_file: Path) -> SavedPlan:
    """The plan file, refusing the options a saved plan decided already (Terraform: no planning options with a
    saved plan): the manifest, --prune, --allow-empty."""
    for name, spelling in (("file", "-f/--file"), ("prune", "--prune/--no-prune"), ("allow_empty", "--allow-empty")):
        if name in given:
            fail(f"{spelling} cannot be given with a saved plan: the plan names its manifest and options "
                 f"(make it again with `hermes-fleet diff --out`)")
    try:
        return read_plan(plan_file)
    except PlanFileError as exc:
        fail(str(exc))


def _check_saved_plan(saved: SavedPlan, state_dir: str | None, output: str) -> tuple[Manifest, StateDir, PlanReport]:
    """The saved plan's manifest, state directory and the plan computed now, refusing (exit 3) when anything
    the saved plan was computed from has changed: nothing is written until then."""
    state = state_for(saved.state_dir, None)
    if state_dir and resolve_state_dir(state_dir, None).root != state.root:
        refuse_with(f"saved plan was made for state directory {state.root}, not "
                    f"{resolve_state_dir(state_dir, None).root}", output, check="saved_plan")
    stale = tool_change(saved)
    if stale:
        refuse_with(stale, output, check="saved_plan")
    store = open_store(state, write=False)
    try:
        stale = generation_change(saved, store)
        manifest, stale_manifest = _saved_manifest(saved)
        if stale or stale_manifest or manifest is None:
            refuse_with(stale or stale_manifest or "", output, check="saved_plan")
        pv = preview(manifest, state, store, current_platform(), time.time(), prune=saved.prune,
                     allow_empty=saved.allow_empty)
    finally:
        store.close()
    report = plan_report(pv)
    stale = process_change(saved, pv.observed) or action_change(saved, report)
    if stale:
        refuse_with(stale, output, check="saved_plan")
    return manifest, state, report


def _saved_manifest(saved: SavedPlan) -> tuple[Manifest | None, str | None]:
    """The manifest the plan names, as it is now; or why it is no longer the one the plan was made from."""
    name = _shown_path(saved.manifest_path)
    try:
        manifest = load_manifest(Path(saved.manifest_path))
    except ManifestError as exc:
        first = exc.problems[0].render() if exc.problems else str(exc)
        return None, f"manifest {name} changed since the plan: it no longer loads ({first})"
    if manifest.digest != saved.manifest_digest:
        return None, (f"manifest {name} changed since the plan: digest {short_digest(saved.manifest_digest)} -> "
                      f"{short_digest(manifest.digest)}")
    return manifest, None


def _shown_path(path: str) -> str:
    """A path as a person typed it: relative to the working directory when it lies below it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive than the working directory's
        return path
    return path if rel.startswith("..") else rel


def generation_change(saved: SavedPlan, store: Store) -> str | None:
    """The store is no longer the one, or no longer at the generation, the plan was computed against."""
    store_id = store.meta("store_id")
    if saved.store_id and store_id != saved.store_id:
        return (f"saved plan is stale: the state store was replaced since the plan "
                f"(store id {saved.store_id[:8]} -> {(store_id or 'none')[:8]})")
    current = store.current_generation()
    now = current.generation if current else 0
    if now != saved.generation:
        return f"saved plan is stale: generation {saved.generation} -> {now}{_applied_by(store, now)}"
    return None


def _suspend_for_force(store: Store, source: Source, file: str | Path, output: str) -> None:
    reason = f"apply --force -f {file}"
    suspend_source(store, source.name, reason=reason, by=who(), at=time.time())
    store.journal("source_suspended", f"source {source.name} suspended: {reason}",
                  data={"source": source.name, "reason": reason})
    if output == "text":
        echo(f"source {source.name} suspended ({reason}); `hermes-fleet source resume` hands the fleet back "
                   f"to {source.ref} of {source.url}", err=True)


def refuse(report: PlanReport, output: str, kind: str = "apply") -> NoReturn:
    """The plan may not be applied (the empty-fleet guard, a native service supervising a profile): exit 3."""
    refuse_with(report.refusal_reason or "", output, kind)


def refuse_with(reason: str, output: str, kind: str = "apply", check: str | None = None, **fields: object) -> NoReturn:
    """A refusal of the whole command, before anything is recorded: one line, exit 3. `check` names the guard
    (saved_plan, require_clean, check_revision, followed_source) in the JSON document, with `fields`."""
    if output == "json":
        emit_json({"format_version": "1.0", "kind": kind, "result": "refused", **({"check": check} if check else {}),
                   **fields, "message": reason})
    else:
        echo(f"Refused: {reason}", err=True)
    raise Exit(EXIT_REFUSED)


# Gates that do not open by themselves soon: a person's agents going idle, a maintenance window,
# a request's not-before. A budget that is merely exhausted frees up as the rolling change drains.
LASTING_GATES = ("idle_gate", "window_closed", "maintenance")


def _held_by_lasting_gates(status) -> bool:
    """Nothing left to do but wait on a lasting gate: `apply` hands over (exit 4) instead of waiting."""
    waiting = [p for p in status.profiles if p.action.kind != "keep" and p.action.reason not in SETTLED_WAITS]
    return bool(waiting) and all(p.action.kind == "wait" and p.action.reason in LASTING_GATES for p in waiting)


class PassProgress:
    """The controller's pass over a generation, followed without looking at the fleet: whether it ended (or another
    generation was recorded since), and what it journaled so far. A look at the fleet costs ~0.2 ms per profile
    (each gateway's record and process); while a cold start of 500 is one pass of seconds, a look every second took
    a tenth of a CPU from the gateways starting. This costs a few small queries."""

    def __init__(self, state: StateDir, generation: int):
        self.state = state
        self.generation = generation
        self.store = Store(state.db, readonly=True)
        self.after = self.store.applied_entry(generation)
        self.reported: dict[str, int] = {}

    def worth_a_look(self) -> bool:
        store = self.store
        return store.observed_generation >= self.generation or store.current_generation_number() != self.generation

    def under_way(self, platform: Platform) -> bool:
        """The pass goes on: not ended, and its controller still runs (one that died needs the look that says so)."""
        return not self.worth_a_look() and holder_runs(self.state, platform, read_holder(self.state))

    def news(self) -> str | None:
        """What the pass journaled for its profiles so far ("in progress: 120 spawned, 3 drain started"), when it
        differs from the last report."""
        counts = self.store.profile_entry_counts(self.after)
        if not counts or counts == self.reported:
            return None
        self.reported = counts
        return "  in progress: " + ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items())

    def close(self) -> None:
        self.store.close()


def _pause(progress: PassProgress, soonest: float, latest: float) -> None:
    """Until `latest`, or from `soonest` on as soon as a look can show more than a pass in progress."""
    while True:
        now = time.monotonic()
        if now >= latest or (now >= soonest and progress.worth_a_look()):
            return
        time.sleep(min(max(soonest - now, WAIT_TICK), latest - now))


def _wait(state, generation: int, timeout: float, output: str):
    platform = current_platform()
    deadline = time.monotonic() + timeout
    text = output == "text"
    seen: dict[str, str] = {}
    soonest = looked_at = time.monotonic()
    looked = 0.0
    progress = PassProgress(state, generation)
    try:
        while True:
            _pause(progress, soonest, min(deadline, looked_at + max(WAIT_PROGRESS, looked * WAIT_LOOKS_PER_CPU)))
            if time.monotonic() < deadline and progress.under_way(platform):
                news = progress.news() if text else None
                if news:
                    echo(news)
                looked_at = time.monotonic()
                continue
            looked = time.monotonic()
            status = fleet_status(state, platform, time.time())
            looked_at = time.monotonic()
            looked = looked_at - looked
            if status.controller.generation != generation:
                echo(f"generation {generation} superseded by "
                     f"{_describe_generation(state, status.controller.generation)}; not waiting for it", err=True)
                return EXIT_SUPERSEDED, status
            if text:
                _echo_phase_changes(status, seen)
            code = _outcome(status, text) if status.controller.observed_generation >= generation else None
            if code is None:
                code = _stalled(state, status, deadline, text)
            if code is not None:
                return code, status
            soonest = looked_at + max(WAIT_POLL, looked * WAIT_LOOKS_PER_CPU)
    finally:
        progress.close()


def _echo_phase_changes(status, seen: dict[str, str]) -> None:
    """Each profile's phase, whenever it differs from what was last printed for it."""
    for p in status.profiles:
        line = f"{p.phase}" + (f" (pid {p.pid})" if p.pid else "") + (f" {p.note}" if p.note and p.phase != "Running" else "")
        if seen.get(p.name) != line:
            seen[p.name] = line
            echo(f"  {p.name}: {line}")


def _outcome(status, text: bool) -> int | None:
    """Where the controller's pass over this generation left the fleet: converged, failed, or held by a
    lasting gate; None while it is still on its way."""
    if status.converged:
        if text:
            echo(f"Converged: {sum(1 for p in status.profiles if p.phase == 'Running')} running.")
        return EXIT_OK
    if status.failed:
        if text:
            for p in status.failed:
                echo(f"Failed: {p.name}: {p.note}", err=True)
        return EXIT_FAILED
    if _held_by_lasting_gates(status):
        if text:
            echo("Accepted; waiting on gates: " + ", ".join(f"{p.name} ({p.note})" for p in status.gated))
        return EXIT_QUEUED
    return None


def _stalled(state, status, deadline: float, text: bool) -> int | None:
    """The wait cannot end well: the controller is gone, or the time is up."""
    if not status.controller.running:
        if text:
            echo("The controller is not running; see its log: " + str(state.controller_log), err=True)
        return EXIT_FAILED
    if time.monotonic() >= deadline:
        if text:
            pending = [p for p in status.profiles if p.action.kind != "keep"]
            echo("Timed out waiting for: " + ", ".join(f"{p.name} ({p.note})" for p in pending), err=True)
        return EXIT_FAILED
    return None


def _describe_generation(state, generation: int) -> str:
    """'generation M (applied by WHO from WHERE)', from the store's applied revisions."""
    store = Store(state.db, readonly=True)
    try:
        return f"generation {generation}{_applied_by(store, generation)}"
    finally:
        store.close()


def _applied_by(store: Store, generation: int) -> str:
    """' (applied by WHO from WHERE)' for a generation the store has a revision row of, else ''."""
    rows = [r for r in store.revisions(50) if r["generation"] == generation]
    if not rows:
        return ""
    row = rows[0]
    where = row["manifest_path"] or row["revision"] or "an unknown manifest"
    return f" (applied by {row['applied_by'] or 'someone'} from {where})"
