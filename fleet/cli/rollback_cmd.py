"""rollback: re-apply an earlier generation's stored spec as a new generation, the way `apply` applies a file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import NoReturn

import typer

from fleet.cli.apply_cmd import hand_over, refuse, refuse_with
from fleet.cli.common import (
    EXIT_OK, check_output, emit_json, fail, fleet_state, open_store, timeout_option,
)
from fleet.cli.console import Exit, echo
from fleet.cli.options import OutputOption, StateDirOption
from fleet.controller.plan_report import plan_report
from fleet.controller.preview import preview
from fleet.controller.record import record_manifest
from fleet.controller.rollback import RollbackError, RollbackTarget, rollback_target
from fleet.controller.writers import followed_source_refusal, hold_rolled_back_commit
from fleet.platform import current_platform


def rollback(
    generation: int | None = typer.Argument(
        None, help="The generation to go back to (default: the one before the current generation)."),
    file: Path = typer.Option(Path("fleet.yaml"), "-f", "--file",
                              help="The manifest whose state directory to use (default: ./fleet.yaml); "
                                   "its content is not applied."),
    state_dir: str | None = StateDirOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan and what would be refused; record nothing."),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Drain profiles the generation does not have (default) or defer that."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Allow a generation with no profiles to drain a running fleet."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the fleet has converged (default)."),
    timeout: str = typer.Option("5m", "--timeout", help="How long --wait waits, e.g. 90s, 5m."),
    output: str = OutputOption,
) -> None:
    """Re-apply an earlier generation's stored spec as a new generation.

    `history` lists the generations. The spec comes from the store, not from fleet.yaml or git (-f only
    finds the state directory), and is recorded as generation N+1 with the origin "rollback of GENERATION";
    the generation rolled back from stays in the store too. Like `apply`, it shows the plan first, refuses
    what `apply` refuses, lifts a `down`, starts or wakes the controller and waits. The store keeps the
    newest 50 generations: those are the ones a rollback reaches.

    Exit: 0 converged, nothing to roll back, or (--dry-run) the rollback may be applied; 1 failed or timed
    out; 2 no such generation (never recorded, or no longer kept); 3 refused (empty-fleet guard,
    native-service conflict, a followed source that is not suspended); 4 and 5 as for `apply`.
    """
    check_output(output)
    wait_for = timeout_option(timeout)
    state = fleet_state(state_dir, file)
    store = open_store(state, write=not dry_run)
    try:
        try:
            target = rollback_target(store, generation)
        except RollbackError as exc:
            fail(str(exc), hint="`hermes-fleet history` lists the generations" if generation is not None else "")
        refusal = followed_source_refusal(store)
        if refusal:
            refuse_with(refusal, output, "rollback")
        if target.unchanged:
            _nothing_to_roll_back(target, output)
        report = plan_report(preview(target.manifest, state, store, current_platform(), time.time(), prune=prune,
                                     allow_empty=allow_empty))
        if not report.applyable:
            refuse(report, output, "rollback")
        from fleet.cli.render_plan import render_json, render_text
        if output == "text":
            echo(_describe(target))
            echo(render_text(report))
            echo("")
        if dry_run:
            if output == "json":
                emit_json({"format_version": "1.0", "kind": "rollback", "result": "dry_run",
                           "rollback_of": target.target.generation, "generation": report.desired_generation,
                           "plan": render_json(report)})
            else:
                echo(f"Dry run: nothing recorded. `hermes-fleet rollback {target.target.generation}` "
                           f"would record generation {report.desired_generation}.")
            raise Exit(EXIT_OK)
        with store.tx():
            recorded = record_manifest(store, target.manifest, {**target.revision, "summary": report.counts},
                                       prune=prune, source="rollback", origin=target.origin,
                                       rollback_of=target.target.generation, lift_down=True)
            held = hold_rolled_back_commit(store)
        if held and output == "text":
            echo(f"the source's commit {held[:12]} is held: `source resume` follows the branch again from "
                       f"its next commit (`source resume --accept-current` applies {held[:12]} again)", err=True)
    finally:
        store.close()
    hand_over(state, recorded.generation, recorded.created, kind="rollback", wait=wait, wait_for=wait_for,
              output=output, note=f" ({target.origin})", extra={"rollback_of": target.target.generation})


def _describe(target: RollbackTarget) -> str:
    gen = target.target
    made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(gen.created_at))
    revision = target.revision.get("revision") or gen.digest
    return (f"Rolling back from generation {target.current.generation} to the spec of generation {gen.generation} "
            f"(recorded {made} by {gen.origin or 'an earlier release'}; revision {revision}).")


def _nothing_to_roll_back(target: RollbackTarget, output: str) -> NoReturn:
    gen, current = target.target.generation, target.current.generation
    message = (f"generation {current} is the current generation" if gen == current
               else f"generation {gen} has the spec of the current generation {current}")
    if output == "json":
        emit_json({"format_version": "1.0", "kind": "rollback", "result": "unchanged", "rollback_of": gen,
                   "generation": current, "message": f"{message}; nothing to roll back"})
    else:
        echo(f"Nothing to roll back: {message}.")
    raise Exit(EXIT_OK)

