"""hermes-fleet: declarative supervision for a fleet of Hermes gateways on one host."""

from __future__ import annotations

import typer

from fleet import __version__
from fleet.cli import (
    apply_cmd, controller_cmds, export_cmd, init_cmd, maintenance_cmd, plan_cmds, profile_cmds, read_cmds,
    rollback_cmd, schema_cmd, service_cmd, source_cmd, status_cmd, takeover_cmd,
)

app = typer.Typer(
    name="hermes-fleet",
    help="Keep a fleet of Hermes gateways converged to fleet.yaml: diff, apply, and a controller that "
         "respawns crashes, kills hangs, adopts after its own restarts and never duplicates a gateway.",
    no_args_is_help=True,
    rich_markup_mode=None,
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


# In the order `--help` lists them.
COMMANDS = (init_cmd.init, plan_cmds.validate, plan_cmds.diff, plan_cmds.config, apply_cmd.apply,
            rollback_cmd.rollback, status_cmd.status, profile_cmds.restart, profile_cmds.stop, profile_cmds.start,
            profile_cmds.down, takeover_cmd.takeover, takeover_cmd.release,
            read_cmds.logs, read_cmds.events, read_cmds.history, source_cmd.sync, schema_cmd.schema)
# Exit-code tables too long for a docstring line, printed after the options as git's help does.
EPILOGS = {"apply": apply_cmd.EXIT_CODES, "init": init_cmd.EXIT_CODES}
for function in COMMANDS:
    app.command(function.__name__, epilog=EPILOGS.get(function.__name__))(function)
app.add_typer(source_cmd.source_app, name="source")
app.add_typer(controller_cmds.controller_app, name="controller")
app.add_typer(maintenance_cmd.maintenance_app, name="maintenance")

app.command("export")(export_cmd.export_command)
app.add_typer(service_cmd.service_app, name="service")


def command():
    """The click command tree of `app`, with plain help and profile-name completion."""
    from typer.main import get_command

    from fleet.cli.plainhelp import plain

    root = get_command(app)
    plain(root)
    return root


def main(argv: list[str] | None = None) -> None:
    """The console script: the app, with a usage error or a failure no command can fix (a full
    disk, a store another tool damaged) reported as one `error:` line instead of a panel or a
    traceback."""
    import sqlite3
    import sys

    from fleet.store.db import StoreError
    from fleet.store.files import UnsafeFile
    from fleet.store.layout import StateDirError

    from typer._click import exceptions as exc_types  # typer carries its own click from 0.26 on

    root = command()
    try:
        code = root.main(args=argv, prog_name="hermes-fleet", standalone_mode=False)
    except exc_types.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help())
        code = 0
    except exc_types.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        print(f"error: {' '.join(exc.format_message().split())}{where}", file=sys.stderr)
        code = exc.exit_code
    except exc_types.ClickException as exc:
        print(f"error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        code = exc.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        code = 1
    except (sqlite3.Error, StoreError, StateDirError, UnsafeFile) as exc:
        hint = " (is the disk full?)" if "full" in str(exc).lower() or "i/o" in str(exc).lower() else ""
        print(f"error: the state store failed: {exc}{hint}", file=sys.stderr)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
