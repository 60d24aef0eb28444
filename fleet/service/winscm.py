"""`ScmApi` over pywin32 (Windows only; needs the `windows` extra).

Imported only on Windows, by fleet.service.select. Everything that can be tested without
Windows lives in fleet.service.windows_service; this module is the thin layer of pywin32 calls.
"""

from __future__ import annotations

import time

from fleet.service.windows_service import ScmServiceInfo, ScmServiceSpec

try:
    import pywintypes  # pywin32's error type lives here
    import win32security
    import win32service
except ImportError as exc:  # pragma: no cover - only reached on Windows without pywin32
    raise ImportError("the Windows service mode needs pywin32: pip install 'hermes-fleet[windows]'") from exc

_START_TYPES = {
    win32service.SERVICE_AUTO_START: "auto", win32service.SERVICE_DEMAND_START: "demand",
    win32service.SERVICE_DISABLED: "disabled", win32service.SERVICE_BOOT_START: "boot",
    win32service.SERVICE_SYSTEM_START: "system",
}
_STATES = {
    win32service.SERVICE_STOPPED: "stopped", win32service.SERVICE_START_PENDING: "start-pending",
    win32service.SERVICE_STOP_PENDING: "stop-pending", win32service.SERVICE_RUNNING: "running",
    win32service.SERVICE_CONTINUE_PENDING: "continue-pending", win32service.SERVICE_PAUSE_PENDING: "pause-pending",
    win32service.SERVICE_PAUSED: "paused",
}
ERROR_SERVICE_DOES_NOT_EXIST = 1060
ERROR_SERVICE_NOT_ACTIVE = 1062


class Pywin32ScmApi:
    def _manager(self, access: int = win32service.SC_MANAGER_ALL_ACCESS):
        return win32service.OpenSCManager(None, None, access)

    def _open(self, name: str, access: int = win32service.SERVICE_ALL_ACCESS):
        hscm = self._manager(win32service.SC_MANAGER_CONNECT)
        try:
            return win32service.OpenService(hscm, name, access)
        finally:
            win32service.CloseServiceHandle(hscm)

    def query(self, name: str) -> ScmServiceInfo | None:
        try:
            hs = self._open(name, win32service.SERVICE_QUERY_CONFIG | win32service.SERVICE_QUERY_STATUS)
        except pywintypes.error as exc:
            if exc.winerror == ERROR_SERVICE_DOES_NOT_EXIST:
                return None
            raise
        try:
            config = win32service.QueryServiceConfig(hs)
            status = win32service.QueryServiceStatusEx(hs)
            failure = win32service.QueryServiceConfig2(hs, win32service.SERVICE_CONFIG_FAILURE_ACTIONS) or {}
            flag = win32service.QueryServiceConfig2(hs, win32service.SERVICE_CONFIG_FAILURE_ACTIONS_FLAG)
            delayed = win32service.QueryServiceConfig2(hs, win32service.SERVICE_CONFIG_DELAYED_AUTO_START_INFO)
        finally:
            win32service.CloseServiceHandle(hs)
        actions = failure.get("Actions") or ()
        return ScmServiceInfo(
            binary_path=config[3], account=config[7] or "", start_type=_START_TYPES.get(config[1], str(config[1])),
            delayed_start=bool(delayed), state=_STATES.get(status["CurrentState"], str(status["CurrentState"])),
            pid=status.get("ProcessId") or None, failure_reset_s=failure.get("ResetPeriod"),
            failure_delays_ms=tuple(delay for kind, delay in actions if kind == win32service.SC_ACTION_RESTART),
            failure_actions_on_non_crash=bool(flag),
        )

    def create(self, spec: ScmServiceSpec, password: str | None) -> None:
        hscm = self._manager()
        try:
            hs = win32service.CreateService(
                hscm, spec.name, spec.display_name, win32service.SERVICE_ALL_ACCESS,
                win32service.SERVICE_WIN32_OWN_PROCESS, win32service.SERVICE_AUTO_START,
                win32service.SERVICE_ERROR_NORMAL, spec.binary_path, None, 0, None, spec.account, password,
            )
        finally:
            win32service.CloseServiceHandle(hscm)
        try:
            self._describe(hs, spec)
        finally:
            win32service.CloseServiceHandle(hs)

    def update(self, spec: ScmServiceSpec, password: str | None) -> None:
        hs = self._open(spec.name)
        try:
            win32service.ChangeServiceConfig(
                hs, win32service.SERVICE_NO_CHANGE, win32service.SERVICE_AUTO_START, win32service.SERVICE_NO_CHANGE,
                spec.binary_path, None, 0, None, spec.account, password, spec.display_name,
            )
            self._describe(hs, spec)
        finally:
            win32service.CloseServiceHandle(hs)

    def _describe(self, hs, spec: ScmServiceSpec) -> None:
        win32service.ChangeServiceConfig2(hs, win32service.SERVICE_CONFIG_DESCRIPTION, spec.description)
        win32service.ChangeServiceConfig2(hs, win32service.SERVICE_CONFIG_DELAYED_AUTO_START_INFO, spec.delayed_start)

    def set_failure_actions(self, name: str, reset_period_s: int, restart_delays_ms: tuple[int, ...]) -> None:
        hs = self._open(name)
        try:
            win32service.ChangeServiceConfig2(hs, win32service.SERVICE_CONFIG_FAILURE_ACTIONS, {
                "ResetPeriod": reset_period_s, "RebootMsg": None, "Command": None,
                "Actions": [(win32service.SC_ACTION_RESTART, ms) for ms in restart_delays_ms],
            })
        finally:
            win32service.CloseServiceHandle(hs)

    def set_failure_actions_flag(self, name: str, enabled: bool) -> None:
        hs = self._open(name)
        try:
            win32service.ChangeServiceConfig2(hs, win32service.SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, bool(enabled))
        finally:
            win32service.CloseServiceHandle(hs)

    def start(self, name: str) -> None:
        hs = self._open(name)
        try:
            win32service.StartService(hs, None)
        finally:
            win32service.CloseServiceHandle(hs)

    def stop(self, name: str, timeout: float) -> None:
        hs = self._open(name)
        try:
            try:
                win32service.ControlService(hs, win32service.SERVICE_CONTROL_STOP)
            except pywintypes.error as exc:
                if exc.winerror != ERROR_SERVICE_NOT_ACTIVE:
                    raise
            deadline = time.monotonic() + timeout
            while win32service.QueryServiceStatusEx(hs)["CurrentState"] != win32service.SERVICE_STOPPED:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"service {name} did not stop within {timeout:g}s")
                time.sleep(0.2)
        finally:
            win32service.CloseServiceHandle(hs)

    def delete(self, name: str) -> None:
        hs = self._open(name)
        try:
            win32service.DeleteService(hs)
        finally:
            win32service.CloseServiceHandle(hs)

    def grant_service_logon_right(self, account: str) -> None:
        sid = win32security.LookupAccountName(None, account)[0]
        policy = win32security.LsaOpenPolicy(None, win32security.POLICY_ALL_ACCESS)
        try:
            win32security.LsaAddAccountRights(policy, sid, ["SeServiceLogonRight"])
        finally:
            win32security.LsaClose(policy)

