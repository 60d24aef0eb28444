"""Windows with admin rights: a real service (pywin32, hosted by python.exe) running as the
installing user, with failure actions that restart it after 1, 2, 4, 9, 16, 25, 36, 49, 64 s
(reset after 60 s), also after non-crash failures.

Nothing here imports pywin32: the SCM is reached through `ScmApi` (the pywin32
implementation is `fleet.service.winscm.Pywin32ScmApi`, imported only on Windows).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fleet.service.base import (
    ApiCall, Artifact, CommandRunner, RegistrationStatus, ServiceError, ServiceTarget, Step,
)
from fleet.service.windows_common import WindowsHost, WindowsManager

SERVICE_BASE_NAME = "HermesFleet"
# Tailscale's ladder ("mostly squares"), in ms; the last action repeats.
FAILURE_RESTART_DELAYS_MS = (1000, 2000, 4000, 9000, 16000, 25000, 36000, 49000, 64000)
FAILURE_RESET_PERIOD_S = 60


@dataclass(frozen=True)
class ScmServiceSpec:
    """The Windows service hermes-fleet registers with the Service Control Manager."""
    name: str
    display_name: str
    description: str
    binary_path: str  # the full command line the SCM runs
    account: str  # DOMAIN\user; never LocalSystem (its profile is not the user's)
    delayed_start: bool = True


@dataclass(frozen=True)
class ScmServiceInfo:
    """A registered Windows service as the Service Control Manager reports it."""
    binary_path: str
    account: str
    start_type: str  # auto | demand | disabled | boot | system
    delayed_start: bool | None
    state: str  # running | stopped | start-pending | stop-pending | paused | ...
    pid: int | None
    failure_reset_s: int | None = None
    failure_delays_ms: tuple[int, ...] = ()
    failure_actions_on_non_crash: bool | None = None


class ScmApi(Protocol):
    """The Service Control Manager calls hermes-fleet makes (pywin32 behind it on Windows)."""

    def query(self, name: str) -> ScmServiceInfo | None: ...
    def create(self, spec: ScmServiceSpec, password: str | None) -> None: ...
    def update(self, spec: ScmServiceSpec, password: str | None) -> None: ...
    def set_failure_actions(self, name: str, reset_period_s: int, restart_delays_ms: tuple[int, ...]) -> None: ...
    def set_failure_actions_flag(self, name: str, enabled: bool) -> None: ...
    def start(self, name: str) -> None: ...
    def stop(self, name: str, timeout: float) -> None: ...
    def delete(self, name: str) -> None: ...
    def grant_service_logon_right(self, account: str) -> None: ...


def service_name(target: ServiceTarget) -> str:
    return SERVICE_BASE_NAME + target.suffix


def service_host_argv(target: ServiceTarget, host: WindowsHost) -> tuple[str, ...]:
    """What the SCM runs: the base interpreter (a venv's python.exe is a redirector that
    starts another process, which the SCM would not accept as the service), told where the
    venv's packages are, hosting `fleet.service.winservice_main`."""
    bootstrap = ("import site,sys;[site.addsitedir(p) for p in sys.argv[1].split(';') if p];"
                 "from fleet.service.winservice_main import main;main(sys.argv[2:])")
    return (host.service_python, "-c", bootstrap, ";".join(host.site_dirs),
            "--service-name", service_name(target), "--python", target.python,
            "-f", target.fleet_file, "--state-dir", target.state_dir)


def sc_failure_commands(name: str) -> list[str]:
    """The sc.exe lines with the same effect, printed for administrators."""
    actions = "/".join(f"restart/{ms}" for ms in FAILURE_RESTART_DELAYS_MS)
    return [f"sc.exe failure {name} reset= {FAILURE_RESET_PERIOD_S} actions= {actions}",
            f"sc.exe failureflag {name} 1"]


class WindowsServiceManager(WindowsManager):
    mechanism = "windows-service"
    restart_on_crash = True

    def __init__(
        self, target: ServiceTarget, runner: CommandRunner, *, host: WindowsHost, scm: ScmApi,
        password: Callable[[str], str | None],
    ):
        super().__init__(target, runner, host=host)
        self.scm = scm
        self.password = password  # asked only when a step that needs it runs

    @property
    def name(self) -> str:
        return service_name(self.target)

    @property
    def location(self) -> str:
        return f"HKLM\\SYSTEM\\CurrentControlSet\\Services\\{self.name}"

    def spec(self) -> ScmServiceSpec:
        account = self.host.account
        if account.lower() in ("localsystem", "nt authority\\system", ".\\localsystem"):
            raise ServiceError("refusing to run the controller as LocalSystem: its profile, registry and "
                               "credentials are not the user's, and gateways would run as SYSTEM")
        return ScmServiceSpec(
            name=self.name, display_name=f"hermes-fleet controller ({self.target.fleet_name})",
            description=f"Keeps the Hermes gateways of {self.target.fleet_file} running (hermes-fleet).",
            binary_path=subprocess.list2cmdline(service_host_argv(self.target, self.host)), account=account,
        )

    def render(self) -> list[Artifact]:
        return []  # everything lives in the SCM database

    def registration_current(self) -> bool | None:
        info = self.scm.query(self.name)
        if info is None:
            return None
        spec = self.spec()
        return (
            info.binary_path == spec.binary_path and info.account.lower() == spec.account.lower()
            and info.start_type == "auto" and info.failure_reset_s == FAILURE_RESET_PERIOD_S
            and tuple(info.failure_delays_ms) == FAILURE_RESTART_DELAYS_MS
            and info.failure_actions_on_non_crash is True
        )

    def install_steps(self, before: RegistrationStatus, files_changed: bool) -> list[Step]:
        spec = self.spec()
        scm = self.scm
        creating = not before.installed
        steps: list[Step] = [
            ApiCall(f"grant 'Log on as a service' (SeServiceLogonRight) to {spec.account}",
                    lambda: scm.grant_service_logon_right(spec.account)),
            ApiCall(
                f"{'create' if creating else 'update'} service {spec.name}: auto start (delayed), "
                f"account {spec.account}, command line: {spec.binary_path}",
                lambda: (scm.create if creating else scm.update)(spec, self.password(spec.account)),
            ),
            ApiCall(
                "set failure actions: restart after "
                + ", ".join(f"{ms // 1000}" for ms in FAILURE_RESTART_DELAYS_MS)
                + f" s, reset period {FAILURE_RESET_PERIOD_S} s",
                lambda: scm.set_failure_actions(spec.name, FAILURE_RESET_PERIOD_S, FAILURE_RESTART_DELAYS_MS),
            ),
            ApiCall("apply the failure actions to non-crash failures too (FailureActionsOnNonCrashFailures)",
                    lambda: scm.set_failure_actions_flag(spec.name, True)),
        ]
        if before.running:
            def restart() -> None:
                scm.stop(spec.name, 60)
                scm.start(spec.name)

            steps.append(ApiCall(f"restart service {spec.name}", restart))
        else:
            steps.append(ApiCall(f"start service {spec.name}", lambda: scm.start(spec.name)))
        return steps

    def uninstall_steps(self) -> list[Step]:
        name, scm = self.name, self.scm
        return [
            ApiCall(f"stop service {name} (gateways keep running)", lambda: _stop_if_running(scm, name)),
            ApiCall(f"delete service {name}", lambda: scm.delete(name)),
        ]

    def start_steps(self) -> list[Step]:
        name, scm = self.name, self.scm
        return [ApiCall(f"start service {name}", lambda: scm.start(name))]

    def stop_steps(self) -> list[Step]:
        name, scm = self.name, self.scm
        return [ApiCall(f"stop service {name} (gateways keep running)", lambda: _stop_if_running(scm, name))]

    def restart_steps(self) -> list[Step]:
        name, scm = self.name, self.scm

        def restart() -> None:
            _stop_if_running(scm, name)
            scm.start(name)

        return [ApiCall(f"restart service {name}", restart)]

    def status(self) -> RegistrationStatus:
        info = self.scm.query(self.name)
        if info is None:
            return self._not_installed()
        current = self.registration_current()
        advice: list[str] = []
        if info.state != "running":
            advice.append("the service is not running: run `hermes-fleet service start`, and see the "
                          f"controller log {self.target.controller_log} and the System event log")
        if current is False:
            advice.append("the service configuration differs from what install would write now: re-run "
                          "`hermes-fleet service install` (as administrator)")
        return RegistrationStatus(
            self.mechanism, self.name, self.location, installed=True, enabled=info.start_type == "auto",
            running=info.state == "running", pid=info.pid, restarts=None, state=info.state, current=current,
            notes=(f"runs as {info.account}; the SCM restarts it after 1, 2, 4 ... 64 s on failure",),
            advice=tuple(advice),
        )

    def owns_process(self, pid: int) -> bool | None:
        info = self.scm.query(self.name)
        if info is None or not info.pid:
            return False
        return _is_descendant(pid, info.pid)

    def after_install_preview(self) -> list[str]:
        return ["equivalent failure settings with sc.exe:", *("  " + line for line in sc_failure_commands(self.name))]


def _stop_if_running(scm: ScmApi, name: str) -> None:
    info = scm.query(name)
    if info is not None and info.state not in ("stopped",):
        scm.stop(name, 60)


def _is_descendant(pid: int, ancestor: int, depth: int = 4) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        for _ in range(depth):
            if proc.pid == ancestor:
                return True
            parent = proc.parent()
            if parent is None:
                return False
            proc = parent
        return proc.pid == ancestor
    except psutil.Error:
        return False
