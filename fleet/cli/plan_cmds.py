"""validate, diff, config: read-only commands about a manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
import yaml

from fleet.cli.common import (
    EXIT_ERROR, EXIT_FAILED, EXIT_OK, FileOption, OutputOption, StateDirOption, check_output, emit_json, fail,
    load_or_exit, open_store, state_for,
)
from fleet.controller.plan_report import plan_report
from fleet.controller.preview import preview
from fleet.execute.environment import PASSTHROUGH_ENV, PASSTHROUGH_PREFIXES
from fleet.platform import current_platform
from fleet.spec.codec import profile_to_dict
from fleet.spec.errors import ManifestError
from fleet.spec.load import Manifest, load_manifest
from fleet.spec.markers import CONTRACT_ENV
from fleet.spec.secrets import mask_argv, mask_env


def validate(
    file: Path | None = typer.Option(None, "-f", "--file", help="The manifest (default: ./fleet.yaml)."),
    files: list[Path] | None = typer.Argument(
        None, help="More manifests to check, each on its own (as a pre-commit hook passes them)."),
    output: str = OutputOption,
) -> None:
    """Check manifests against the schema and the rules; exit 0 valid, 2 invalid.

    Every problem is reported at once, each with file:line:column, the path
    (profiles.advisor.restart.policy), what was expected and what was found.
    Several files (`-f` and FILES) are each checked and reported; exit 2 when any is invalid.
    """
    check_output(output)
    paths = [*([file] if file else []), *(files or [])] or [Path("fleet.yaml")]
    if len(paths) == 1:
        manifest = load_or_exit(paths[0], output)
        if output == "json":
            emit_json(_valid_json(paths[0], manifest))
        else:
            typer.echo(_valid_text(paths[0], manifest))
        return
    docs = []
    for path in paths:
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            docs.append({"file": str(path), "valid": False, "errors": [p.as_json() for p in exc.problems]})
            if output == "text":
                for problem in exc.problems:
                    typer.echo(problem.render(), err=True)
                typer.echo(f"{len(exc.problems)} problem(s) in {path}", err=True)
            continue
        docs.append({"file": str(path), "valid": True, "profiles": list(manifest.spec.names),
                     "digest": manifest.digest})
        if output == "text":
            typer.echo(_valid_text(path, manifest))
    valid = all(d["valid"] for d in docs)
    if output == "json":
        emit_json({"format_version": "1.0", "kind": "validations", "valid": valid, "files": docs})
    if not valid:
        raise typer.Exit(EXIT_ERROR)


def _valid_json(path: Path, manifest: Manifest) -> dict:
    return {"format_version": "1.0", "kind": "validation", "valid": True, "file": str(path),
            "profiles": list(manifest.spec.names), "digest": manifest.digest}


def _valid_text(path: Path, manifest: Manifest) -> str:
    return f"{path}: valid ({len(manifest.spec.profiles)} profiles: {', '.join(manifest.spec.names) or 'none'})"


def diff(
    file: Path = FileOption,
    output: str = OutputOption,
    profile: str | None = typer.Option(None, "--profile", help="Show only this profile."),
    state_dir: str | None = StateDirOption,
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Plan drains of profiles removed from the manifest."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Plan as `apply --allow-empty` does: a manifest "
                                     "with no profiles drains a running fleet."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also list unchanged profiles."),
    exit_code: bool = typer.Option(True, "--exit-code/--no-exit-code", help="Exit 1 when changes are pending."),
    out: Path | None = typer.Option(None, "--out", metavar="PLAN",
                                    help="Also save the whole plan (every profile) to PLAN, mode 0600, for "
                                         "`apply PLAN`; it names no secret value."),
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
        typer.echo(render_text(report, verbose=verbose))
    if report.refusal:
        raise typer.Exit(EXIT_ERROR if exit_code else EXIT_OK)
    raise typer.Exit(EXIT_FAILED if report.changes and exit_code else EXIT_OK)


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
    typer.echo(f"Saved the plan to {out}{note}. To carry out exactly this plan: hermes-fleet apply {out}", err=True)


def _masked(d: dict, show_secrets: bool) -> dict:
    if show_secrets:
        return {**d, "env": dict(d["env"])}
    masked = {**d, "env": mask_env(d["env"]), "command": mask_argv(d["command"])}
    if d.get("maintenance", {}).get("update_command"):
        masked["maintenance"] = {**d["maintenance"], "update_command": mask_argv(d["maintenance"]["update_command"])}
    return masked


def config(
    file: Path = FileOption,
    hash_profile: str | None = typer.Option(None, "--hash", help="Print only this profile's spec_hash."),
    output: str = typer.Option("yaml", "-o", "--output", help="yaml or json."),
    show_secrets: bool = typer.Option(False, "--show-secrets", help="Print secret-looking env values in clear."),
    state_dir: str | None = StateDirOption,
) -> None:
    """Print the effective spec: every default applied, every path resolved.

    `--hash PROFILE` prints the spec hash that decides whether a running gateway must be
    replaced (like `docker compose config --hash`).
    """
    check_output(output, ("yaml", "json"))
    manifest = load_or_exit(file)
    spec = manifest.spec
    if hash_profile:
        p = spec.profile(hash_profile)
        if p is None:
            fail(f"no profile named {hash_profile!r} in {file}", hint="profiles: " + ", ".join(spec.names))
        typer.echo(f"{p.name} {p.spec_hash}")
        return
    doc: dict[str, Any] = {
        "name": spec.name, "stagger_s": spec.stagger, "hermes_root": spec.hermes_root,
        "state_dir": str(state_for(state_dir, file, manifest).root), "max_concurrent_maintenance": spec.max_concurrent_maintenance,
        "digest": manifest.digest,
        # Besides each profile's env: the only host variables a gateway inherits, and the fleet's own.
        "gateway_environment": {"passed_through": [*PASSTHROUGH_ENV, *(f"{p}*" for p in PASSTHROUGH_PREFIXES)],
                                "set_by_fleet": list(CONTRACT_ENV)},
        "profiles": {p.name: {**_masked(profile_to_dict(p), show_secrets), "spec_hash": p.spec_hash}
                     for p in spec.profiles},
    }
    for body in doc["profiles"].values():
        body.pop("name", None)
    if output == "json":
        emit_json(doc)
    else:
        typer.echo(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).rstrip())
