"""The small interface every OS service mechanism implements, and the command seam.

A `ServiceManager` knows one mechanism (a systemd unit, a launchd agent, a Windows
service, a Scheduled Task, a Startup-folder launcher): the files it writes (`render`), the
steps that register, start, stop and remove it, and how to read its state back
(`status`). It decides nothing about *whether* to install; `fleet.service.lifecycle`
drives it. Every external command goes through a `CommandRunner`, which tests replace.
"""

from __future__ import annotations

import locale
import os
import shlex
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class CommandResult:
    """How an external command ended: its exit status and what it printed."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def first_error_line(self) -> str:
        for text in (self.stderr, self.stdout):
            for line in text.splitlines():
                if line.strip():
                    return line.strip()
        return f"exit status {self.returncode}"


class CommandRunner(Protocol):
    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> CommandResult: ...


# Exit codes the runner reports when the command could not run at all (shell conventions).
RC_NOT_FOUND = 127
RC_TIMEOUT = 124


class SubprocessRunner:
    """Runs a command and waits for it; never raises for a failing or missing command.

    Output is decoded with `locale.getencoding()` (the ANSI code page on Windows), not the
    preferred encoding: under Python's UTF-8 mode the latter says utf-8 while schtasks and
    sc still write cp932 or cp1252.
    """

    def __init__(self, creationflags: int = 0):
        # On Windows select.default_runner() passes CREATE_NO_WINDOW: no console flashes up
        # for schtasks or sc when the CLI itself runs without one.
        self.creationflags = creationflags

    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> CommandResult:
        args = tuple(argv)
        try:
            proc = subprocess.run(
                args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, creationflags=self.creationflags,
            )
        except FileNotFoundError as exc:
            return CommandResult(args, RC_NOT_FOUND, "", f"{args[0]}: not found ({exc.strerror})")
        except PermissionError as exc:
            return CommandResult(args, 126, "", f"{args[0]}: cannot run ({exc.strerror})")
        except subprocess.TimeoutExpired:
            return CommandResult(args, RC_TIMEOUT, "", f"{args[0]}: no answer within {timeout:g}s")
        return CommandResult(args, proc.returncode, decode_output(proc.stdout), decode_output(proc.stderr))


def decode_output(data: bytes | None) -> str:
    if not data:
        return ""
    return data.decode(locale.getencoding(), errors="replace")


@dataclass(frozen=True)
class Command:
    """One external command of an install/start/stop/uninstall sequence."""

    argv: tuple[str, ...]
    ok_returncodes: tuple[int, ...] = (0,)
    may_fail: bool = False  # a failure is shown but does not stop the sequence
    # Tried when the command fails with one of `fallback_on` (launchd: gui/ -> user/ domain).
    fallback: Command | None = None
    fallback_on: tuple[int, ...] = ()
    timeout: float = 120.0
    windows: bool = False  # render the command line the Windows way

    def display(self) -> str:
        if self.windows:
            return subprocess.list2cmdline(self.argv)
        return shlex.join(self.argv)


@dataclass(frozen=True)
class ApiCall:
    """A step that is a function call rather than a command (pywin32, a file operation)."""

    description: str
    invoke: Callable[[], None] = field(compare=False)

    def display(self) -> str:
        return self.description


Step = Command | ApiCall


# ---------------------------------------------------------------- what to register


@dataclass(frozen=True)
class Artifact:
    """A file a mechanism writes: exact bytes, mode and where."""

    path: str
    content: str
    mode: int | None = 0o644  # None where the OS has no POSIX modes (Windows)
    encoding: str = "utf-8"  # the task XML is UTF-16 with a BOM

    @property
    def data(self) -> bytes:
        return self.content.encode(self.encoding)


@dataclass(frozen=True)
class ServiceTarget:
    """What gets registered: one controller for one fleet file and state directory."""

    fleet_name: str
    fleet_file: str  # absolute
    state_dir: str  # absolute
    python: str  # absolute interpreter the controller runs under (a venv's, unresolved)
    system: bool = False  # a system-wide registration (Linux: /etc/systemd/system with User=)
    run_as: str | None = None  # the account the controller runs as, when that must be named

    @property
    def suffix(self) -> str:
        """'' for the fleet named 'default', else '-<name>': the per-fleet name suffix."""
        return "" if self.fleet_name in ("", "default") else f"-{self.fleet_name}"

    def controller_args(self) -> tuple[str, ...]:
        """The controller's arguments after the interpreter."""
        return ("-m", "fleet.cli.main", "controller", "run", "-f", self.fleet_file, "--state-dir", self.state_dir)

    def controller_argv(self, python: str | None = None) -> tuple[str, ...]:
        return (python or self.python, *self.controller_args())

    @property
    def logs_dir(self) -> str:
        return join_path(self.state_dir, "logs", windows=is_windows_path(self.state_dir))

    @property
    def controller_log(self) -> str:
        return join_path(self.logs_dir, "controller.log", windows=is_windows_path(self.state_dir))


# ---------------------------------------------------------------- what is registered


NOT_INSTALLED = "not installed: run `hermes-fleet service install`"


@dataclass(frozen=True)
class RegistrationStatus:
    """The controller's registration with one OS mechanism, as the service manager reports it."""

    mechanism: str  # systemd-user | systemd-system | launchd | windows-service | scheduled-task | startup-folder
    name: str  # unit, label, service or task name
    location: str  # where the registration lives (file, registry key, task path)
    installed: bool
    enabled: bool | None = None  # starts by itself at boot/logon; None when unknowable
    running: bool | None = None  # as the service manager sees it; None when it cannot tell
    pid: int | None = None  # the process the service manager tracks
    restarts: int | None = None  # restarts the service manager performed
    state: str = ""  # the manager's own words (ActiveState/SubState, launchd state, ...)
    current: bool | None = None  # the registration is what `install` would write now
    notes: tuple[str, ...] = ()  # facts worth showing (linger, no restart-on-crash, ...)
    advice: tuple[str, ...] = ()  # what to do about it

    def as_json(self) -> dict:
        return {
            "mechanism": self.mechanism, "name": self.name, "location": self.location,
            "installed": self.installed, "enabled": self.enabled, "running": self.running,
            "pid": self.pid, "restarts": self.restarts, "state": self.state, "current": self.current,
            "notes": list(self.notes), "advice": list(self.advice),
        }


class ServiceManager(ABC):
    """One OS mechanism that keeps the controller running."""

    mechanism: str = ""
    #: whether the OS brings the controller back after it dies
    restart_on_crash: bool = True
    #: tried when registering this mechanism fails (Windows: task -> Startup folder)
    fallback_manager: ServiceManager | None = None

    def __init__(self, target: ServiceTarget, runner: CommandRunner):
        self.target = target
        self.runner = runner

    @property
    @abstractmethod
    def name(self) -> str:
        """Unit / label / service / task name."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the registration lives, for humans."""

    @abstractmethod
    def render(self) -> list[Artifact]:
        """The files this mechanism needs, exactly as they will be written."""

    @abstractmethod
    def install_steps(self, before: RegistrationStatus, files_changed: bool) -> list[Step]:
        """Register (or re-register) and start; the files are already written."""

    @abstractmethod
    def uninstall_steps(self) -> list[Step]:
        """Stop the controller and deregister (the files are removed afterwards)."""

    @abstractmethod
    def start_steps(self) -> list[Step]: ...

    @abstractmethod
    def stop_steps(self) -> list[Step]: ...

    @abstractmethod
    def restart_steps(self) -> list[Step]: ...

    @abstractmethod
    def status(self) -> RegistrationStatus:
        """Read the registration back from the service manager (read-only commands only)."""

    def registration_current(self) -> bool | None:
        """Whether what is registered is what `render` gives now (files by default)."""
        artifacts = self.render()
        if not artifacts:
            return None
        return all(file_matches(a) for a in artifacts)

    def conflicts(self) -> list[str]:
        """Registrations of hermes-agent's own per-profile gateway services found here: a gateway
        refuses to start while its native unit is installed and running."""
        return []

    def preflight(self) -> str | None:
        """Why this mechanism cannot be used on this host right now, or None (checked before install)."""
        return None

    def owns_process(self, pid: int) -> bool | None:
        """Whether `pid` is the process this registration started; None when it cannot tell."""
        return None

    def after_install(self, ask: Callable[[str], bool]) -> list[str]:
        """Checks after a successful install (Linux linger); returns lines to show."""
        return []

    def after_uninstall_steps(self) -> list[Step]:
        """Steps after the files are removed (systemd: daemon-reload)."""
        return []

    def after_install_preview(self) -> list[str]:
        """What `after_install` would do, for --dry-run."""
        return []

    def diagnosis(self) -> list[str]:
        """Where to look when the controller did not come up (log tail, journal command)."""
        return []


# ---------------------------------------------------------------- small helpers


def tail_lines(path: str, count: int = 30) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return [f"controller log {path}: not readable ({exc.strerror})"]
    return [f"last controller log lines ({path}):"] + ["  " + line for line in text.splitlines()[-count:]]


def file_matches(artifact: Artifact) -> bool:
    try:
        with open(artifact.path, "rb") as fh:
            if fh.read() != artifact.data:
                return False
        return artifact.mode is None or (os.stat(artifact.path).st_mode & 0o777) == artifact.mode
    except OSError:
        return False


def is_windows_path(path: str) -> bool:
    return len(path) >= 2 and (path[1] == ":" or path.startswith("\\\\"))


def join_path(*parts: str, windows: bool) -> str:
    sep = "\\" if windows else "/"
    out = parts[0].rstrip("\\/") if len(parts[0]) > 1 else parts[0]
    for part in parts[1:]:
        out = out + sep + part.strip("\\/")
    return out


def validate_path_text(label: str, path: str) -> None:
    """Paths with control characters cannot be written into any unit, plist or task safely."""
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ServiceError(f"the {label} path contains a control character: {path!r}")


def current_python() -> str:
    # Not resolved: a venv's bin/python is a symlink whose target would lose the venv.
    return os.path.abspath(sys.executable)


class ServiceError(Exception):
    """A problem the user has to fix; the message says what and how."""
