"""validate, diff, config: read-only commands about a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from fleet.spec.pyyaml import yaml

from fleet.cli.common import (
    EXIT_ERROR, check_output, emit_json, fail, load_or_exit, state_for,
)
from fleet.cli.console import Exit, echo
from fleet.cli.options import FileOption, OutputOption, StateDirOption
from fleet.execute.environment import PASSTHROUGH_ENV, PASSTHROUGH_PREFIXES
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
            echo(_valid_text(paths[0], manifest))
        return
    docs = []
    for path in paths:
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            docs.append({"file": str(path), "valid": False, "errors": [p.as_json() for p in exc.problems]})
            if output == "text":
                for problem in exc.problems:
                    echo(problem.render(), err=True)
                echo(f"{len(exc.problems)} problem(s) in {path}", err=True)
            continue
        docs.append({"file": str(path), "valid": True, "profiles": list(manifest.spec.names),
                     "digest": manifest.digest})
        if output == "text":
            echo(_valid_text(path, manifest))
    valid = all(d["valid"] for d in docs)
    if output == "json":
        emit_json({"format_version": "1.0", "kind": "validations", "valid": valid, "files": docs})
    if not valid:
        raise Exit(EXIT_ERROR)


def _valid_json(path: Path, manifest: Manifest) -> dict:
    return {"format_version": "1.0", "kind": "validation", "valid": True, "file": str(path),
            "profiles": list(manifest.spec.names), "digest": manifest.digest}


def _valid_text(path: Path, manifest: Manifest) -> str:
    return f"{path}: valid ({len(manifest.spec.profiles)} profiles: {', '.join(manifest.spec.names) or 'none'})"


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
        echo(f"{p.name} {p.spec_hash}")
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
        echo(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).rstrip())
