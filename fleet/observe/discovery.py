"""What a host that already runs Hermes holds, for `hermes-fleet init` (hermes-native-services.md): the Hermes
root, its profiles, which of them have a live gateway and who runs it, the native services Hermes installed and
the home each one serves, the proxy settings and the sticky `active_profile`. Read-only, and through a small
`Host` (the environment, the user's home, a process probe, a command runner, where units live), so tests build
hosts in temporary directories.

A value is never kept: of a `.env`, a `config.yaml`, a unit's environment or a process's environment only the
key names are (`HERMES_HOME` and `active_profile`, which are paths and names, excepted). Two profiles that set
one bot token are found by comparing the values in memory; what is reported is the key and the profiles.

Liveness is Hermes' own rule: `gateway.lock` is held and `gateway.pid` names a live gateway process with the
recorded start time. `gateway_state.json` is never taken for liveness."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from fleet.observe import hermes_files as hf
from fleet.platform.base import Platform, ProcessInfo
from fleet.platform.cgroup import cgroup_of, service_unit_of
from fleet.service.base import CommandRunner
from fleet.service.native import same_home
from fleet.service.native_units import (
    LAUNCHD, SYSTEMD, WINDOWS_TASK, NativeUnit, UnitPlaces, default_hermes_root, default_places, find_native_units,
    parse_env_text,
)
from fleet.spec.markers import STATE_DIR_ENV
from fleet.store.files import read_json

PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # Hermes' rule, matched whole
RESERVED_NAMES = frozenset({"hermes", "test", "tmp", "root", "sudo"})  # Hermes refuses to create these
ACTIVE_PROFILE = "active_profile"
PROXY_NAMES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"})
MAX_ENV_FILE = 1 << 20
# Signs that the root itself is used as the default profile (a root that only holds profiles/ is not).
DEFAULT_PROFILE_SIGNS = (".env", "config.yaml", "SOUL.md", hf.GATEWAY_PID, hf.GATEWAY_STATE, hf.GATEWAY_LOCK)

# What apply will do with a profile, as init writes it.
ADOPT, TAKEOVER, SPAWN, KEEP, STOPPED, OTHER_FLEET, CHECK = (
    "adopt", "takeover", "spawn", "keep", "stopped", "other_fleet", "check")
# Who runs a live gateway.
BY_HAND, BY_SYSTEMD, BY_LAUNCHD, BY_WINDOWS_TASK, BY_FLEET, BY_MULTIPLEXER, BY_UNKNOWN = (
    "hand", "systemd", "launchd", "windows-task", "hermes-fleet", "multiplexer", "unknown")


def is_proxy_key(key: str) -> bool:
    upper = key.upper()
    return upper in PROXY_NAMES or upper.endswith("_PROXY")


def is_token_key(key: str) -> bool:
    return key.upper().endswith(("_TOKEN", "_API_KEY"))


class HostProbe(Protocol):
    """The questions discovery asks the OS about a process and a lock."""

    def lock_is_held(self, path: str) -> bool: ...
    def process_info(self, pid: int) -> ProcessInfo | None: ...
    def process_environ(self, pid: int) -> dict[str, str] | None: ...
    def cgroup(self, pid: int) -> str | None: ...


class PlatformProbe:
    """The probe of this host: the platform's answers, and the kernel's cgroup of a process."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def lock_is_held(self, path: str) -> bool:
        return self.platform.lock_is_held(path)

    def process_info(self, pid: int) -> ProcessInfo | None:
        return self.platform.process_info(pid)

    def process_environ(self, pid: int) -> dict[str, str] | None:
        return self.platform.process_environ(pid)

    def cgroup(self, pid: int) -> str | None:
        return cgroup_of(pid)


@dataclass(frozen=True)
class Host:
    """The host discovery looks at: its environment, the user's home, and how to ask about processes and units."""
    environ: Mapping[str, str]
    user_home: str
    probe: HostProbe
    runner: CommandRunner | None  # None: systemd is not asked (units' state stays unknown)
    places: UnitPlaces
    root: str | None = None  # the Hermes root asked for; None: $HERMES_HOME, else ~/.hermes

    @classmethod
    def current(cls, root: str | None = None) -> Host:
        from fleet.platform import current_platform
        from fleet.service.base import SubprocessRunner

        environ = dict(os.environ)
        user_home = environ.get("HOME") or environ.get("USERPROFILE") or os.path.expanduser("~")
        return cls(environ=environ, user_home=user_home, probe=PlatformProbe(current_platform()),
                   runner=SubprocessRunner(), places=default_places(environ, user_home), root=root)


@dataclass(frozen=True)
class KeyFound:
    """A setting found by its name, and where: its value stays where it is."""
    key: str
    where: str  # a file, "the unit hermes-gateway-alpha.service", "the environment of pid 123"
    inherited: bool = False  # a process or unit environment: a fleet-run gateway does not inherit it


@dataclass(frozen=True)
class Gateway:
    """A live gateway: Hermes' lock held, and gateway.pid naming this process with its start time."""
    pid: int
    runner: str  # hand | systemd | launchd | windows-task | hermes-fleet | unknown
    by: str | None  # the unit, launchd label, or the fleet's state directory that runs it
    argv: tuple[str, ...]
    external_supervisor: bool


@dataclass(frozen=True)
class UnitFinding:
    """A native service, and the home its gateway runs in."""
    unit: NativeUnit
    serves: str  # the HERMES_HOME its gateway runs in
    profile: str | None  # that home's profile under this root; None under another root, or no profile home
    this_root: bool
    via_active_profile: str | None = None  # it runs this sticky profile, not the home it names


@dataclass(frozen=True)
class ProfileFinding:
    """One Hermes profile as discovery found it, and what `init` will do with it."""
    name: str
    home: str
    listed: bool  # written into fleet.yaml (the default profile only when the root is used as one)
    files: tuple[str, ...]  # .env, config.yaml that exist
    tokens: tuple[str, ...]  # .env keys ending _TOKEN or _API_KEY: names only
    proxies: tuple[KeyFound, ...]
    liveness: str  # live | stale | lock_only | none
    liveness_note: str
    gateway: Gateway | None
    units: tuple[UnitFinding, ...]  # native services that run this profile
    multiplexed_by: int | None  # pid of the default gateway that serves it as a multiplexer
    verb: str  # adopt | takeover | spawn | keep | stopped | other_fleet | check
    desired: str  # running | stopped, as fleet.yaml will say


@dataclass(frozen=True)
class Finding:
    """A warning for the person running `init`, and the profile it concerns, if any."""
    code: str
    message: str
    profile: str | None = None


@dataclass(frozen=True)
class Discovery:
    """What discovery found under one Hermes root: its profiles, native services and warnings."""
    root: str
    root_source: str  # how the root was chosen
    root_exists: bool
    active_profile: str | None
    multiplexer: tuple[int, tuple[str, ...]] | None  # (pid, served_profiles) of a live multiplexing default gateway
    multiplex_configured: bool  # <root>/config.yaml gateway.multiplex_profiles
    command: tuple[str, ...] | None  # how to run Hermes, as found
    command_source: str
    profiles: tuple[ProfileFinding, ...]
    units: tuple[UnitFinding, ...]
    skipped: tuple[tuple[str, str], ...]  # (entry of profiles/, why it is no profile)
    warnings: tuple[Finding, ...]

    def profile(self, name: str) -> ProfileFinding | None:
        return next((p for p in self.profiles if p.name == name), None)

    @property
    def listed(self) -> tuple[ProfileFinding, ...]:
        return tuple(p for p in self.profiles if p.listed)


# ---------------------------------------------------------------- the whole host

def discover(host: Host) -> Discovery:
    root, source = resolve_root(host)
    default_root = default_hermes_root(host.environ, host.user_home)
    active = read_active_profile(root)
    names, skipped = profile_names(root)
    homes = {name: (root if name == "default" else os.path.join(root, "profiles", name)) for name in names}
    units = [map_unit(u, root, default_root) for u in find_native_units(host.places, homes.values(), host.runner)]
    lives = {name: liveness(home, host.probe, units) for name, home in homes.items()}
    multiplexer = _multiplexer(root, lives.get("default"))
    profiles = [_profile(name, homes[name], lives[name], units, multiplexer, host.probe) for name in names]
    command, command_source = find_command(profiles, units, host.environ)
    multiplex_configured = _multiplex_configured(root)
    warnings = _warnings(root, active, names, profiles, units, multiplex_configured)
    return Discovery(root=root, root_source=source, root_exists=os.path.isdir(root), active_profile=active,
                     multiplexer=multiplexer, multiplex_configured=multiplex_configured, command=command,
                     command_source=command_source, profiles=tuple(profiles), units=tuple(units),
                     skipped=tuple(skipped), warnings=tuple(warnings))


def resolve_root(host: Host) -> tuple[str, str]:
    """The Hermes root: the one asked for, else $HERMES_HOME (a profile's home there means its root), else
    ~/.hermes. The host's existing root is kept: a fleet under a second root would rewrite the first root's
    same-named units at every gateway boot (hermes-native-services section 2)."""
    if host.root:
        return _absolute(host.root, host.user_home), "--hermes-home"
    value = host.environ.get("HERMES_HOME")
    default_root = default_hermes_root(host.environ, host.user_home)
    if value:
        home = _absolute(value, host.user_home)
        root = hermes_root_of(home, default_root)
        return root, "$HERMES_HOME" if root == home else f"$HERMES_HOME ({home} lies in this root)"
    return default_root, "the default (HERMES_HOME is not set)"


def hermes_root_of(home: str, default_root: str) -> str:
    """Hermes' root for a HERMES_HOME: ~/.hermes for any home inside it; else the home itself, or its
    grandparent when the home is `<root>/profiles/<name>`."""
    if _within(home, default_root):
        return default_root
    parent = os.path.dirname(home)
    if os.path.basename(parent) == "profiles":
        return os.path.dirname(parent)
    return home


def read_active_profile(root: str) -> str | None:
    """The sticky profile `hermes profile use NAME` wrote; None without one (or for `default`)."""
    try:
        with open(os.path.join(root, ACTIVE_PROFILE), encoding="utf-8", errors="replace") as fh:
            name = fh.read(256).strip()
    except OSError:
        return None
    return name if name and name != "default" else None


def profile_names(root: str) -> tuple[list[str], list[tuple[str, str]]]:
    """`default` (the root) and each directory of `<root>/profiles` with a valid name; what else is there, and why
    it is no profile."""
    folder = os.path.join(root, "profiles")
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        entries = []
    names, skipped = ["default"], []
    for entry in entries:
        if not os.path.isdir(os.path.join(folder, entry)):
            continue
        if entry == "default":
            skipped.append((entry, "the default profile is the root itself, not profiles/default"))
        elif not PROFILE_NAME.fullmatch(entry):
            skipped.append((entry, "not a valid profile name ([a-z0-9][a-z0-9_-]*)"))
        elif entry in RESERVED_NAMES:
            skipped.append((entry, "a name Hermes reserves, which fleet.yaml does not accept"))
        else:
            names.append(entry)
    return names, skipped


# ---------------------------------------------------------------- native units

def map_unit(unit: NativeUnit, root: str, default_root: str) -> UnitFinding:
    """The home a unit's gateway runs in, by what the unit sets (HERMES_HOME, --profile, and the sticky profile
    of that root when neither pins one), never by its name."""
    home = unit.hermes_home or default_root
    unit_root = hermes_root_of(home, default_root)
    via = None
    if unit.profile_arg and unit.profile_arg != "default":
        serves = os.path.join(unit_root, "profiles", unit.profile_arg)
    elif unit.profile_arg == "default" or os.path.basename(os.path.dirname(home)) == "profiles":
        serves = unit_root if unit.profile_arg == "default" else home
    else:
        sticky = None if unit.pins_profile else read_active_profile(unit_root)
        sticky = sticky if sticky and PROFILE_NAME.fullmatch(sticky) else None
        serves = os.path.join(unit_root, "profiles", sticky) if sticky else home
        via = sticky
    serves = os.path.normpath(serves)
    return UnitFinding(unit=unit, serves=serves, profile=profile_of_home(serves, root),
                       this_root=_within(serves, root), via_active_profile=via)


def profile_of_home(home: str, root: str) -> str | None:
    if _same(home, root):
        return "default"
    parent = os.path.dirname(home)
    name = os.path.basename(home)
    if _same(parent, os.path.join(root, "profiles")) and PROFILE_NAME.fullmatch(name):
        return name
    return None


def expected_unit_names(profile: str) -> dict[str, str]:
    """The name Hermes gives a profile's service on each manager (hermes-native-services section 2): one per
    profile name, whatever the root."""
    suffix = "" if profile == "default" else f"-{profile}"
    return {SYSTEMD: f"hermes-gateway{suffix}.service", LAUNCHD: f"ai.hermes.gateway{suffix}",
            WINDOWS_TASK: "Hermes_Gateway" + ("" if profile == "default" else f"_{profile}")}


# ---------------------------------------------------------------- gateways

@dataclass(frozen=True)
class Liveness:
    """Whether a profile's gateway is live by Hermes' rule: the gateway, or a note saying why not."""
    state: str  # live | stale | lock_only | none
    gateway: Gateway | None
    note: str


def liveness(home: str, probe: HostProbe, units: Iterable[UnitFinding] = ()) -> Liveness:
    """Hermes' rule: the lock is held and gateway.pid names a live gateway with the recorded start time."""
    held = probe.lock_is_held(os.path.join(home, hf.GATEWAY_LOCK))
    record = hf.read_hermes_pid(home)
    if record is None:
        if held:
            return Liveness("lock_only", None, "gateway.lock is held, but no gateway.pid names its holder")
        return Liveness("none", None, "")
    info = probe.process_info(record.pid)
    why_not = _why_not_the_gateway(record, info)
    if held and not why_not and info is not None:
        return Liveness("live", _gateway(info, probe, units), "")
    if held:
        return Liveness("lock_only", None, f"gateway.lock is held, but gateway.pid names pid {record.pid}, {why_not}")
    return Liveness("stale", None, f"a stale gateway.pid (pid {record.pid} {why_not or 'holds no lock'})")


def _why_not_the_gateway(record: hf.HermesPidRecord, info: ProcessInfo | None) -> str:
    if info is None or not info.alive:
        return "which no longer runs"
    if record.start_time is not None and info.start_ticks is not None and record.start_time != info.start_ticks:
        return "which is another program now"
    if info.cmdline and not hf.looks_like_gateway(info.cmdline):
        return "which is no gateway"
    return ""


def _gateway(info: ProcessInfo, probe: HostProbe, units: Iterable[UnitFinding]) -> Gateway:
    runner, by = who_runs(info.pid, probe, units)
    return Gateway(pid=info.pid, runner=runner, by=by, argv=info.cmdline,
                   external_supervisor=hf.has_external_supervisor_flag(info.cmdline))


def who_runs(pid: int, probe: HostProbe, units: Iterable[UnitFinding] = ()) -> tuple[str, str | None]:
    """systemd: INVOCATION_ID in its environment and a cgroup that ends in a .service; launchd: a Hermes label in
    XPC_SERVICE_NAME; the Windows task: the variable its launcher sets; hermes-fleet: the fleet's marker; else by
    hand. An unreadable environment tells nothing."""
    env = probe.process_environ(pid)
    if not env:
        return BY_UNKNOWN, None
    if env.get(STATE_DIR_ENV):
        return BY_FLEET, env[STATE_DIR_ENV]
    unit = service_unit_of(probe.cgroup(pid))
    if env.get("INVOCATION_ID") and unit:
        return BY_SYSTEMD, unit
    labels = {f.unit.name for f in units if f.unit.manager == LAUNCHD}
    xpc = env.get("XPC_SERVICE_NAME", "")
    if xpc and (xpc in labels or xpc.startswith("ai.hermes.gateway")):
        return BY_LAUNCHD, xpc
    if env.get("HERMES_GATEWAY_DETACHED") == "1" and any(f.unit.manager == WINDOWS_TASK for f in units):
        return BY_WINDOWS_TASK, next(f.unit.name for f in units if f.unit.manager == WINDOWS_TASK)
    return BY_HAND, None


def _multiplexer(root: str, default: Liveness | None) -> tuple[int, tuple[str, ...]] | None:
    """The live default gateway's `served_profiles`; the list stays in the file after it stops, so only a live
    gateway's counts."""
    if default is None or default.gateway is None:
        return None
    data = read_json(os.path.join(root, hf.GATEWAY_STATE))
    served = data.get("served_profiles") if isinstance(data, dict) else None
    if not isinstance(served, list) or not served:
        return None
    return default.gateway.pid, tuple(str(p) for p in served)


# ---------------------------------------------------------------- one profile

def _profile(name: str, home: str, live: Liveness, units: list[UnitFinding],
             multiplexer: tuple[int, tuple[str, ...]] | None, probe: HostProbe) -> ProfileFinding:
    files = tuple(f for f in (".env", "config.yaml") if os.path.isfile(os.path.join(home, f)))
    env_pairs = _env_pairs(os.path.join(home, ".env"))
    tokens = tuple(sorted({k for k, _ in env_pairs if is_token_key(k)}))
    mine = tuple(f for f in units if f.this_root and f.profile == name)
    multiplexed_by = multiplexer[0] if multiplexer and name != "default" and name in multiplexer[1] else None
    proxies = _proxies(home, env_pairs, live.gateway, mine, probe)
    listed = name != "default" or _root_in_use(home, live, mine)
    verb, desired = _verb(live, mine, multiplexed_by)
    return ProfileFinding(name=name, home=home, listed=listed, files=files, tokens=tokens, proxies=proxies,
                          liveness=live.state, liveness_note=live.note, gateway=live.gateway, units=mine,
                          multiplexed_by=multiplexed_by, verb=verb, desired=desired)


def _verb(live: Liveness, units: tuple[UnitFinding, ...], multiplexed_by: int | None) -> tuple[str, str]:
    """What apply will do with the profile as init writes it, and whether it is written running."""
    gateway = live.gateway
    if units or (gateway is not None and gateway.runner in (BY_SYSTEMD, BY_LAUNCHD, BY_WINDOWS_TASK)):
        return TAKEOVER, "running"
    if gateway is not None and gateway.runner == BY_FLEET:
        return OTHER_FLEET, "running"
    if gateway is not None and gateway.runner == BY_UNKNOWN:  # another user's, perhaps: nothing proves it ours
        return CHECK, "stopped"
    if gateway is not None:
        return ADOPT, "running"
    if multiplexed_by is not None:
        return STOPPED, "stopped"
    if live.state == "lock_only":
        return CHECK, "stopped"
    return SPAWN, "running"


def _root_in_use(home: str, live: Liveness, units: tuple[UnitFinding, ...]) -> bool:
    return live.state != "none" or bool(units) or any(os.path.exists(os.path.join(home, f))
                                                      for f in DEFAULT_PROFILE_SIGNS)


def _proxies(home: str, env_pairs: list[tuple[str, str]], gateway: Gateway | None, units: tuple[UnitFinding, ...],
             probe: HostProbe) -> tuple[KeyFound, ...]:
    """Proxy settings by name, and where: the profile's .env and config.yaml (the gateway keeps reading them
    under the fleet), a native unit's environment or the live gateway's own (a fleet-run gateway inherits
    neither)."""
    found = [KeyFound(k, os.path.join(home, ".env")) for k in dict.fromkeys(k for k, _ in env_pairs) if is_proxy_key(k)]
    found += [KeyFound(k, os.path.join(home, "config.yaml")) for k in _config_keys(home) if is_proxy_key(k)]
    for f in units:
        found += [KeyFound(k, f"the {f.unit.manager} unit {f.unit.name}", inherited=True)
                  for k in f.unit.env_keys if is_proxy_key(k)]
    if gateway is not None:
        named = {p.key for p in found}
        env = probe.process_environ(gateway.pid) or {}
        found += [KeyFound(k, f"the environment of pid {gateway.pid}", inherited=True)
                  for k in sorted(env) if is_proxy_key(k) and k not in named]
    return tuple(found)


# ---------------------------------------------------------------- Hermes' command

def find_command(profiles: Iterable[ProfileFinding], units: Iterable[UnitFinding],
                 environ: Mapping[str, str]) -> tuple[tuple[str, ...] | None, str]:
    """How the fleet should run Hermes: as a live gateway runs it, else as a native unit runs it, else `hermes`
    on PATH. None when none of them tells."""
    for p in profiles:
        prefix = command_prefix(p.gateway.argv) if p.gateway else None
        if prefix and p.gateway:
            return prefix, f"as the live gateway of {p.name} (pid {p.gateway.pid}) runs it"
    for f in units:
        prefix = command_prefix(f.unit.argv) if f.this_root else None
        if prefix:
            return prefix, f"as the {f.unit.manager} unit {f.unit.name} runs it"
    found = shutil.which("hermes", path=environ["PATH"]) if environ.get("PATH") else None
    if found:
        return (os.path.abspath(found),), "hermes on PATH"
    return None, "hermes is not on PATH"


def command_prefix(argv: tuple[str, ...]) -> tuple[str, ...] | None:
    """The words of a gateway's command line before its profile flag and `gateway`: the Hermes CLI itself. None
    when it is no Hermes command line or names a relative path (its working directory is not known)."""
    prefix: list[str] = []
    for word in argv:
        lower = word.lower()
        if lower in ("-p", "--profile", "gateway") or lower.startswith(("--profile=", "-p=")):
            break
        prefix.append(word)
    else:
        return None
    if not prefix or not hf.looks_like_gateway(argv):
        return None
    if any(not os.path.isabs(w) and (os.sep in w or "/" in w) for w in prefix):
        return None
    return tuple(prefix)


# ---------------------------------------------------------------- warnings

def _warnings(root: str, active: str | None, names: list[str], profiles: list[ProfileFinding],
              units: list[UnitFinding], multiplex_configured: bool) -> list[Finding]:
    out: list[Finding] = []
    if active is not None:
        out.append(Finding("active_profile", _active_profile_text(root, active, names)))
    out += _foreign_units(root, names, units)
    out += [Finding("unit_masked", f"{f.unit.name} ({f.unit.path}) is masked", f.profile) for f in units
            if f.unit.masked]
    out += [Finding("unit_unreadable", f.unit.problem, f.profile) for f in units if f.unit.problem]
    out += [Finding("unit_not_a_profile", f"{f.unit.name} runs {f.serves}, a home under this root that is no "
                    "profile; init leaves it out", None) for f in units if f.this_root and f.profile is None]
    out += _shared_tokens(profiles)
    default = next((p for p in profiles if p.name == "default" and p.listed), None)
    if multiplex_configured and default is not None:
        out.append(Finding("multiplexer_configured", (
            f"{root}/config.yaml sets gateway.multiplex_profiles: the default gateway then serves every profile, "
            "and Hermes refuses a named profile's own gateway while it runs; turn it off to run each profile "
            "under the fleet"), "default"))
    out += [Finding("gateway_lock_only", p.liveness_note, p.name) for p in profiles if p.liveness == "lock_only"]
    return out


def _active_profile_text(root: str, active: str, names: list[str]) -> str:
    exists = "" if active in names else " (no such profile exists)"
    return (f"{root}/active_profile names {active!r}{exists}: a bare `hermes gateway run`, and the default "
            f"profile's native unit unless it pins its profile, run {active!r} instead of the default profile. "
            "Gateways the fleet starts are pinned to their own profile. `hermes profile use default` removes "
            "the file.")


def _foreign_units(root: str, names: list[str], units: list[UnitFinding]) -> list[Finding]:
    """Units that serve another root. A gateway of the same-named profile under this root rewrites a systemd one
    at its boot, re-pointing it here (hermes-native-services section 2)."""
    out = []
    for f in units:
        if f.this_root:
            continue
        clash = next((n for n in names if expected_unit_names(n).get(f.unit.manager) == f.unit.name), None)
        if clash is not None and f.unit.manager == SYSTEMD:
            out.append(Finding("unit_of_another_root", (
                f"{f.unit.name} ({f.unit.path}) runs {f.serves}, in another Hermes root; every gateway of "
                f"profile {clash!r} under {root} (the fleet's too) rewrites that unit to point here when it "
                "starts. Keep one root per host: manage that root instead (HERMES_HOME=<it> hermes-fleet init), "
                "or uninstall the unit from it"), clash))
        else:
            out.append(Finding("unit_of_another_root",
                               f"{f.unit.name} ({f.unit.path}) runs {f.serves}, in another Hermes root; "
                               "init leaves it alone", None))
    return out


def _shared_tokens(profiles: list[ProfileFinding]) -> list[Finding]:
    """Two profiles whose .env set one bot token: one gateway polls it, the other exits 78. The values are
    compared here and forgotten."""
    seen: dict[tuple[str, str], list[str]] = {}
    for p in profiles:
        if not p.listed:
            continue
        for key, value in _env_pairs(os.path.join(p.home, ".env")):
            if is_token_key(key) and value:
                digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
                seen.setdefault((key, digest), []).append(p.name)
    return [Finding("shared_token", f"{', '.join(who)} set the same {key} in their .env: only one gateway can "
                    "use it (the other exits 78)")
            for (key, _), who in sorted(seen.items()) if len(who) > 1]


# ---------------------------------------------------------------- files

def _env_pairs(path: str) -> list[tuple[str, str]]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_ENV_FILE)
    except OSError:
        return []
    return parse_env_text(data.decode("utf-8", errors="replace"))


def _config(home: str) -> dict:
    path = os.path.join(home, "config.yaml")
    if not os.path.isfile(path):
        return {}
    from fleet.spec.pyyaml import yaml

    try:
        with open(path, "rb") as fh:
            data = yaml.safe_load(fh.read(MAX_ENV_FILE))
    except (OSError, yaml.YAMLError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _config_keys(home: str) -> list[str]:
    return [str(k) for k in _config(home)]


def _multiplex_configured(root: str) -> bool:
    gateway = _config(root).get("gateway")
    return isinstance(gateway, dict) and gateway.get("multiplex_profiles") is True


def _absolute(path: str, user_home: str) -> str:
    if path == "~" or path.startswith(("~/", "~\\")):
        path = os.path.join(user_home, path[2:])
    return os.path.normpath(os.path.abspath(path))


def _same(a: str, b: str) -> bool:
    return os.path.normcase(same_home(a)) == os.path.normcase(same_home(b))


def _within(path: str, folder: str) -> bool:
    path, folder = os.path.normcase(same_home(path)), os.path.normcase(same_home(folder))
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
