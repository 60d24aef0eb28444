"""Windows: the controller under the Service Control Manager (`windows_service`), a Scheduled
Task (`windows_task`), or the Startup folder (`windows_startup`), in that order of preference
(see docs/service.md for every setting). This module holds what the three share: the user
session they register for and the hidden launch of the controller under pythonw.
"""

from __future__ import annotations

import ntpath
import posixpath
import sys
from dataclasses import dataclass

from fleet.service.base import (
    NOT_INSTALLED, CommandRunner, RegistrationStatus, ServiceManager, ServiceTarget, is_windows_path, tail_lines,
)

UTF16_BOM = "\ufeff"


def path_module(sample: str):
    # Real Windows paths are drive or UNC paths; anything else is a path of the host we
    # render on (tests, --platform windows --dry-run elsewhere).
    return ntpath if is_windows_path(sample) else posixpath


def pythonw_for(python: str) -> str:
    """pythonw.exe next to the interpreter: a GUI-subsystem program, so no console at all."""
    pm = path_module(python)
    base = pm.basename(python).lower()
    if base.startswith("pythonw"):
        return python
    return pm.join(pm.dirname(python), "pythonw.exe")


def hidden_launch_args(target: ServiceTarget, service: str) -> tuple[str, ...]:
    """Arguments after pythonw: run the CLI in-process with stdout/stderr in the log file
    (pythonw has no console streams to write to)."""
    return ("-m", "fleet.cli.logged_main", "--log-file", target.controller_log, "--service", service,
            "--", *target.controller_args()[2:])


@dataclass(frozen=True)
class WindowsHost:
    """Facts about the Windows user session that the registrations need."""

    account: str  # DOMAIN\user of the installing user
    appdata: str  # %APPDATA% (roaming): holds the Startup folder
    is_admin: bool
    pythonw: str  # the interpreter the task and the launcher run
    service_python: str  # the base interpreter that hosts the SCM service (not a venv redirector)
    site_dirs: tuple[str, ...] = ()  # the venv's site-packages, added by the service host

    @property
    def startup_dir(self) -> str:
        pm = path_module(self.appdata)
        return pm.join(self.appdata, "Microsoft", "Windows", "Start Menu", "Programs", "Startup")


class WindowsManager(ServiceManager):
    """What the three Windows mechanisms share: the user session they register for, and a controller that
    has no console (pythonw, or the SCM), so its log is the only place its output goes."""

    def __init__(self, target: ServiceTarget, runner: CommandRunner, *, host: WindowsHost):
        super().__init__(target, runner)
        self.host = host

    def _not_installed(self) -> RegistrationStatus:
        return RegistrationStatus(self.mechanism, self.name, self.location, installed=False, advice=(NOT_INSTALLED,))

    def diagnosis(self) -> list[str]:
        return tail_lines(self.target.controller_log)


def windows_is_admin() -> bool:
    """True when this process runs elevated (may register services). Windows only."""
    import ctypes

    if sys.platform != "win32":
        return False
    try:
        return bool(ctypes.windll.shell32.IsUserAnAdmin())
    except (AttributeError, OSError):
        return False
