"""typer's side of the declared commands: the options shared by the typer-only commands, and the typer command
built from a declared one (`fleet.cli.declared`)."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import typer

from fleet.cli.common import FILE, OUTPUT, STATE_DIR
from fleet.cli.declared import GIVEN, Arg, Group, Param, declaration


def typer_param(param: Param, default: object) -> Any:
    """The typer.Option or typer.Argument that `param` declares, with the function's default."""
    if isinstance(param, Arg):
        return typer.Argument(... if param.required else default, help=param.help, metavar=param.metavar,
                              show_default=param.show_default)
    spellings = param.spellings
    if param.negative:
        spellings = ("/".join((param.spellings[0], param.negative[0])), *param.spellings[1:])
    return typer.Option(default, *spellings, help=param.help, envvar=param.envvar, metavar=param.metavar)


FileOption = typer_param(FILE, Path("fleet.yaml"))
StateDirOption = typer_param(STATE_DIR, None)
OutputOption = typer_param(OUTPUT, "text")
# logs and events spell follow -f, as tail, kubectl logs and pm2 logs do; the manifest is --file there.
FileLongOption = typer.Option(Path("fleet.yaml"), "--file", help="The manifest (default: ./fleet.yaml); -f is --follow here.")


def typer_command(params: tuple[Param, ...], function: Any) -> Any:
    """`function` with the signature typer reads: each parameter's default replaced by its declaration, and
    `given` (the parameters the command line or the environment set) taken from click's context."""
    declared = {param.name: param for param in params}
    signature = inspect.signature(function)
    wants_given = GIVEN in signature.parameters

    @functools.wraps(function)
    def command(ctx: typer.Context, **values: Any) -> Any:
        if wants_given:
            sources = {name: ctx.get_parameter_source(name) for name in declared}
            values[GIVEN] = frozenset(n for n, s in sources.items() if s is not None and s.name in _SET_BY_USER)
        return function(**values)

    parameters = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    parameters += [p.replace(default=typer_param(declared[p.name], p.default))
                   for p in signature.parameters.values() if p.name != GIVEN]
    command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {**function.__annotations__, "ctx": typer.Context}
    command.__annotations__.pop(GIVEN, None)
    return command


_SET_BY_USER = ("COMMANDLINE", "ENVIRONMENT")


def typer_target(target: Any) -> Any:
    """What typer registers for a command module's attribute: a declared command or group built for typer,
    a typer command or app as it is."""
    if isinstance(target, Group):
        group = typer.Typer(help=target.help, no_args_is_help=True)
        for name, function in target.commands:
            group.command(name)(typer_target(function))
        return group
    params = declaration(target)
    return target if params is None else typer_command(params, target)
