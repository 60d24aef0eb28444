"""Commands declared without the CLI framework, so the console script can run them before typer is imported.

A declared command is a plain function (its defaults are plain values) marked by `declare` with the `Opt`s
and the `Arg` that say how the command line spells each parameter and what `--help` says about it. typer
builds its command from the same declaration (`fleet.cli.options.typer_target`), so there is one place to
add an option. `parse` reads the plain command lines a person types; anything else (`--help`, a spelling it
does not know, `--`, a missing value) is left to typer, which explains the mistake as it does for every
other command."""

from __future__ import annotations

import inspect
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar


@dataclass(frozen=True)
class Opt:
    """An option: the parameter it sets, its spellings, and its help. A bool parameter is a flag, which
    `negative` spellings (`--no-prune`) turn off."""
    name: str
    spellings: tuple[str, ...]
    help: str
    negative: tuple[str, ...] = ()
    envvar: str | None = None
    metavar: str | None = None


@dataclass(frozen=True)
class Arg:
    """The positional argument: one optional value, or every word left when the parameter is a list."""
    name: str
    help: str
    metavar: str | None = None
    show_default: bool = True
    required: bool = False


Param = Opt | Arg
Command = TypeVar("Command", bound=Callable[..., None])


def declare(*params: Param) -> Callable[[Command], Command]:
    """Mark a plain function as a declared command with these parameters, in its signature's order."""
    def mark(function: Command) -> Command:
        function.declared_params = params  # type: ignore[attr-defined]
        return function
    return mark


@dataclass(frozen=True)
class Group:
    """A command group of declared commands (`controller run|stop`): its help and its commands by name."""
    help: str
    commands: tuple[tuple[str, Callable[..., None]], ...]

    def command(self, name: str) -> Callable[..., None] | None:
        return dict(self.commands).get(name)


def declaration(function: object) -> tuple[Param, ...] | None:
    """The parameters `declare` gave `function`; None for a typer command."""
    return getattr(function, "declared_params", None)


# A declared command may take the names of the parameters its command line gave (a saved plan refuses the
# options it decided already); this parameter is filled by whoever parsed the line, never by the user.
GIVEN = "given"


def parameter_types(function: Any) -> dict[str, type]:
    """Each parameter's type, Optional and list unwrapped to what one word of the command line becomes."""
    kinds: dict[str, type] = {}
    for name, hint in typing.get_type_hints(function).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) is list or (args and typing.get_origin(args[0]) is list):
            kinds[name] = list
        else:
            kinds[name] = args[0] if args else hint
    return kinds


def parse(params: tuple[Param, ...], function: Any, argv: list[str]) -> dict[str, Any] | None:
    """The keyword arguments `argv` (the words after the command's name) gives `function`, or None for a
    line this does not read (help, an unknown spelling, `--`, `--opt=value`, a missing value): typer reads it.
    As click does, the last of a repeated option wins, options may follow the argument, and an option with an
    environment variable takes its value from there when the line does not give it."""
    kinds = parameter_types(function)
    spelled: dict[str, tuple[str, object]] = {}
    argument: Arg | None = None
    for param in params:
        if isinstance(param, Arg):
            argument = param
            continue
        flag = kinds[param.name] is bool
        for spelling in param.spellings:
            spelled[spelling] = (param.name, True if flag else kinds[param.name])
        for spelling in param.negative:
            spelled[spelling] = (param.name, False)
    values: dict[str, Any] = {}
    words: list[str] = []
    rest = list(argv)
    while rest:
        word = rest.pop(0)
        if word.startswith("-") and word != "-":
            if word not in spelled:
                return None
            name, meaning = spelled[word]
            if isinstance(meaning, bool):
                values[name] = meaning
            elif not rest:
                return None
            else:
                values[name] = _convert(meaning, rest.pop(0))
        else:
            words.append(word)
    if not words and argument is not None and argument.required:
        return None
    if words:
        if argument is None:
            return None
        if kinds[argument.name] is list:
            values[argument.name] = list(words)
        elif len(words) == 1:
            values[argument.name] = _convert(kinds[argument.name], words[0])
        else:
            return None
    for param in params:
        if isinstance(param, Opt) and param.envvar and param.name not in values and os.environ.get(param.envvar):
            values[param.name] = _convert(kinds[param.name], os.environ[param.envvar])
    if GIVEN in inspect.signature(function).parameters:
        values[GIVEN] = frozenset(values)
    return values


def _convert(kind: object, word: str) -> object:
    return Path(word) if kind is Path else word
