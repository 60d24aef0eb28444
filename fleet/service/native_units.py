"""The gateway services Hermes itself installed on this host (`hermes gateway install`), read from where each
service manager keeps them: systemd unit files (with their drop-ins), launchd agents, and the Windows task's
launcher scripts. For `hermes-fleet init` (hermes-native-services.md, sections 2-4).

What a unit serves is what it sets, never what it is called: its `HERMES_HOME` (drop-ins and `%h` applied) and
the `--profile` of its command line. Only the names of the other variables it sets are kept, never a value: a
unit's `Environment=` may carry a bot token.

systemd's own answers (active or not, enabled or not, the main PID) come through a `CommandRunner`, which tests
replace; without an answer they stay unknown. `systemctl show` says `UnitFileState=enabled` even after a
`disable`, so enablement comes from `is-enabled`."""

from __future__ import annotations

import glob
import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.service.base import CommandRunner

SYSTEMD, LAUNCHD, WINDOWS_TASK = "systemd", "launchd", "windows-task"
SYSTEMD_GLOB = "hermes-gateway*.service"
PLANNED_RESTART = "-planned-restart-"  # transient helpers (`hermes-gateway-alpha-planned-restart-<pid>`), not units
LAUNCHD_GLOB = "ai.hermes.gateway*.plist"
WINDOWS_GLOB = "Hermes_Gateway*.vbs"
WINDOWS_SCRIPT_DIR = "gateway-service"  # <HERMES_HOME>/gateway-service/Hermes_Gateway[_<suffix>].vbs
SYSTEM_UNIT_DIR = "/etc/systemd/system"
HERMES_HOME = "HERMES_HOME"
MAX_FILE = 1 << 20
QUERY_TIMEOUT = 10.0
# The commands that hand a profile a native service runs to the fleet, and give it back (`hermes-fleet takeover`,
# `hermes-fleet release`): what `init` and `diff` tell a person to run for such a profile.
TAKEOVER_COMMAND = "hermes-fleet takeover {profile}"
RELEASE_COMMAND = "hermes-fleet release {profile}"
_ENABLED_WORDS = frozenset({"enabled", "enabled-runtime", "linked", "linked-runtime", "alias", "masked",
                            "masked-runtime", "static", "indirect", "disabled", "generated", "transient", "bad"})


@dataclass(frozen=True)
class NativeUnit:
    """One gateway service as its file defines it, and as its manager reports it (None: not asked or no answer)."""
    manager: str  # systemd | launchd | windows-task
    scope: str  # systemd: user | system; launchd: agent; Windows: task
    name: str  # hermes-gateway-alpha.service | ai.hermes.gateway-alpha | Hermes_Gateway_alpha
    path: str  # the unit file, plist or launcher script
    dropins: tuple[str, ...] = ()
    hermes_home: str | None = None  # the HERMES_HOME it sets; None: not set (Hermes then uses ~/.hermes)
    profile_arg: str | None = None  # the --profile/-p of its command line, lower-cased; None without one
    argv: tuple[str, ...] = ()  # its command line
    env_keys: tuple[str, ...] = ()  # the variables it sets: names only
    masked: bool = False  # a systemd unit file that is a link to /dev/null
    problem: str = ""  # why it could not be read, when it could not
    enabled: str | None = None  # systemd is-enabled: enabled, disabled, masked, static, ...
    active: str | None = None  # systemd ActiveState (+ SubState): active (running), inactive (dead), failed, ...
    main_pid: int | None = None

    @property
    def pins_profile(self) -> bool:
        """Whether its gateway ignores `<root>/active_profile`: Hermes skips the sticky profile under these
        supervisor markers (0.19.0: HERMES_S6_SUPERVISED_CHILD; later releases also HERMES_SUPERVISED_CHILD)."""
        return bool({"HERMES_S6_SUPERVISED_CHILD", "HERMES_SUPERVISED_CHILD"} & set(self.env_keys))


@dataclass(frozen=True)
class UnitPlaces:
    """Where each service manager keeps Hermes' gateway services on this host."""
    user_unit_dirs: tuple[str, ...]
    system_unit_dirs: tuple[str, ...]
    launch_agents_dir: str | None
    user_home: str  # what systemd's %h means in a user unit


def default_places(environ: Mapping[str, str], user_home: str) -> UnitPlaces:
    """`$XDG_CONFIG_HOME/systemd/user` (else `~/.config/systemd/user`), `/etc/systemd/system`, and
    `~/Library/LaunchAgents` (where `hermes gateway install` writes them)."""
    config = environ.get("XDG_CONFIG_HOME") or os.path.join(user_home, ".config")
    return UnitPlaces(user_unit_dirs=(os.path.join(config, "systemd", "user"),),
                      system_unit_dirs=(SYSTEM_UNIT_DIR,),
                      launch_agents_dir=os.path.join(user_home, "Library", "LaunchAgents"),
                      user_home=user_home)


def default_hermes_root(environ: Mapping[str, str], user_home: str) -> str:
    """Where Hermes keeps its root when HERMES_HOME is not set: `~/.hermes` (`%LOCALAPPDATA%\\hermes` on Windows)."""
    if sys.platform == "win32" and environ.get("LOCALAPPDATA"):
        return os.path.join(environ["LOCALAPPDATA"], "hermes")
    return os.path.join(user_home, ".hermes")


def find_native_units(places: UnitPlaces, homes: Iterable[str], runner: CommandRunner | None) -> list[NativeUnit]:
    """Every Hermes gateway service found: systemd units (their state asked of `runner`), launchd agents, and the
    Windows launcher scripts in each of `homes` (a profile's HERMES_HOME holds its own)."""
    units: list[NativeUnit] = []
    for scope, dirs in (("user", places.user_unit_dirs), ("system", places.system_unit_dirs)):
        for path, name in _unit_files(dirs):
            unit = read_systemd_unit(path, name, scope, _dropins(dirs, name), user_home=places.user_home)
            units.append(query_systemd(unit, runner) if runner is not None and not unit.problem else unit)
    if places.launch_agents_dir:
        units.extend(read_launchd_plist(p) for p in sorted(glob.glob(os.path.join(glob.escape(
            places.launch_agents_dir), LAUNCHD_GLOB))))
    for home in homes:
        units.extend(read_windows_script(p) for p in sorted(glob.glob(os.path.join(
            glob.escape(os.path.join(home, WINDOWS_SCRIPT_DIR)), WINDOWS_GLOB))))
    return units


def takeover_command(profile: str) -> str:
    return TAKEOVER_COMMAND.format(profile=profile)


def release_command(profile: str) -> str:
    return RELEASE_COMMAND.format(profile=profile)


def profile_flag(argv: Iterable[str]) -> str | None:
    """The value of -p/--profile (also `--profile=X`, `-p=X`) in a command line, lower-cased as Hermes reads it."""
    tokens = [t.lower() for t in argv]
    for i, tok in enumerate(tokens):
        if tok in ("-p", "--profile"):
            return tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.startswith(("--profile=", "-p=")):
            return tok.split("=", 1)[1]
    return None


# ---------------------------------------------------------------- systemd

def _unit_files(dirs: Iterable[str]) -> list[tuple[str, str]]:
    """(path, unit name) of each gateway unit; a name in an earlier directory hides the same name in a later one."""
    seen: dict[str, str] = {}
    for folder in dirs:
        for path in sorted(glob.glob(os.path.join(glob.escape(folder), SYSTEMD_GLOB))):
            name = os.path.basename(path)
            if PLANNED_RESTART not in name:
                seen.setdefault(name, path)
    return sorted(((path, name) for name, path in seen.items()), key=lambda item: item[1])


def _dropins(dirs: Iterable[str], name: str) -> list[str]:
    """`<dir>/<unit>.d/*.conf` across the unit directories, applied in the order of their file names (a name in
    an earlier directory hides the same name in a later one), as systemd does."""
    found: dict[str, str] = {}
    for folder in dirs:
        for path in glob.glob(os.path.join(glob.escape(os.path.join(folder, name + ".d")), "*.conf")):
            found.setdefault(os.path.basename(path), path)
    return [found[key] for key in sorted(found)]


class _Settings:
    """What the unit's [Service] section sets, as its lines are read one after the other."""

    def __init__(self, user_home: str) -> None:
        self.user_home = user_home
        self.home: str | None = None
        self.keys: dict[str, None] = {}
        self.exec_start: tuple[str, ...] = ()

    def assign(self, key: str, value: str) -> None:
        self.keys[key] = None
        if key == HERMES_HOME:
            self.home = value

    def apply(self, text: str) -> None:
        section = ""
        for line in _logical_lines(text):
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, sep, value = line.partition("=")
            if not sep or section != "Service":
                continue
            key, value = key.strip(), value.strip()
            if key == "Environment":
                self.environment(value)
            elif key == "EnvironmentFile":
                self.environment_file(value)
            elif key == "ExecStart":
                self.exec_start = tuple(_words(_expand(value.lstrip("@-:+!"), self.user_home)))

    def environment(self, value: str) -> None:
        if not value:  # `Environment=` alone empties the list
            self.home, self.keys = None, {}
            return
        for word in _words(value):
            key, sep, val = word.partition("=")
            if sep and key:
                self.assign(key, _expand(val, self.user_home))

    def environment_file(self, value: str) -> None:
        path = _expand(value.lstrip("-"), self.user_home)
        text = _read_text(path)
        for key, val in parse_env_text(text or ""):
            self.assign(key, val)


def read_systemd_unit(path: str, name: str, scope: str, dropins: Iterable[str] = (), *,
                      user_home: str = "") -> NativeUnit:
    """A unit file and its drop-ins (which override its `Environment=`), read as systemd would combine them."""
    dropins = tuple(dropins)
    unit = NativeUnit(SYSTEMD, scope, name, path, dropins=dropins)
    try:
        if os.path.islink(path) and os.path.realpath(path) == os.devnull:
            return replace(unit, masked=True)
    except OSError:
        pass
    text = _read_text(path)
    if text is None:
        return replace(unit, problem=f"cannot read {path}")
    settings = _Settings(user_home)
    settings.apply(text)
    for conf in dropins:
        settings.apply(_read_text(conf) or "")
    argv = settings.exec_start
    return replace(unit, hermes_home=_normal(settings.home), profile_arg=profile_flag(argv), argv=argv,
                   env_keys=tuple(sorted(settings.keys)))


def query_systemd(unit: NativeUnit, runner: CommandRunner) -> NativeUnit:
    """The manager's word on `unit`: is-enabled, ActiveState/SubState and MainPID (unknown when it does not
    answer: no systemd, no user manager, no such unit loaded)."""
    base = ["systemctl"] + (["--user"] if unit.scope == "user" else [])
    shown = runner.run(base + ["show", unit.name, "--property=LoadState,ActiveState,SubState,MainPID"],
                       timeout=QUERY_TIMEOUT)
    props = dict(line.partition("=")[::2] for line in shown.stdout.splitlines() if "=" in line) if shown.ok else {}
    active = props.get("ActiveState") or None
    if active and props.get("SubState"):
        active = f"{active} ({props['SubState']})"
    if props.get("LoadState") == "not-found":
        active = None
    pid = props.get("MainPID", "")
    enabled = runner.run(base + ["is-enabled", unit.name], timeout=QUERY_TIMEOUT)
    word = enabled.stdout.strip().splitlines()[0].strip() if enabled.stdout.strip() else ""
    return replace(unit, active=active, main_pid=int(pid) if pid.isdigit() and int(pid) > 0 else None,
                   enabled=word if word in _ENABLED_WORDS else None)


def _logical_lines(text: str) -> list[str]:
    """Lines with comments dropped and backslash continuations joined, as systemd reads a unit file."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending.strip())
    return out


def _words(value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError:
        return value.split()


def _expand(value: str, user_home: str) -> str:
    """systemd's `%h` (the user's home) and `%%`; other specifiers are left as they are."""
    if "%" not in value:
        return value
    return re.sub(r"%([h%])", lambda m: user_home if m.group(1) == "h" else "%", value)


# ---------------------------------------------------------------- launchd

def read_launchd_plist(path: str) -> NativeUnit:
    """A launchd agent: `Label`, `ProgramArguments`, `EnvironmentVariables.HERMES_HOME`."""
    import plistlib

    name = os.path.basename(path)[: -len(".plist")]
    unit = NativeUnit(LAUNCHD, "agent", name, path)
    try:
        with open(path, "rb") as fh:
            data = plistlib.load(fh)
    except (OSError, ValueError, plistlib.InvalidFileException) as exc:
        return replace(unit, problem=f"cannot read {path}: {exc}")
    if not isinstance(data, dict):
        return replace(unit, problem=f"{path} is not a property list dictionary")
    args = data.get("ProgramArguments")
    argv = tuple(str(a) for a in args) if isinstance(args, list) else ()
    env = data.get("EnvironmentVariables")
    env = env if isinstance(env, dict) else {}
    home = env.get(HERMES_HOME)
    label = data.get("Label")
    return replace(unit, name=label if isinstance(label, str) and label else name, argv=argv,
                   profile_arg=profile_flag(argv), hermes_home=_normal(home if isinstance(home, str) else None),
                   env_keys=tuple(sorted(str(k) for k in env)))


# ---------------------------------------------------------------- Windows

_VBS_ASSIGN = re.compile(r'\(\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*\)\s*=\s*"((?:[^"]|"")*)"')
_VBS_RUN = re.compile(r'\.Run\s*\(?\s*"((?:[^"]|"")*)"', re.IGNORECASE)


def read_windows_script(path: str) -> NativeUnit:
    """The launcher the Hermes_Gateway scheduled task runs: the variables it sets (`env.Item("HERMES_HOME") =
    "..."`) and the command line it `Run`s."""
    name = os.path.splitext(os.path.basename(path))[0]
    unit = NativeUnit(WINDOWS_TASK, "task", name, path)
    text = _read_text(path)
    if text is None:
        return replace(unit, problem=f"cannot read {path}")
    keys: dict[str, None] = {}
    home = None
    for match in _VBS_ASSIGN.finditer(text):
        keys[match.group(1)] = None
        if match.group(1).upper() == HERMES_HOME:
            home = match.group(2).replace('""', '"')
    run = _VBS_RUN.search(text)
    argv = tuple(split_windows_command(run.group(1).replace('""', '"'))) if run else ()
    return replace(unit, hermes_home=_normal(home), argv=argv, profile_arg=profile_flag(argv),
                   env_keys=tuple(sorted(keys)))


def split_windows_command(line: str) -> list[str]:
    """A command line split as Windows programs split theirs (double quotes group; backslashes are literal)."""
    words: list[str] = []
    word: list[str] = []
    quoted = started = False
    for ch in line:
        if ch == '"':
            quoted, started = not quoted, True
        elif ch in " \t" and not quoted:
            if started:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(ch)
            started = True
    if started:
        words.append("".join(word))
    return words


# ---------------------------------------------------------------- shared

def parse_env_text(text: str) -> list[tuple[str, str]]:
    """`KEY=VALUE` lines of a dotenv or EnvironmentFile (`export ` and quotes allowed, comments skipped)."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out.append((key, value))
    return out


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE + 1)
    except OSError:
        return None
    if len(data) > MAX_FILE:
        return None
    return data.decode("utf-8", errors="replace")


def _normal(path: str | None) -> str | None:
    if not path:
        return None
    return os.path.normpath(os.path.expanduser(path))
