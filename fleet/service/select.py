"""Choose the service mechanism for this host (or for a named platform, to render it).

The only place in the service layer that asks which OS it runs on.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Mapping

from fleet.service.base import CommandRunner, ServiceError, ServiceManager, ServiceTarget, SubprocessRunner
from fleet.service.launchd import LaunchdManager
from fleet.service.systemd import DEFAULT_SYSTEM_UNIT_DIR, SystemdManager, systemd_version
from fleet.service.windows_common import WindowsHost, pythonw_for
from fleet.service.windows_service import ScmApi, WindowsServiceManager
from fleet.service.windows_startup import StartupFolderManager
from fleet.service.windows_task import ScheduledTaskManager

PLATFORMS = ("linux", "macos", "windows")
WINDOWS_MECHANISMS = ("windows-service", "scheduled-task", "startup-folder")


def host_platform() -> str:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "macos"
    if sys.platform in ("win32", "cygwin"):
        return "windows"
    return sys.platform


def default_runner() -> CommandRunner:
    """The subprocess runner; on Windows its commands get no console window."""
    return SubprocessRunner(creationflags=0x08000000 if host_platform() == "windows" else 0)


def current_user(environ: Mapping[str, str]) -> str:
    for key in ("USER", "USERNAME", "LOGNAME"):
        if environ.get(key):
            return environ[key]
    return getpass.getuser()


def home_dir(environ: Mapping[str, str]) -> str:
    return environ.get("HOME") or environ.get("USERPROFILE") or os.path.expanduser("~")


class UnavailableScm:
    """Stands in for the SCM where it cannot be reached (another OS, no pywin32)."""

    def __init__(self, reason: str):
        self.reason = reason

    def query(self, name):
        return None

    def __getattr__(self, attr):
        def unavailable(*args, **kwargs):
            raise ServiceError(f"the Windows service manager is not available here: {self.reason}")
        return unavailable


def windows_host_from(environ: Mapping[str, str], target: ServiceTarget, *, on_windows: bool) -> WindowsHost:
    user = current_user(environ)
    account = f"{environ.get('USERDOMAIN') or environ.get('COMPUTERNAME') or '.'}\\{user}"
    if not on_windows:
        # Rendering for review on another OS: paths derived from this host, clearly illustrative.
        home = home_dir(environ)
        return WindowsHost(account=account, appdata=os.path.join(home, "AppData", "Roaming"), is_admin=False,
                           pythonw=pythonw_for(target.python), service_python=target.python)
    from fleet.service.windows_common import windows_is_admin

    in_venv = sys.prefix != sys.base_prefix
    site_dirs: tuple[str, ...] = ()
    if in_venv:
        import site

        site_dirs = tuple(p for p in site.getsitepackages() if p.lower().endswith("site-packages"))
    return WindowsHost(
        account=account,
        appdata=environ.get("APPDATA") or os.path.join(home_dir(environ), "AppData", "Roaming"),
        is_admin=windows_is_admin(),
        pythonw=pythonw_for(target.python),
        service_python=getattr(sys, "_base_executable", sys.executable) if in_venv else sys.executable,
        site_dirs=site_dirs,
    )


def default_scm(on_windows: bool) -> ScmApi | None:
    if not on_windows:
        return None
    try:
        from fleet.service.winscm import Pywin32ScmApi
    except ImportError:
        return None
    return Pywin32ScmApi()


def managers_for(
    target: ServiceTarget, *, platform: str, runner: CommandRunner, environ: Mapping[str, str] | None = None,
    mechanism: str | None = None, linger_mode: str = "report", password: Callable[[str], str | None] | None = None,
    scm: ScmApi | None = None, windows_host: WindowsHost | None = None, interactive: bool = False,
    systemd_unit_dir: str | None = None,
) -> list[ServiceManager]:
    """The candidate mechanisms, preferred first: `install` uses the first, `status` and
    `uninstall` look at every one (on Windows an earlier install may have fallen back)."""
    env = os.environ if environ is None else environ
    on_host = platform == host_platform()
    if platform not in PLATFORMS:
        raise ServiceError(f"unknown platform {platform!r}: choose one of {', '.join(PLATFORMS)}")
    if mechanism and platform != "windows":
        raise ServiceError("--mechanism chooses among the Windows mechanisms; Linux uses systemd, macOS launchd")
    if platform == "linux":
        return [_systemd_manager(target, runner, env, on_host=on_host, linger_mode=linger_mode,
                                 unit_dir=systemd_unit_dir)]
    if platform == "macos":
        return [_launchd_manager(target, runner, env)]
    return _windows_managers(target, runner, env, on_host=on_host, mechanism=mechanism, password=password, scm=scm,
                             windows_host=windows_host, interactive=interactive)


def _windows_managers(
    target: ServiceTarget, runner: CommandRunner, env: Mapping[str, str], *, on_host: bool, mechanism: str | None,
    password: Callable[[str], str | None] | None, scm: ScmApi | None, windows_host: WindowsHost | None,
    interactive: bool,
) -> list[ServiceManager]:
    host = windows_host or windows_host_from(env, target, on_windows=on_host)
    scm_api = scm if scm is not None else default_scm(on_host)
    service = WindowsServiceManager(target, runner, host=host, scm=scm_api or _unavailable_scm(on_host),
                                    password=password or (lambda account: None))
    task = ScheduledTaskManager(target, runner, host=host)
    startup = StartupFolderManager(target, runner, host=host)
    wanted = mechanism or ("windows-service" if target.system else None)
    if wanted:
        _check_windows_mechanism(wanted, host, on_host=on_host, scm_available=scm_api is not None)
        return _wanted_first(wanted, service, task, startup)
    # Auto: a real service when elevated, pywin32 is there and a password can be asked for;
    # otherwise the per-user task (which falls back to the Startup folder by itself).
    if on_host and host.is_admin and scm_api is not None and (interactive or password is not None):
        return [service, task, startup]
    return [task, service, startup]


def _wanted_first(wanted: str, service: WindowsServiceManager, task: ScheduledTaskManager,
                  startup: StartupFolderManager) -> list[ServiceManager]:
    """The mechanism asked for first; the others follow, for `status` and `uninstall` to look at."""
    chosen: ServiceManager = {"windows-service": service, "scheduled-task": task, "startup-folder": startup}[wanted]
    if wanted != "scheduled-task":
        task.fallback_manager = None
    return [chosen] + [m for m in (service, task, startup) if m is not chosen]


def _unavailable_scm(on_host: bool) -> UnavailableScm:
    if on_host:
        return UnavailableScm("pywin32 is not installed (pip install 'hermes-fleet[windows]')")
    return UnavailableScm("rendering for review only")


def _systemd_manager(target: ServiceTarget, runner: CommandRunner, env: Mapping[str, str], *, on_host: bool,
                     linger_mode: str, unit_dir: str | None) -> SystemdManager:
    home = home_dir(env)
    if target.system:
        unit_dir = unit_dir or DEFAULT_SYSTEM_UNIT_DIR
    else:
        config_home = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        unit_dir = unit_dir or os.path.join(config_home, "systemd", "user")
    version = systemd_version(runner) if on_host else None
    return SystemdManager(target, runner, unit_dir=unit_dir, home=home, user=current_user(env), version=version,
                          system=target.system, linger_mode=linger_mode)


def _launchd_manager(target: ServiceTarget, runner: CommandRunner, env: Mapping[str, str]) -> LaunchdManager:
    if target.system:
        raise ServiceError("--system is not supported on macOS: the controller runs as a LaunchAgent of your user")
    home = home_dir(env)
    uid = os.getuid() if hasattr(os, "getuid") else 501
    return LaunchdManager(target, runner, agents_dir=os.path.join(home, "Library", "LaunchAgents"), home=home, uid=uid)


def _check_windows_mechanism(wanted: str, host: WindowsHost, *, on_host: bool, scm_available: bool) -> None:
    """Refuses a mechanism that is unknown, or a Windows service this host cannot register."""
    if wanted not in WINDOWS_MECHANISMS:
        raise ServiceError(f"unknown mechanism {wanted!r}: choose one of {', '.join(WINDOWS_MECHANISMS)}")
    if wanted != "windows-service" or not on_host:
        return
    if not host.is_admin:
        raise ServiceError("a Windows service needs administrator rights: run from an elevated prompt, "
                           "or leave out --mechanism/--system for a per-user Scheduled Task")
    if not scm_available:
        raise ServiceError("a Windows service needs pywin32: pip install 'hermes-fleet[windows]'")
