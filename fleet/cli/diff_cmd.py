"""`diff`: what `apply` would do, without doing it (and with --out, the plan saved for `apply PLAN`)."""

from __future__ import annotations

import time
from pathlib import Path

from fleet.cli.common import (
    EXIT_ERROR, EXIT_FAILED, EXIT_OK, FILE, OUTPUT, STATE_DIR, check_output, emit_json, fail, load_or_exit,
    open_store, state_for,
)
from fleet.cli.console import Exit, echo
from fleet.cli.declared import Opt, declare
from fleet.controller.plan_report import plan_report
from fleet.controller.preview import preview
from fleet.platform import current_platform


@declare(
    FILE, OUTPUT,
    Opt("profile", ("--profile",), "Show only this profile."),
    STATE_DIR,
    Opt("prune", ("--prune",), "Plan drains of profiles removed from the manifest.", negative=("--no-prune",)),
    Opt("allow_empty", ("--allow-empty",), "Plan as `apply --allow-empty` does: a manifest with no profiles drains "
        "a running fleet."),
    Opt("verbose", ("--verbose", "-v"), "Also list unchanged profiles."),
    Opt("exit_code", ("--exit-code",), "Exit 1 when changes are pending.", negative=("--no-exit-code",)),
    Opt("out", ("--out",), "Also save the whole plan (every profile) to PLAN, mode 0600, for `apply PLAN`; it "
        "names no secret value.", metavar="PLAN"),
)
def diff(
    file: Path = Path("fleet.yaml"),
    output: str = "text",
    profile: str | None = None,
    state_dir: str | None = None,
    prune: bool = True,
    allow_empty: bool = False,
    verbose: bool = False,
    exit_code: bool = True,
    out: Path | None = None,
) -> None:
    """Show what `apply` would do, without doing it.

    Exit codes follow kubectl/GNU diff (not Terraform's -detailed-exitcode):
    0 in sync, 1 changes pending (including waits), 2 error.
    Secret env values (by name: TOKEN, KEY, SECRET, PASS...; by value: URLs with credentials,
    JWTs, private keys, known token formats) are never printed: a rotated secret shows as
    "(sensitive value changed)".

    `--out PLAN` saves the plan with what it was computed from (the generation, the manifest's
    digest, the processes it acts on); `apply PLAN` then carries out exactly it, or refuses
    with exit 3 when any of that has changed.
    """
    check_output(output)
    if out is not None and out.exists() and file.exists() and out.samefile(file):
        fail(f"--out {out} is the manifest; save the plan to another file")
    manifest = load_or_exit(file, output)
    state = state_for(state_dir, file, manifest)
    store = open_store(state, write=False)
    try:
        from fleet.cli.render_plan import render_json, render_text
        pv = preview(manifest, state, store, current_platform(), time.time(), prune=prune, allow_empty=allow_empty)
        store_id = store.meta("store_id")
    finally:
        store.close()
    if profile and profile not in pv.observed.profiles and manifest.spec.profile(profile) is None:
        fail(f"no profile named {profile!r} in {file} or the state directory")
    report = plan_report(pv, profile)
    if out is not None:
        _save_plan(out, pv, state, store_id, prune=prune, allow_empty=allow_empty)
    if output == "json":
        emit_json(render_json(report))
    else:
        echo(render_text(report, verbose=verbose))
    if report.refusal:
        raise Exit(EXIT_ERROR if exit_code else EXIT_OK)
    raise Exit(EXIT_FAILED if report.changes and exit_code else EXIT_OK)


def _save_plan(out: Path, pv, state, store_id: str | None, *, prune: bool, allow_empty: bool) -> None:
    """The whole plan (whichever profile is shown), written for `apply PLAN`; a line on stderr says so, so that
    `-o json` stays one document on stdout."""
    from fleet.cli.saved_plan import plan_document, write_plan
    doc = plan_document(plan_report(pv), pv.observed, pv.desired.spec.profiles, pv.previous.values(),
                        state_dir=str(state.root), store_id=store_id, prune=prune, allow_empty=allow_empty)
    try:
        write_plan(out, doc)
    except OSError as exc:
        fail(f"cannot write the plan to {out}: {exc.strerror or exc}")
    note = "" if doc["plan"]["applyable"] else " (apply will refuse it: " + str(doc["plan"]["refusal"] or
                                                                              "a native service owns a profile") + ")"
    echo(f"Saved the plan to {out}{note}. To carry out exactly this plan: hermes-fleet apply {out}", err=True)
