"""Shared CLI plumbing: where the state lives, how manifests are loaded, how errors look."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from fleet.cli.console import Exit, echo
from fleet.cli.declared import Opt
from fleet.cli.json_text import indented_json
from fleet.spec.durations import parse_duration
from fleet.spec.errors import ManifestError
from fleet.spec.markers import STATE_DIR_ENV
from fleet.store.db import Store, StoreError
from fleet.store.layout import StateDir, StateDirError, check_state_dir, ensure_state_dir, resolve_state_dir

if TYPE_CHECKING:
    from fleet.spec.load import Manifest

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_REFUSED, EXIT_QUEUED = 0, 1, 2, 3, 4

# The options most commands share, declared once for typer (fleet.cli.options) and the fast path alike.
FILE = Opt("file", ("-f", "--file"), "The manifest (default: ./fleet.yaml).")
STATE_DIR = Opt("state_dir", ("--state-dir",), "State directory (default: <hermes home>/gateway of the manifest, "
                "else ~/.hermes/gateway).", envvar=STATE_DIR_ENV)
OUTPUT = Opt("output", ("-o", "--output"), "text or json.")


def fail(message: str, code: int = EXIT_ERROR, hint: str = "") -> NoReturn:
    echo(f"error: {message}", err=True)
    if hint:
        echo(f"hint: {hint}", err=True)
    raise Exit(code)


def emit_json(value: object) -> None:
    echo(indented_json(value))


def utc(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def timeout_option(value: str, option: str = "--timeout") -> float:
    """Seconds of a duration option, or the one-line usage error saying what is accepted."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        fail(f"{option}: {exc}")


def check_output(output: str, allowed=("text", "json")) -> None:
    if output not in allowed:
        fail(f"--output must be one of {', '.join(allowed)}; got {output!r}")


def load_or_exit(path: Path, output: str = "text") -> Manifest:
    from fleet.spec.load import load_manifest  # YAML and the schema: only for the commands that read a manifest

    try:
        return load_manifest(path)
    except ManifestError as exc:
        if output == "json":
            emit_json({"format_version": "1.0", "kind": "errors", "valid": False,
                       "errors": [p.as_json() for p in exc.problems]})
        else:
            for problem in exc.problems:
                echo(problem.render(), err=True)
            echo(f"{len(exc.problems)} problem(s) in {path}", err=True)
        raise Exit(EXIT_ERROR) from None


def state_for(state_dir: str | None, file: Path | None, manifest: Manifest | None = None) -> StateDir:
    """--state-dir / $HERMES_FLEET_STATE_DIR, else the manifest's <hermes home>/gateway when one is at hand."""
    default = None
    if manifest is not None:
        default = manifest.spec.default_state_dir
    elif not state_dir and not os.environ.get(STATE_DIR_ENV) and file is not None and file.is_file():
        from fleet.spec.load import load_manifest

        try:
            default = load_manifest(file).spec.default_state_dir
        except ManifestError:
            default = None
    state = resolve_state_dir(state_dir, default)
    try:
        check_state_dir(state)
    except StateDirError as exc:
        fail(str(exc))
    return state


def open_store(state: StateDir, *, write: bool) -> Store:
    try:
        if write:
            ensure_state_dir(state)
        return Store(state.db, readonly=not write)
    except (StateDirError, StoreError) as exc:
        fail(str(exc))
    except PermissionError as exc:
        fail(f"cannot open {state.db}: {exc.strerror}")
    raise AssertionError("unreachable")


def fleet_state(state_dir: str | None, file: Path) -> StateDir:
    """The state directory, refusing one where no fleet was ever applied."""
    state = state_for(state_dir, file)
    if not state.db.exists():
        fail(f"no fleet state in {state.root}", hint="run `hermes-fleet apply -f fleet.yaml` first, or pass --state-dir")
    return state


def file_stamp(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(inode, mtime in ns, size) of a file, None while it is missing: what tells a change without reading."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def columns(table: Sequence[tuple[str, ...]], right: Collection[int] = frozenset()) -> list[str]:
    """Rows of a table, each column as wide as its widest cell, two spaces apart; the last one unpadded."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    out = []
    for row in table:
        # widths stops short of the last column, which is never padded
        cells = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=False))]
        out.append("  ".join(cells + [row[-1]]).rstrip())
    return out
