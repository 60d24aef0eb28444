"""Native services Hermes itself installs for its gateways (hermes-native-services sections 2-4), and which
Hermes home each one would run: a second supervisor for the same home would fight ours.

A unit is mapped to a home by what it runs, never by its name (names are unique per profile name, not per
Hermes root): its `HERMES_HOME` and the `--profile` of its command, resolved the way Hermes resolves them. A
unit without `--profile` runs its HERMES_HOME, and, when that is a root whose `active_profile` names a profile,
that profile (Hermes' sticky profile): it counts for both.

A unit that hermes-fleet gated for a home (`hermes-fleet takeover`) no longer supervises it: systemd's drop-in
`<unit>.d/50-hermes-fleet.conf` says `ConditionPathExists=!<home>/.hermes-fleet-owned` and that file exists;
for launchd and Windows, where the gate is the manager's own disable, the owned file names the unit.

Read-only and cheap: the observer asks on every pass. `NativeIndex` reads each unit file once per pass and
parses it again only when it changed."""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass

GATE_DROPIN = "50-hermes-fleet.conf"
OWNED_FILE = ".hermes-fleet-owned"
SYSTEMD_USER = "systemd-user"
SYSTEMD_SYSTEM = "systemd-system"
LAUNCHD = "launchd"
WINDOWS_TASK = "windows-task"
SYSTEM_UNIT_DIR = "/etc/systemd/system"
_PROFILE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class NativeUnit:
    """One native registration of a Hermes gateway and the homes it would run."""
    manager: str  # systemd-user | systemd-system | launchd | windows-task
    name: str  # hermes-gateway-alpha.service | ai.hermes.gateway-alpha | Hermes_Gateway_alpha
    path: str  # the unit file, plist or launcher script
    homes: tuple[str, ...]  # normalized
    gated_homes: tuple[str, ...] = ()  # systemd: the homes our drop-in names (gated once their owned file exists)

    def serves(self, home: str) -> bool:
        return same_home(home) in self.homes  # `homes` were resolved by same_home when the unit was read

    @property
    def dropin(self) -> str:
        """systemd: where the gate goes."""
        return os.path.join(os.path.dirname(self.path), f"{self.name}.d", GATE_DROPIN)

    def gated_for(self, home: str) -> bool:
        """hermes-fleet gated this unit for `home`: it will not start while the fleet owns the home."""
        home = same_home(home)
        if not os.path.exists(os.path.join(home, OWNED_FILE)):
            return False
        if self.manager in (SYSTEMD_USER, SYSTEMD_SYSTEM):
            return home in self.gated_homes
        return self.name in owned_units(home)

    def describe(self) -> str:
        return f"{self.name} ({self.path})"


def same_home(path: str) -> str:
    """A home as the file system finally names it. Hermes writes a unit's HERMES_HOME resolved (symlinks
    followed): a home reached through a symlink (a root moved to another disk) must still match its unit."""
    return os.path.realpath(os.path.expanduser(path))


def owned_file(home: str) -> str:
    return os.path.join(same_home(home), OWNED_FILE)


def owned_units(home: str) -> tuple[str, ...]:
    """The units the owned file of `home` names (launchd and Windows gates)."""
    try:
        with open(owned_file(home), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return ()
    units = data.get("units") if isinstance(data, dict) else None
    return tuple(str(u) for u in units) if isinstance(units, list) else ()


def gate_condition(home: str) -> str:
    return f"ConditionPathExists=!{owned_file(home)}"


# ------------------------------------------------------------------------------- homes


def resolve_homes(hermes_home: str | None, profile: str | None, user_home: str) -> tuple[str, ...]:
    """The homes a gateway started with this HERMES_HOME and `--profile` runs (Hermes' own resolution:
    hermes_constants.get_default_hermes_root, then `<root>/profiles/<name>`)."""
    native_root = same_home(os.path.join(user_home, ".hermes"))
    base = same_home(hermes_home) if hermes_home else native_root
    if base == native_root or base.startswith(native_root + os.sep):
        root = native_root
    elif os.path.basename(os.path.dirname(base)) == "profiles":
        root = os.path.dirname(os.path.dirname(base))
    else:
        root = base
    if profile == "default":
        return (root,)
    if profile:
        return (os.path.join(root, "profiles", profile),)
    homes = [base]
    if base == root:
        active = _active_profile(root)
        if active:
            homes.append(os.path.join(root, "profiles", active))
    return tuple(homes)


def _active_profile(root: str) -> str | None:
    try:
        with open(os.path.join(root, "active_profile"), encoding="utf-8") as fh:
            name = fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if name != "default" and _PROFILE.match(name) else None


def profile_of(argv: list[str]) -> str | None:
    """The `-p`/`--profile` value of a command line (Hermes reads it anywhere before `--`)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg in ("-p", "--profile") and i + 1 < len(argv):
            return argv[i + 1].lower()
        if arg.startswith("--profile="):
            return arg.split("=", 1)[1].lower()
    return None


def is_gateway_command(argv: list[str]) -> bool:
    words = [os.path.basename(a).lower() for a in argv]
    return "gateway" in words and any("hermes" in w for w in words)


# ------------------------------------------------------------------------------- systemd


@dataclass(frozen=True)
class UnitSettings:
    """What a systemd unit and its drop-ins set: its environment, its command and our gate's conditions."""
    environment: dict[str, str]
    exec_start: list[str]
    conditions: tuple[str, ...]  # the ConditionPathExists= values of our drop-in


def parse_unit_text(text: str, settings: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """`Section.Key` -> the values of a unit file (continuation lines joined; an empty assignment resets
    the list, as systemd does); pass `settings` to layer a drop-in over the unit."""
    out: dict[str, list[str]] = {k: list(v) for k, v in (settings or {}).items()}
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        name = f"{section}.{key.strip()}"
        value = value.strip()
        if value == "":
            out[name] = []
        else:
            out.setdefault(name, []).append(value)
    return out


def environment_of(values: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in values:
        try:
            words = shlex.split(value)
        except ValueError:
            words = value.split()
        for word in words:
            key, sep, val = word.partition("=")
            if sep:
                env[key] = val
    return env


def exec_argv(value: str) -> list[str]:
    try:
        argv = shlex.split(value)
    except ValueError:
        argv = value.split()
    if argv:
        argv[0] = argv[0].lstrip("-@:+!")
    return argv


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(1 << 20)
    except OSError:
        return None


def systemd_settings(path: str, name: str) -> UnitSettings | None:
    text = read_text(path)
    if text is None:
        return None
    settings = parse_unit_text(text)
    ours: list[str] = []
    for dropin in sorted(glob.glob(os.path.join(glob.escape(os.path.dirname(path)), f"{glob.escape(name)}.d", "*.conf"))):
        extra = read_text(dropin)
        if extra is None:
            continue
        settings = parse_unit_text(extra, settings)
        if os.path.basename(dropin) == GATE_DROPIN:
            ours = parse_unit_text(extra).get("Unit.ConditionPathExists", [])
    execs = settings.get("Service.ExecStart", [])
    return UnitSettings(environment_of(settings.get("Service.Environment", [])),
                        exec_argv(execs[-1]) if execs else [], tuple(ours))


def _gated_homes(conditions: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for value in conditions:
        if value.startswith("!") and os.path.basename(value[1:]) == OWNED_FILE:
            out.append(same_home(os.path.dirname(value[1:])))
    return tuple(out)


def systemd_unit(path: str, manager: str, user_home: str) -> NativeUnit | None:
    name = os.path.basename(path)
    settings = systemd_settings(path, name)
    if settings is None or not is_gateway_command(settings.exec_start):
        return None
    home = settings.environment.get("HOME") if manager == SYSTEMD_SYSTEM else None
    homes = resolve_homes(settings.environment.get("HERMES_HOME"), profile_of(settings.exec_start),
                          home or user_home)
    return NativeUnit(manager, name, path, homes, _gated_homes(settings.conditions))


# ------------------------------------------------------------------------------- launchd, Windows


def launchd_unit(path: str, user_home: str) -> NativeUnit | None:
    import plistlib  # only where there are plists: the controller stays lean elsewhere

    try:
        with open(path, "rb") as fh:
            data = plistlib.load(fh)
    except (OSError, ValueError, plistlib.InvalidFileException):
        return None
    if not isinstance(data, dict):
        return None
    argv = [str(a) for a in data.get("ProgramArguments") or []]
    env = data.get("EnvironmentVariables") or {}
    if not is_gateway_command(argv) or not isinstance(env, dict):
        return None
    label = str(data.get("Label") or os.path.basename(path)[:-len(".plist")])
    return NativeUnit(LAUNCHD, label, path, resolve_homes(env.get("HERMES_HOME"), profile_of(argv), user_home))


_VBS_HOME = re.compile(r'env\.Item\("HERMES_HOME"\)\s*=\s*"((?:[^"]|"")*)"', re.IGNORECASE)
_VBS_RUN = re.compile(r'^\s*sh\.Run\s+"((?:[^"]|"")*)"', re.IGNORECASE | re.MULTILINE)


def windows_task(path: str, user_home: str) -> NativeUnit | None:
    """`<home>/gateway-service/Hermes_Gateway[_<suffix>].vbs`: the launcher the task named like it runs."""
    text = read_text(path)
    if text is None:
        return None
    home, run = _VBS_HOME.search(text), _VBS_RUN.search(text)
    if home is None or run is None:
        return None
    argv = run.group(1).replace('""', '"').split()
    if not is_gateway_command(argv):
        return None
    name = os.path.splitext(os.path.basename(path))[0]
    return NativeUnit(WINDOWS_TASK, name, path, resolve_homes(home.group(1).replace('""', '"'), profile_of(argv),
                                                              user_home))


# ------------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class Places:
    """Where native units live on this host (tests point these elsewhere)."""
    user_home: str
    systemd_user: str
    systemd_system: str = SYSTEM_UNIT_DIR
    launch_agents: str = ""

    @classmethod
    def here(cls) -> Places:
        home = os.path.expanduser("~")
        config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        agents = os.path.join(_pw_home() or home, "Library", "LaunchAgents") if sys.platform == "darwin" else ""
        return cls(home, os.path.join(config, "systemd", "user"), SYSTEM_UNIT_DIR, agents)


def _pw_home() -> str | None:
    """launchd's plists live under the account's home from the password database, not $HOME."""
    if sys.platform == "win32":
        return None
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return None


_PARSED: dict[tuple[str, int, int, tuple], NativeUnit | None] = {}


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _dropin_stamps(path: str) -> tuple:
    folder = f"{path}.d"
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return ()
    return tuple((n, _stamp(os.path.join(folder, n))) for n in names)


class NativeIndex:
    """The native units of this host, read once: which supervise a home, and which hermes-fleet gated."""

    def __init__(self, places: Places | None = None):
        self.places = places or Places.here()
        self._units: list[NativeUnit] | None = None

    def units(self) -> list[NativeUnit]:
        if self._units is None:
            self._units = self._scan()
        return self._units

    def _scan(self) -> list[NativeUnit]:
        p = self.places
        found: list[NativeUnit] = []
        for folder, manager in ((p.systemd_user, SYSTEMD_USER), (p.systemd_system, SYSTEMD_SYSTEM)):
            for path in _listed(folder, "hermes-gateway", ".service"):
                if "-planned-restart-" not in os.path.basename(path):
                    unit = self._cached(path, lambda path=path, manager=manager: systemd_unit(path, manager,
                                                                                              p.user_home))
                    found += [unit] if unit else []
        if p.launch_agents:
            for path in _listed(p.launch_agents, "ai.hermes.gateway", ".plist"):
                unit = self._cached(path, lambda path=path: launchd_unit(path, p.user_home))
                found += [unit] if unit else []
        return found

    @staticmethod
    def _cached(path: str, parse) -> NativeUnit | None:
        stamp = _stamp(path)
        if stamp is None:
            return None
        key = (path, *stamp, _dropin_stamps(path))
        if key not in _PARSED:
            if len(_PARSED) > 512:
                _PARSED.clear()
            _PARSED[key] = parse()
        return _PARSED[key]

    def serving(self, home: str) -> list[NativeUnit]:
        """Every native unit that would run `home`, gated or not (a Windows task's launcher lives in the home)."""
        resolved = same_home(home)
        units = [u for u in self.units() if resolved in u.homes]
        for path in _listed(os.path.join(resolved, "gateway-service"), "Hermes_Gateway", ".vbs"):
            unit = self._cached(path, lambda path=path: windows_task(path, self.places.user_home))
            if unit is not None and resolved in unit.homes:
                units.append(unit)
        return units

    def supervising(self, home: str) -> list[NativeUnit]:
        """The units that supervise `home` now: those that serve it and are not gated for it."""
        return [u for u in self.serving(home) if not u.gated_for(home)]

    def gated(self, home: str) -> list[NativeUnit]:
        return [u for u in self.serving(home) if u.gated_for(home)]


def _listed(folder: str, prefix: str, suffix: str) -> list[str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, n) for n in names if n.startswith(prefix) and n.endswith(suffix))


def find_native_service(home: str, index: NativeIndex | None = None) -> str | None:
    """The path of a native unit that supervises this Hermes home (not gated by hermes-fleet), or None."""
    units = (index or NativeIndex()).supervising(home)
    return units[0].path if units else None
