"""The Windows service host: what the Service Control Manager runs for `HermesFleet[-<name>]`.

The SCM starts the base interpreter with a tiny bootstrap that calls `main()` here (see
`fleet.service.windows_service.service_host_argv`). The service starts the controller
(`python -m fleet.cli.main controller run ...`) as its child and:

- on a stop or shutdown request, ends the controller process only (never its tree: the
  gateways it started are its descendants and must keep running); Windows has no SIGTERM
  handlers, and ending the controller is safe for the same reason a crash is;
- when the controller exits by itself with status 0, stops cleanly (no recovery actions);
- when it exits with any other status, raises from SvcDoRun, so the SCM records an error
  stop and applies the failure actions (restart after 1, 2, 4 ... 64 s).

Only the `ControllerHost` part runs off Windows (in tests); `main` needs pywin32.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from fleet.service.holder import ControllerHolder, read_holder, stop_holder
from fleet.spec.markers import SERVICE_ENV

CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
STOP_WAIT_HINT_MS = 30_000


@dataclass(frozen=True)
class HostArgs:
    """The service host's command line: which service it is and the controller it runs."""
    service_name: str
    python: str
    fleet_file: str
    state_dir: str

    def controller_argv(self) -> list[str]:
        return [self.python, "-m", "fleet.cli.main", "controller", "run", "-f", self.fleet_file,
                "--state-dir", self.state_dir]


def parse_args(argv: list[str]) -> HostArgs:
    parser = argparse.ArgumentParser(prog="fleet.service.winservice_main")
    parser.add_argument("--service-name", required=True)
    parser.add_argument("--python", required=True)
    parser.add_argument("-f", "--file", required=True)
    parser.add_argument("--state-dir", required=True)
    ns = parser.parse_args(argv)
    return HostArgs(ns.service_name, ns.python, ns.file, ns.state_dir)


class ControllerHost:
    """Runs one controller process and waits for it or for a stop request."""

    def __init__(
        self, args: HostArgs, *, popen: Callable[..., subprocess.Popen] = subprocess.Popen,
        holder: Callable[[str], ControllerHolder | None] = read_holder,
        stop_holder: Callable[[ControllerHolder], bool] = stop_holder,
    ):
        self.args = args
        self._popen = popen
        self._holder = holder
        self._stop_holder = stop_holder
        self.process: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        logs = os.path.join(self.args.state_dir, "logs")
        os.makedirs(logs, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1") | {SERVICE_ENV: "winsvc"}
        with open(os.path.join(logs, "controller.log"), "ab") as log:
            self.process = self._popen(
                self.args.controller_argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.args.state_dir, env=env, close_fds=True,
                creationflags=CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP,
            )
        return self.process

    def wait(self, stop_requested: Callable[[float], bool], poll: float = 0.5) -> int | None:
        """The controller's exit status, or None when a stop request ended it."""
        assert self.process is not None, "start() first"
        while True:
            code = self.process.poll()
            if code is not None:
                return code
            if stop_requested(poll):
                self.stop()
                return None

    def stop(self) -> None:
        """End the controller (the process the record names, then our direct child, which
        is the venv's redirector when there is one). Never a process tree."""
        if self.process is None:
            return
        holder = self._holder(self.args.state_dir)
        if holder is not None and holder.alive:
            self._stop_holder(holder)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def controller_failure(code: int | None) -> str | None:
    """Why the service must report a failure (so the SCM restarts it), or None for a clean stop."""
    if code in (None, 0):
        return None
    return f"the hermes-fleet controller exited with status {code}"


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - Windows only
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import servicemanager
    import win32event
    import win32service
    import win32serviceutil

    class FleetService(win32serviceutil.ServiceFramework):
        _svc_name_ = args.service_name
        _svc_display_name_ = f"hermes-fleet controller ({args.service_name})"

        def __init__(self, service_args):
            super().__init__(service_args)
            self.stop_event = win32event.CreateEvent(None, True, False, None)

        def SvcStop(self):
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)
            win32event.SetEvent(self.stop_event)

        SvcShutdown = SvcStop

        def SvcDoRun(self):
            host = ControllerHost(args)
            process = host.start()
            servicemanager.LogInfoMsg(f"{args.service_name}: controller started (PID {process.pid})")
            code = host.wait(lambda seconds: win32event.WaitForSingleObject(
                self.stop_event, int(seconds * 1000)) == win32event.WAIT_OBJECT_0)
            failure = controller_failure(code)
            if failure:
                # Raising makes the host report SERVICE_STOPPED with a service-specific
                # error, which (with the failure-actions flag) triggers the restart ladder.
                servicemanager.LogErrorMsg(f"{args.service_name}: {failure}")
                raise RuntimeError(failure)

    servicemanager.Initialize(args.service_name, None)
    servicemanager.PrepareToHostSingle(FleetService)
    servicemanager.StartServiceCtrlDispatcher()
