"""hermes-fleet: declarative supervision for a fleet of Hermes gateways on one host."""

from __future__ import annotations

import typer

from fleet import __version__
from fleet.cli import apply_cmd, maintenance_cmd, ops_cmds, plan_cmds

app = typer.Typer(
    name="hermes-fleet",
    help="Keep a fleet of Hermes gateways converged to fleet.yaml: diff, apply, and a controller that "
         "respawns crashes, kills hangs, adopts after its own restarts and never duplicates a gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hermes-fleet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


app.command("validate")(plan_cmds.validate)
app.command("diff")(plan_cmds.diff)
app.command("config")(plan_cmds.config)
app.command("apply")(apply_cmd.apply)
app.command("status")(ops_cmds.status)
app.command("restart")(ops_cmds.restart)
app.command("stop")(ops_cmds.stop)
app.command("start")(ops_cmds.start)
app.command("down")(ops_cmds.down)
app.command("logs")(ops_cmds.logs)
app.command("events")(ops_cmds.events)
app.command("history")(ops_cmds.history)
app.add_typer(ops_cmds.controller_app, name="controller")
app.add_typer(maintenance_cmd.maintenance_app, name="maintenance")

try:  # optional command groups, each in its own module
    from fleet.cli.export_cmd import export_command
    app.command("export")(export_command)
except ImportError:
    pass
try:
    from fleet.cli.service_cmd import service_app
    app.add_typer(service_app, name="service")
except ImportError:
    pass

def main() -> None:
    """The console script: the app, with the failures no command can fix reported as one line
    (a full disk, a store another tool damaged) instead of a traceback."""
    import sqlite3
    import sys

    from fleet.store.db import StoreError
    from fleet.store.files import UnsafeFile
    from fleet.store.layout import StateDirError

    try:
        app(standalone_mode=True)
    except (sqlite3.Error, StoreError, StateDirError, UnsafeFile) as exc:
        hint = " (is the disk full?)" if "full" in str(exc).lower() or "i/o" in str(exc).lower() else ""
        print(f"error: the state store failed: {exc}{hint}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
