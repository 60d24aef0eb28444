"""hermes-fleet: declarative supervision for a fleet of Hermes gateways on one host."""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import sys

from fleet import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: `--version` is answered before any import
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

HELP = ("Keep a fleet of Hermes gateways converged to fleet.yaml: diff, apply, and a controller that "
        "respawns crashes, kills hangs, adopts after its own restarts and never duplicates a gateway.")

# Every command and command group, in the order `--help` lists them: (name, module, attribute). A run imports
# only the module of the command it runs (a `status` loads no service, export or Windows code); `--help`,
# completion and an unknown command load them all.
COMMANDS = (
    ("init", "fleet.cli.init_cmd", "init"), ("validate", "fleet.cli.plan_cmds", "validate"),
    ("diff", "fleet.cli.diff_cmd", "diff"), ("config", "fleet.cli.plan_cmds", "config"),
    ("apply", "fleet.cli.apply_cmd", "apply"), ("rollback", "fleet.cli.rollback_cmd", "rollback"),
    ("status", "fleet.cli.status_cmd", "status"), ("restart", "fleet.cli.profile_cmds", "restart"),
    ("stop", "fleet.cli.profile_cmds", "stop"), ("start", "fleet.cli.profile_cmds", "start"),
    ("down", "fleet.cli.profile_cmds", "down"), ("takeover", "fleet.cli.takeover_cmd", "takeover"),
    ("release", "fleet.cli.takeover_cmd", "release"), ("logs", "fleet.cli.read_cmds", "logs"),
    ("events", "fleet.cli.read_cmds", "events"), ("history", "fleet.cli.read_cmds", "history"),
    ("sync", "fleet.cli.source_cmd", "sync"), ("schema", "fleet.cli.schema_cmd", "schema"),
    ("source", "fleet.cli.source_cmd", "source_app"), ("controller", "fleet.cli.controller_cmds", "controller_app"),
    ("maintenance", "fleet.cli.maintenance_cmd", "maintenance_app"), ("export", "fleet.cli.export_cmd", "export_command"),
    ("service", "fleet.cli.service_cmd", "service_app"),
)
# Exit-code tables too long for a docstring line, printed after the options as git's help does.
EPILOGS = {"apply": "fleet.cli.apply_cmd", "init": "fleet.cli.init_cmd"}
COMPLETION_ENV = "_HERMES_FLEET_COMPLETE"


def build_app(names: frozenset[str] | None = None):
    """The typer app with the commands in `names` (None: every command)."""
    import typer

    from fleet.cli.options import typer_target

    app = typer.Typer(name="hermes-fleet", help=HELP, no_args_is_help=True, rich_markup_mode=None,
                      pretty_exceptions_enable=False)

    def _version(value: bool) -> None:
        if value:
            typer.echo(f"hermes-fleet {__version__}")
            raise typer.Exit()

    @app.callback()
    def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit.")) -> None:
        pass

    for name, module, attribute in COMMANDS:
        if names is not None and name not in names:
            continue
        target = typer_target(getattr(importlib.import_module(module), attribute))
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name)
        else:
            epilog = importlib.import_module(EPILOGS[name]).EXIT_CODES if name in EPILOGS else None
            app.command(name, epilog=epilog)(target)
    return app


def __getattr__(name: str):
    if name == "app":  # the whole app, for tests and tools that drive it in process
        return build_app()
    raise AttributeError(name)


def wanted_commands(argv: list[str]) -> frozenset[str] | None:
    """The one command `argv` runs, or None when it needs them all (help, completion, a mistyped name)."""
    if COMPLETION_ENV in os.environ:
        return None
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    known = {name for name, _, _ in COMMANDS}
    return frozenset({first}) if first in known else None


def command(argv: list[str] | None = None):
    """The click command tree for `argv` (every command when None), with plain help and profile-name
    completion."""
    from typer.main import get_command

    from fleet.cli.plainhelp import plain

    root = get_command(build_app(None if argv is None else wanted_commands(argv)))
    plain(root)
    return root


def declared_call(argv: list[str]) -> tuple[Callable[..., None], dict[str, Any]] | None:
    """The function and arguments of a declared command (`fleet.cli.declared`) on a plain command line, found
    without importing typer; None when typer has to read the line (help, completion, any other command)."""
    if COMPLETION_ENV in os.environ or not argv:
        return None
    found = next(((module, attribute) for name, module, attribute in COMMANDS if name == argv[0]), None)
    if found is None:
        return None
    from fleet.cli.declared import Group, declaration, parse

    function, rest = getattr(importlib.import_module(found[0]), found[1]), argv[1:]
    if isinstance(function, Group):
        function, rest = (function.command(rest[0]) if rest else None), rest[1:]
    params = declaration(function)
    if function is None or params is None:
        return None
    values = parse(params, function, rest)
    return None if values is None else (function, values)


def run(argv: list[str]) -> int:
    """Run the command line and return its exit code; a usage error is one `error:` line and exit 2."""
    call = declared_call(argv)
    if call is not None:
        function, values = call
        try:
            function(**values)
        except (EOFError, KeyboardInterrupt):
            print("\nerror: aborted", file=sys.stderr)
            return 1
        return 0
    import typer
    from typer._click import exceptions as exc_types  # typer carries its own click from 0.26 on

    root = command(argv)
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
    return code if isinstance(code, int) else 0


def main(argv: list[str] | None = None) -> None:
    """The console script: the command line run, with a usage error or a failure no command can fix (a full
    disk, a store another tool damaged) reported as one `error:` line instead of a panel or a traceback.
    A command ends by raising `fleet.cli.console.Exit`, which ends the process with its code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:  # answered before anything is imported
        print(f"hermes-fleet {__version__}")
        sys.exit(0)
    # A command allocates a burst of objects it keeps (the modules, a manifest's nodes and specs) and makes
    # few cycles; the default threshold scanned that burst again and again: a quarter of a `diff` on
    # 10,000 profiles. Cycles are still collected, every 100,000 allocations (`status --watch` runs for hours).
    gc.set_threshold(100_000, 50, 100)
    from fleet.dataclass_code import use_cached_dataclass_code

    # A table per command: each loads only the code its own classes use.
    wanted = wanted_commands(args)
    use_cached_dataclass_code("cli-" + next(iter(wanted)) if wanted else "cli")
    from fleet.cli import early_controller

    if args and args[0] == "apply":
        early_controller.start_for(args[1:])  # first: the controller's imports are the longer half of the race
    import sqlite3

    from fleet.store.db import StoreError
    from fleet.store.files import UnsafeFile
    from fleet.store.layout import StateDirError

    try:
        code = run(args)
    except (sqlite3.Error, StoreError, StateDirError, UnsafeFile) as exc:
        hint = " (is the disk full?)" if "full" in str(exc).lower() or "i/o" in str(exc).lower() else ""
        print(f"error: the state store failed: {exc}{hint}", file=sys.stderr)
        code = 2
    finally:
        early_controller.dismiss()
    sys.exit(code)


def console() -> None:
    """The console script and `python -m fleet`: `main`, then the process ends without the interpreter's
    teardown of its modules, a sixth of a `status` (about 11 ms of 65) and every command's last step.
    What the teardown would have done that matters is done first: the exit handlers run (the dataclass table,
    logging) and the standard streams are flushed; every file the commands write is closed where written.
    A command that left a thread running, a stream that cannot be flushed (a closed pipe) or an exit that is
    not a number end the usual way instead, with the interpreter's own handling."""
    try:
        main()
    except SystemExit as done:
        code = 0 if done.code is None else done.code
        if type(code) is not int or not _alone():
            raise
        atexit._run_exitfuncs()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            raise done from None
        os._exit(code)


def _alone() -> bool:
    """No other thread is left that the interpreter would wait for."""
    threading = sys.modules.get("threading")
    return threading is None or all(t.daemon for t in threading.enumerate() if t is not threading.main_thread())


if __name__ == "__main__":
    console()
