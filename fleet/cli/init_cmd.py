"""`hermes-fleet init`: write fleet.yaml from what a host that already runs Hermes holds."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from fleet.cli.console import Exit, echo
from fleet.cli.common import (
    EXIT_ERROR, EXIT_OK, EXIT_REFUSED, check_output, emit_json, fail,
)
from fleet.cli.options import OutputOption

if TYPE_CHECKING:
    from fleet.observe.discovery import Host

EXIT_CODES = """\b
Exit codes:
  0  written (--dry-run: printed, nothing written)
  2  error: the root is not a directory, the file cannot be written
  3  refused: FILE exists (--force overwrites it)"""


def _current_host(root: str | None) -> Host:
    from fleet.observe.discovery import Host
    return Host.current(root)


# The seam tests replace: the host discovery reads (its environment, processes, units, systemd).
make_host: Callable[[str | None], Host] = _current_host


def init(
    file: Path = typer.Option(Path("fleet.yaml"), "-f", "--file", help="Where to write the manifest "
                              "(default: ./fleet.yaml)."),
    force: bool = typer.Option(False, "--force", help="Overwrite FILE if it exists."),
    hermes_home: str | None = typer.Option(None, "--hermes-home", metavar="DIR",
                                           help="The Hermes root to describe (default: $HERMES_HOME, else "
                                                "~/.hermes)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the manifest instead of writing it."),
    output: str = OutputOption,
) -> None:
    """Write fleet.yaml from the Hermes already on this host.

    It reads the Hermes root ($HERMES_HOME, else ~/.hermes), the default profile and
    profiles/*, and finds which of them have a live gateway (gateway.lock held and
    gateway.pid agreeing) and who runs each: a native unit Hermes installed (mapped to its
    home by the HERMES_HOME and --profile it sets, never by its name), a multiplexing
    default gateway, or a start by hand. Each profile's entry carries a comment saying
    where it came from and what `apply` will do to it:

    \b
      adopt      a gateway started by hand keeps running; the fleet records it
      take over  a native unit owns it: `hermes-fleet takeover P` hands it over,
                 `hermes-fleet release P` gives it back
      spawn      nothing runs it: apply starts it

    Tokens and proxies stay where they are: only their key names are reported, never a
    value. The sticky `active_profile` and a native unit of another Hermes root (which a
    fleet here would rewrite) are warned about at the top of the file.

    The manifest is validated before it is written, written atomically, and an existing
    file is never replaced without --force. `-o json` prints the discovery itself.
    Then: `hermes-fleet diff -f fleet.yaml`, and `hermes-fleet apply -f fleet.yaml`.
    """
    check_output(output)
    if not dry_run and not force and file.exists():
        _refuse(f"{file} exists; pass --force to overwrite it, or -f another file", output)
    from fleet.cli.init_render import discovery_json, manifest_text, summary_lines
    from fleet.observe.discovery import discover

    host = make_host(hermes_home)
    discovery = discover(host)
    if os.path.exists(discovery.root) and not os.path.isdir(discovery.root):
        fail(f"the Hermes root {discovery.root} is not a directory")
    text = manifest_text(discovery, time.time())
    _validate(text, file)
    written = False
    if not dry_run:
        try:
            _write(file, text, force=force)
        except FileExistsError:
            _refuse(f"{file} exists; pass --force to overwrite it, or -f another file", output)
        except OSError as exc:
            fail(f"cannot write {file}: {exc.strerror or exc}")
        written = True
    if output == "json":
        emit_json(discovery_json(discovery, path=str(file), written=written, text=text))
    elif dry_run:
        echo(text, nl=False)
        for line in summary_lines(discovery, str(file), written=False):
            echo(line, err=True)
    else:
        echo("\n".join(summary_lines(discovery, str(file), written=True)))
    raise Exit(EXIT_OK)


def _refuse(message: str, output: str) -> NoReturn:
    if output == "json":
        emit_json({"format_version": "1.0", "kind": "init", "result": "refused", "message": message})
    else:
        echo(f"Refused: {message}", err=True)
    raise Exit(EXIT_REFUSED)


def _validate(text: str, file: Path) -> None:
    """The manifest as `apply` will read it; one that fails is init's bug, and is not written."""
    from fleet.spec.errors import ManifestError
    from fleet.spec.load import parse_manifest

    try:
        parse_manifest(text, str(file), base_dir=str(file.resolve().parent))
    except ManifestError as exc:
        for problem in exc.problems:
            echo(problem.render(), err=True)
        fail("the manifest init wrote is not valid (a bug in hermes-fleet init); nothing was written", EXIT_ERROR)


def _write(path: Path, text: str, *, force: bool) -> None:
    """Atomically: a temporary file beside `path`, synced, then renamed over it (--force) or linked to its name,
    which fails if a file took that name meanwhile."""
    import tempfile

    folder = str(path.resolve().parent)
    fd, tmp = tempfile.mkstemp(prefix=".fleet-init-", suffix=".yaml", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        if force:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:  # no hard links here: create the name exclusively instead
            with open(path, "x", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
