"""Plain help and profile-name completion for the click tree typer builds.

typer's own help is a rich panel with a type after every option, and its rendering changes from
one typer minor to the next; this renders help the way git and kubectl do from the parameters
click already holds, so the output is the same for every typer release pyproject.toml allows."""

from __future__ import annotations

import enum
import types
from pathlib import Path

# Parameters with these names take profile names: completion offers those of the manifest.
PROFILE_PARAMS = frozenset({"profile", "profiles", "hash_profile"})


def plain(command) -> None:
    """Give `command` and every command below it plain help and profile-name completion."""
    # bound on the instance: typer's classes differ between releases, click's calling convention does not
    command.format_help = types.MethodType(_format_help, command)
    for param in command.params:
        if param.name in PROFILE_PARAMS:
            param._custom_shell_complete = complete_profiles
    for sub in getattr(command, "commands", {}).values():
        plain(sub)


def _format_help(self, ctx, formatter) -> None:
    formatter.write_usage(ctx.command_path, " ".join(_usage_pieces(self, ctx)))
    self.format_help_text(ctx, formatter)
    params = [p for p in self.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [(_argument_name(p), _param_help(p, ctx)) for p in params if p.param_type_name == "argument"]
    if any(text for _, text in arguments):
        with formatter.section("Arguments"):
            formatter.write_dl(arguments)
    options = [_option_row(p, ctx) for p in params if p.param_type_name == "option"]
    if options:
        with formatter.section("Options"):
            formatter.write_dl(options)
    commands = getattr(self, "commands", None)
    if commands:
        visible = [(name, cmd) for name, cmd in commands.items() if not getattr(cmd, "hidden", False)]
        limit = formatter.width - 6 - max(len(name) for name, _ in visible)
        with formatter.section("Commands"):
            formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in visible])
    self.format_epilog(ctx, formatter)


def _usage_pieces(command, ctx) -> list[str]:
    params = command.get_params(ctx)
    pieces = ["[OPTIONS]"] if any(p.param_type_name == "option" for p in params) else []
    for p in params:
        if p.param_type_name != "argument":
            continue
        name = _argument_name(p) + ("..." if p.nargs == -1 else "")
        pieces.append(name if p.required else f"[{name}]")
    if getattr(command, "commands", None):
        pieces.append("COMMAND [ARGS]...")
    return pieces


def _argument_name(param) -> str:
    return param.metavar or param.name.upper()


def _option_row(param, ctx) -> tuple[str, str]:
    def spell(opts) -> str:
        short = [o for o in opts if not o.startswith("--")]
        long = [o for o in opts if o.startswith("--")]
        return ", ".join(short + long) if short else "    " + ", ".join(long)

    names = spell(param.opts)
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    if not getattr(param, "is_flag", False) and not getattr(param, "count", False):
        names += " " + _metavar(param) + ("..." if getattr(param, "multiple", False) else "")
    return names, _param_help(param, ctx)


def _metavar(param) -> str:
    if param.metavar:
        return param.metavar
    choices = _choices(param)
    if choices:
        return "|".join(choices)
    long = next((o for o in param.opts if o.startswith("--")), param.opts[0])
    return long.lstrip("-").replace("-", "_").upper()


def _choices(param) -> list[str]:
    descriptor = getattr(param, "type_descriptor", None)  # typer >= 0.29 keeps choices here
    choices = getattr(descriptor, "choices", None) if getattr(descriptor, "is_choice", False) else None
    if choices is None:
        choices = getattr(getattr(param, "type", None), "choices", None)
    return [_text(c) for c in choices] if choices else []


def _text(value) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def _param_help(param, ctx) -> str:
    text = " ".join((getattr(param, "help", None) or "").split())
    extra = []
    default = _default_text(param, ctx)
    if default and "default" not in text.lower():
        extra.append(f"default: {default}")
    envvar = getattr(param, "envvar", None)
    if envvar and getattr(param, "show_envvar", True):
        extra.append("env: " + (envvar if isinstance(envvar, str) else ", ".join(envvar)))
    if param.param_type_name == "option" and param.required:
        extra.append("required")
    return f"{text} ({'; '.join(extra)})".strip() if extra else text


def _default_text(param, ctx) -> str:
    if param.param_type_name != "option":
        return ""
    show = getattr(param, "show_default", None)
    if isinstance(show, str):
        return show
    if show is False or (show is None and not ctx.show_default):
        return ""
    value = param.default
    if callable(value) or value is None or value is Ellipsis or value == () or value == []:
        return ""
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            return (param.opts if value else param.secondary_opts)[-1]
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return _text(value)


def complete_profiles(ctx, param, incomplete: str) -> list[str]:
    """Profile names of the manifest the command line names (-f/--file, default ./fleet.yaml)."""
    from fleet.spec.errors import ManifestError
    from fleet.spec.load import load_manifest

    path = ctx.params.get("file") or Path("fleet.yaml")
    try:
        names = [p.name for p in load_manifest(Path(path)).spec.profiles]
    except (ManifestError, OSError):
        names = []
    if ctx.command.name == "logs":
        names.append("controller")
    given = ctx.params.get(param.name)
    taken = set(given) if isinstance(given, (list, tuple)) else set()
    return [n for n in names if n.startswith(incomplete) and n not in taken]
