"""Acting on Hermes' own gateway units for a take-over and its give-back (hermes-native-services,
"Implications for init and take-over"): one small interface, one implementation per service manager, every
command through a `CommandRunner` (tests replace it).

- record: what the unit is now (file hash, enabled, active, the process it runs).
- gate / ungate: every restart path of the unit off (and on again) for one Hermes home, leaving a running
  gateway alone. systemd: a drop-in `ConditionPathExists=!<home>/.hermes-fleet-owned` plus that file plus
  `daemon-reload` (it survives `hermes update` and `gateway install --force`; masking cannot work for a unit in
  the user's folder). launchd: `launchctl disable` (no load at the next login) plus the owned file. Windows:
  `schtasks /Change /DISABLE` (and the Startup-folder launcher moved aside) plus the owned file.
- stop: ask the manager to stop the unit's gateway (the caller wrote Hermes' planned-stop marker first).
  systemd: `stop --no-block`, then `stopped` is asked on later passes; launchd: `bootout` (KeepAlive plus
  `--replace` would otherwise start a gateway that kills the fleet's); Windows: `/End` (the detached gateway
  hears only the marker).
- start: give the home back to the unit (systemd `reset-failed` + `start --no-block`; launchd `bootstrap`;
  Windows `/Run`); `active` tells whether it runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from fleet.service.base import CommandResult, CommandRunner, SubprocessRunner
from fleet.service.native import (
    LAUNCHD, SYSTEMD_SYSTEM, SYSTEMD_USER, WINDOWS_TASK, NativeUnit, environment_of, exec_argv,
    gate_condition, owned_file, owned_units, profile_of, resolve_homes, same_home,
)
from fleet.store.files import remove, write_atomic

COMMAND_TIMEOUT = 30.0


class UnitError(Exception):
    """A command on a native unit failed; the message says which and why."""


@dataclass(frozen=True)
class UnitFacts:
    """What `record` finds: enough to put the unit back as it was."""
    name: str
    manager: str
    path: str
    file_hash: str
    enabled: bool | None  # None: the manager cannot say
    active: bool | None  # None: the manager cannot say (a Windows task whose action returns at once)
    state: str  # the manager's own words
    main_pid: int | None  # the process the manager runs for it (None: none, or it cannot say)
    invocation: str = ""  # systemd's InvocationID
    homes: tuple[str, ...] = ()  # the homes the manager says it runs (empty: it cannot say)
    tracks_pid: bool = True  # False: the manager does not know the gateway's PID (Windows)

    def as_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict) -> UnitFacts:
        def opt_int(key: str) -> int | None:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        def opt_bool(key: str) -> bool | None:
            value = data.get(key)
            return value if isinstance(value, bool) else None

        return cls(name=str(data.get("name", "")), manager=str(data.get("manager", "")), path=str(data.get("path", "")),
                   file_hash=str(data.get("file_hash", "")), enabled=opt_bool("enabled"), active=opt_bool("active"),
                   state=str(data.get("state", "")), main_pid=opt_int("main_pid"),
                   invocation=str(data.get("invocation") or ""), homes=tuple(str(h) for h in data.get("homes") or ()),
                   tracks_pid=data.get("tracks_pid") is not False)


@dataclass(frozen=True)
class Stopped:
    """Whether a native unit has stopped, and how it ended."""
    done: bool
    result: str = ""  # how it ended, in the manager's words (systemd's Result)
    clean: bool = True  # it ended as a planned stop does (Result=success)


@dataclass(frozen=True)
class Running:
    """Whether a native unit runs, as its service manager tells, and its main process."""
    active: bool | None  # None: the manager cannot say
    main_pid: int | None = None
    state: str = ""


def file_hash(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return "sha256:" + hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return ""


def write_owned(home: str, unit: str, state_dir: str) -> None:
    """`<home>/.hermes-fleet-owned`: the file the gate tests; it names every unit gated for the home."""
    units = sorted(set(owned_units(home)) | {unit})
    data = {"owner": "hermes-fleet", "state_dir": state_dir, "units": units, "written_at": time.time()}
    write_atomic(owned_file(home), (json.dumps(data, sort_keys=True) + "\n").encode(), 0o644)


def drop_owned(home: str, unit: str) -> None:
    """Forget `unit` in the owned file; the file goes with the last unit."""
    left = [u for u in owned_units(home) if u != unit]
    if left:
        data = {"owner": "hermes-fleet", "units": left, "written_at": time.time()}
        write_atomic(owned_file(home), (json.dumps(data, sort_keys=True) + "\n").encode(), 0o644)
    else:
        remove(owned_file(home))


class UnitManager(ABC):
    """One service manager's way of doing the steps; `hint` tells a person where to look."""

    def __init__(self, runner: CommandRunner):
        self.runner = runner

    def _run(self, argv: list[str], *, ok: tuple[int, ...] = (0,)) -> CommandResult:
        result = self.runner.run(argv, timeout=COMMAND_TIMEOUT)
        if result.returncode not in ok:
            raise UnitError(f"`{' '.join(argv)}` failed: {result.first_error_line()}")
        return result

    @abstractmethod
    def record(self, unit: NativeUnit) -> UnitFacts: ...

    @abstractmethod
    def gate(self, unit: NativeUnit, home: str, state_dir: str) -> None: ...

    @abstractmethod
    def ungate(self, unit: NativeUnit, home: str, facts: UnitFacts) -> None: ...

    @abstractmethod
    def stop(self, unit: NativeUnit) -> None: ...

    @abstractmethod
    def stopped(self, unit: NativeUnit) -> Stopped: ...

    @abstractmethod
    def start(self, unit: NativeUnit, facts: UnitFacts) -> None: ...

    @abstractmethod
    def running(self, unit: NativeUnit) -> Running: ...

    @abstractmethod
    def hint(self, unit: NativeUnit) -> str: ...


# ------------------------------------------------------------------------------- systemd


SHOW_PROPERTIES = ("Id,LoadState,ActiveState,SubState,MainPID,InvocationID,Result,FragmentPath,DropInPaths,"
                   "Environment,ExecStart")
_ARGV = re.compile(r"argv\[\]=(.*?) ;")


class SystemdUnits(UnitManager):
    def __init__(self, runner: CommandRunner, *, system: bool = False):
        super().__init__(runner)
        self.system = system

    def _ctl(self, *args: str) -> list[str]:
        return ["systemctl", *(() if self.system else ("--user",)), *args]

    def show(self, unit: NativeUnit, props: str = SHOW_PROPERTIES) -> dict[str, str]:
        result = self._run(self._ctl("show", unit.name, "-p", props))
        out: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value
        return out

    def enabled(self, unit: NativeUnit) -> bool:
        # `is-enabled`, not UnitFileState: after `disable` the latter still said enabled (systemd 252).
        result = self.runner.run(self._ctl("is-enabled", unit.name), timeout=COMMAND_TIMEOUT)
        return result.stdout.strip() in ("enabled", "enabled-runtime", "alias", "linked", "linked-runtime")

    def record(self, unit: NativeUnit) -> UnitFacts:
        props = self.show(unit)
        if props.get("LoadState") not in ("loaded", None):
            raise UnitError(f"{unit.name}: the manager reports LoadState={props.get('LoadState')}; "
                            f"`{' '.join(self._ctl('daemon-reload'))}` may be due")
        pid = int(props.get("MainPID") or 0) or None
        return UnitFacts(name=unit.name, manager=unit.manager, path=props.get("FragmentPath") or unit.path,
                         file_hash=file_hash(props.get("FragmentPath") or unit.path), enabled=self.enabled(unit),
                         active=props.get("ActiveState") in ("active", "activating", "reloading"),
                         state=f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')}", main_pid=pid,
                         invocation=props.get("InvocationID", ""), homes=_homes_shown(props))

    def gate(self, unit: NativeUnit, home: str, state_dir: str) -> None:
        write_owned(home, unit.name, state_dir)
        conditions = _dropin_conditions(unit.dropin)
        wanted = gate_condition(home)
        if wanted not in conditions:
            conditions.append(wanted)
        os.makedirs(os.path.dirname(unit.dropin), mode=0o755, exist_ok=True)
        write_atomic(unit.dropin, _dropin_text(conditions).encode(), 0o644)
        self._run(self._ctl("daemon-reload"))

    def ungate(self, unit: NativeUnit, home: str, facts: UnitFacts) -> None:
        conditions = [c for c in _dropin_conditions(unit.dropin) if c != gate_condition(home)]
        if conditions:
            write_atomic(unit.dropin, _dropin_text(conditions).encode(), 0o644)
        else:
            remove(unit.dropin)
            try:
                os.rmdir(os.path.dirname(unit.dropin))
            except OSError:
                pass  # not empty (someone else's drop-ins) or gone
        self._run(self._ctl("daemon-reload"))
        drop_owned(home, unit.name)

    def stop(self, unit: NativeUnit) -> None:
        self._run(self._ctl("stop", "--no-block", unit.name))

    def stopped(self, unit: NativeUnit) -> Stopped:
        props = self.show(unit, "ActiveState,SubState,MainPID,Result")
        done = props.get("ActiveState") in ("inactive", "failed") and int(props.get("MainPID") or 0) == 0
        result = props.get("Result", "")
        return Stopped(done, f"{props.get('ActiveState')}/{props.get('SubState')}, Result={result}",
                       result == "success")

    def start(self, unit: NativeUnit, facts: UnitFacts) -> None:
        if facts.enabled and not self.enabled(unit):
            self._run(self._ctl("enable", unit.name))
        self.runner.run(self._ctl("reset-failed", unit.name), timeout=COMMAND_TIMEOUT)  # may have nothing to reset
        self._run(self._ctl("start", "--no-block", unit.name))

    def running(self, unit: NativeUnit) -> Running:
        props = self.show(unit, "ActiveState,SubState,MainPID")
        pid = int(props.get("MainPID") or 0) or None
        return Running(props.get("ActiveState") == "active" and pid is not None, pid,
                       f"{props.get('ActiveState')}/{props.get('SubState')}")

    def hint(self, unit: NativeUnit) -> str:
        return f"`{' '.join(self._ctl('status', unit.name))}`"


def _dropin_conditions(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    return [line.strip() for line in lines if line.strip().startswith("ConditionPathExists=")]


def _dropin_text(conditions: list[str]) -> str:
    return ("# Written by `hermes-fleet takeover`: while the fleet owns this Hermes home, this unit does not\n"
            "# start (every path: Restart=, a restart helper, `hermes gateway start`, boot). `hermes-fleet release`\n"
            "# removes it.\n[Unit]\n" + "".join(f"{c}\n" for c in conditions)
            + "# Its stop is SIGINT, which Hermes takes as planned whatever its markers say: a SIGTERM is planned\n"
              "# only while the planned-stop marker is there, and Hermes' own watcher may consume the marker first.\n"
              "[Service]\nKillSignal=SIGINT\n")


def _homes_shown(props: dict[str, str]) -> tuple[str, ...]:
    """The homes `systemctl show` says the unit runs (drop-ins merged in), empty when it does not say."""
    env_text, exec_text = props.get("Environment"), props.get("ExecStart", "")
    match = _ARGV.search(exec_text)
    if not env_text or match is None:
        return ()
    env = environment_of([env_text])
    argv = exec_argv(match.group(1))
    return resolve_homes(env.get("HERMES_HOME"), profile_of(argv), env.get("HOME") or os.path.expanduser("~"))


# ------------------------------------------------------------------------------- launchd


class LaunchdUnits(UnitManager):
    """A LaunchAgent in the user's GUI domain (`gui/<uid>`)."""

    def __init__(self, runner: CommandRunner, *, uid: int | None = None):
        super().__init__(runner)
        self.domain = f"gui/{os.getuid() if uid is None and hasattr(os, 'getuid') else uid}"

    def _target(self, unit: NativeUnit) -> str:
        return f"{self.domain}/{unit.name}"

    def _print(self, unit: NativeUnit) -> Running:
        result = self.runner.run(["launchctl", "print", self._target(unit)], timeout=COMMAND_TIMEOUT)
        if not result.ok:
            return Running(False, None, "not loaded")
        state = re.search(r"^\s*state = (\S+)", result.stdout, re.MULTILINE)
        pid = re.search(r"^\s*pid = (\d+)", result.stdout, re.MULTILINE)
        words = state.group(1) if state else "loaded"
        return Running(words == "running", int(pid.group(1)) if pid else None, words)

    def enabled(self, unit: NativeUnit) -> bool:
        result = self.runner.run(["launchctl", "print-disabled", self.domain], timeout=COMMAND_TIMEOUT)
        pattern = rf'"{re.escape(unit.name)}"\s*=>\s*(disabled|true)\b'
        return not re.search(pattern, result.stdout)

    def record(self, unit: NativeUnit) -> UnitFacts:
        now = self._print(unit)
        return UnitFacts(name=unit.name, manager=unit.manager, path=unit.path, file_hash=file_hash(unit.path),
                         enabled=self.enabled(unit), active=now.active, state=now.state, main_pid=now.main_pid)

    def gate(self, unit: NativeUnit, home: str, state_dir: str) -> None:
        write_owned(home, unit.name, state_dir)
        self._run(["launchctl", "disable", self._target(unit)])

    def ungate(self, unit: NativeUnit, home: str, facts: UnitFacts) -> None:
        if facts.enabled is not False:
            self._run(["launchctl", "enable", self._target(unit)])
        drop_owned(home, unit.name)

    def stop(self, unit: NativeUnit) -> None:
        # bootout, not a kill: with KeepAlive, launchd would start `gateway run --replace`, which kills the
        # fleet's gateway. 3 and 113: it was not loaded.
        self._run(["launchctl", "bootout", self._target(unit)], ok=(0, 3, 113))

    def stopped(self, unit: NativeUnit) -> Stopped:
        now = self._print(unit)
        return Stopped(now.state == "not loaded", "booted out" if now.state == "not loaded" else now.state)

    def start(self, unit: NativeUnit, facts: UnitFacts) -> None:
        if self._print(unit).state == "not loaded":
            self._run(["launchctl", "bootstrap", self.domain, unit.path])  # RunAtLoad starts it
        else:
            self._run(["launchctl", "kickstart", self._target(unit)])

    def running(self, unit: NativeUnit) -> Running:
        return self._print(unit)

    def hint(self, unit: NativeUnit) -> str:
        return f"`launchctl print {self._target(unit)}`"


# ------------------------------------------------------------------------------- Windows


class WindowsTasks(UnitManager):
    """A Scheduled Task `Hermes_Gateway[_<suffix>]` whose action starts the gateway detached (it returns at once,
    so the task never knows the gateway's PID: the caller goes by Hermes' lock). Hermes' Startup-folder fallback
    launcher, when there is one, is moved aside while the fleet owns the home."""

    def __init__(self, runner: CommandRunner, *, startup_dir: str | None = None):
        super().__init__(runner)
        self.startup_dir = startup_dir or _startup_dir()

    def _query(self, unit: NativeUnit) -> dict[str, str]:
        result = self.runner.run(["schtasks", "/Query", "/TN", unit.name, "/FO", "LIST", "/V"], timeout=COMMAND_TIMEOUT)
        if not result.ok:
            return {}
        out: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in out:
                out[key.strip()] = value.strip()
        return out

    def _launcher(self, unit: NativeUnit) -> str:
        return os.path.join(self.startup_dir, f"{unit.name}.vbs")

    def record(self, unit: NativeUnit) -> UnitFacts:
        info = self._query(unit)
        if not info and not os.path.exists(self._launcher(unit)):
            raise UnitError(f"{unit.name}: no such scheduled task, and no Startup-folder launcher")
        state = info.get("Scheduled Task State", "")
        return UnitFacts(name=unit.name, manager=unit.manager, path=unit.path, file_hash=file_hash(unit.path),
                         enabled=(state.lower() != "disabled") if state else None, active=None,
                         state=info.get("Status", "startup launcher"), main_pid=None, tracks_pid=False)

    def gate(self, unit: NativeUnit, home: str, state_dir: str) -> None:
        write_owned(home, unit.name, state_dir)
        if self._query(unit):
            self._run(["schtasks", "/Change", "/TN", unit.name, "/DISABLE"])
        launcher = self._launcher(unit)
        if os.path.exists(launcher):
            os.replace(launcher, launcher + ".hermes-fleet-disabled")

    def ungate(self, unit: NativeUnit, home: str, facts: UnitFacts) -> None:
        if facts.enabled is not False and self._query(unit):
            self._run(["schtasks", "/Change", "/TN", unit.name, "/ENABLE"])
        aside = self._launcher(unit) + ".hermes-fleet-disabled"
        if os.path.exists(aside):
            os.replace(aside, self._launcher(unit))
        drop_owned(home, unit.name)

    def stop(self, unit: NativeUnit) -> None:
        # The task's action returned long ago: ending it stops nothing. The planned-stop marker, which the
        # caller wrote, is the only stop a gateway on Windows hears.
        if self._query(unit).get("Status", "").lower() == "running":
            self._run(["schtasks", "/End", "/TN", unit.name], ok=(0, 1))

    def stopped(self, unit: NativeUnit) -> Stopped:
        return Stopped(True, "the gateway's own lock tells")

    def start(self, unit: NativeUnit, facts: UnitFacts) -> None:
        if self._query(unit):
            self._run(["schtasks", "/Run", "/TN", unit.name])
        elif os.path.exists(self._launcher(unit)):
            self._run(["wscript.exe", "//B", "//Nologo", self._launcher(unit)])

    def running(self, unit: NativeUnit) -> Running:
        return Running(None, None, self._query(unit).get("Status", ""))

    def hint(self, unit: NativeUnit) -> str:
        return f'`schtasks /Query /TN "{unit.name}" /V /FO LIST`'


def _startup_dir() -> str:
    appdata = os.environ.get("APPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Roaming")
    return os.path.join(appdata, "Microsoft", "Windows", "Start Menu", "Programs", "Startup")


def command_runner() -> CommandRunner:
    """The subprocess runner; on Windows its commands get no console window (CREATE_NO_WINDOW)."""
    return SubprocessRunner(creationflags=0x08000000 if sys.platform == "win32" else 0)


def manager_for(unit: NativeUnit, runner: CommandRunner) -> UnitManager:
    if unit.manager == SYSTEMD_USER:
        return SystemdUnits(runner)
    if unit.manager == SYSTEMD_SYSTEM:
        return SystemdUnits(runner, system=True)
    if unit.manager == LAUNCHD:
        return LaunchdUnits(runner)
    if unit.manager == WINDOWS_TASK:
        return WindowsTasks(runner)
    raise UnitError(f"{unit.name}: unknown service manager {unit.manager!r}")


def serves_home(facts: UnitFacts, unit: NativeUnit, home: str) -> bool:
    """The manager confirms what the files say: the unit runs `home` (when the manager can tell)."""
    return same_home(home) in (facts.homes or unit.homes)

