"""Fakes shared by the tests of `hermes-fleet service` (imported by the other test_service_* modules).

- `RecordingRunner`: the CommandRunner seam; records every argv and answers from a handler.
- `FakeSystemd`: answers systemctl/loginctl/journalctl like a user manager would, and starts
  a real stand-in controller process on `start`/`restart`, so the install verification
  (a live PID in .supervisor.json that the manager reports as MainPID) runs for real.
- `Processes`: every process a test starts, ended by PID at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from fleet.service.base import CommandResult

STAND_IN_CONTROLLER = r'''
import json, os, signal, sys, time
import psutil
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # taken by sigwait below: pause() could miss it
state = sys.argv[1]
me = psutil.Process()
rec = {"pid": me.pid, "create_time": me.create_time(), "version": "stand-in", "started_at": time.time(), "epoch": 1}
with open(os.path.join(state, ".supervisor.json.tmp"), "w") as fh:
    json.dump(rec, fh)
os.replace(os.path.join(state, ".supervisor.json.tmp"), os.path.join(state, ".supervisor.json"))
signal.sigwait({signal.SIGTERM})
'''


class Processes:
    """Processes a test started; all ended by PID in teardown."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def controller(self, state_dir: str | os.PathLike) -> subprocess.Popen:
        """A stand-in controller: records itself in .supervisor.json, exits 0 on SIGTERM."""
        os.makedirs(state_dir, exist_ok=True)
        before = _holder_pid(state_dir)
        proc = subprocess.Popen([sys.executable, "-c", STAND_IN_CONTROLLER, str(state_dir)],
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 20
        while _holder_pid(state_dir) in (None, before) or _holder_pid(state_dir) != proc.pid:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the stand-in controller did not record itself")
            time.sleep(0.02)
        return proc

    def end_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(10)
            except (subprocess.TimeoutExpired, ChildProcessError):
                pass


def _holder_pid(state_dir) -> int | None:
    try:
        return int(json.loads(Path(state_dir, ".supervisor.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture
def processes():
    registry = Processes()
    try:
        yield registry
    finally:
        registry.end_all()


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """HOME and the XDG dirs inside tmp_path: nothing may reach the real user folders."""
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "no-runtime"))
    monkeypatch.setenv("APPDATA", str(home / "AppData" / "Roaming"))
    monkeypatch.delenv("HERMES_FLEET_STATE_DIR", raising=False)
    monkeypatch.delenv("SUDO_USER", raising=False)
    return home


class RecordingRunner:
    def __init__(self, handler: Callable[[tuple[str, ...]], CommandResult | None] | None = None):
        self.calls: list[tuple[str, ...]] = []
        self.handler = handler

    def run(self, argv, *, timeout: float = 60.0) -> CommandResult:
        args = tuple(str(a) for a in argv)
        self.calls.append(args)
        answer = self.handler(args) if self.handler else None
        return answer if answer is not None else CommandResult(args, 0, "", "")

    def commands(self, program: str) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c and c[0] == program]

    def mutating(self) -> list[tuple[str, ...]]:
        """Calls that change something (everything but the read-only queries)."""
        readonly = {"show", "--version", "print", "/Query", "show-user", "status"}
        return [c for c in self.calls if not readonly & set(c) and c[0] != "journalctl"]


def ok(args, stdout: str = "") -> CommandResult:
    return CommandResult(tuple(args), 0, stdout, "")


def failed(args, code: int, stderr: str) -> CommandResult:
    return CommandResult(tuple(args), code, "", stderr)


class FakeSystemd:
    """A user manager as seen through systemctl, with a real process as the unit's main PID."""

    def __init__(self, processes: Processes, state_dir: str | os.PathLike, unit_dir: str | os.PathLike,
                 version: int = 256, linger: str = "yes", start_fails: bool = False):
        self.processes = processes
        self.state_dir = str(state_dir)
        self.unit_dir = str(unit_dir)
        self.version = version
        self.linger = linger
        self.start_fails = start_fails
        self.enabled: set[str] = set()
        self.main: dict[str, subprocess.Popen] = {}
        self.restarts = 0
        self.linger_enable_allowed = True

    def __call__(self, args: tuple[str, ...]) -> CommandResult | None:
        if args[0] == "loginctl":
            if args[1] == "show-user":
                return ok(args, self.linger + "\n")
            if "enable-linger" in args:
                if not self.linger_enable_allowed:
                    return failed(args, 1, "Could not enable linger: Access denied")
                self.linger = "yes"
                return ok(args)
        if args[0] == "journalctl":
            return ok(args, "controller: something went wrong\n")
        if args[0] != "systemctl":
            return None
        rest = [a for a in args[1:] if a != "--user"]
        verb = rest[0]
        if verb == "--version":
            return ok(args, f"systemd {self.version} ({self.version}.1)\n+PAM +AUDIT\n")
        unit = rest[-1] if verb not in ("show",) else rest[1]
        if verb == "show":
            return ok(args, self._show(unit))
        if verb == "enable":
            self.enabled.add(unit)
        elif verb == "disable":
            self.enabled.discard(unit)
            if "--now" in rest:
                self._stop(unit)
        elif verb in ("start", "restart"):
            if verb == "restart":
                self._stop(unit)
            if self.start_fails:
                return failed(args, 1, f"Job for {unit} failed because the control process exited with error code.")
            if not self._running(unit):
                self.main[unit] = self.processes.controller(self.state_dir)
        elif verb == "stop":
            self._stop(unit)
        return ok(args)

    def _running(self, unit: str) -> bool:
        proc = self.main.get(unit)
        return proc is not None and proc.poll() is None

    def _stop(self, unit: str) -> None:
        proc = self.main.pop(unit, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)

    def _show(self, unit: str) -> str:
        exists = os.path.exists(os.path.join(self.unit_dir, unit))
        running = self._running(unit)
        return "\n".join([
            f"LoadState={'loaded' if exists else 'not-found'}",
            f"ActiveState={'active' if running else 'inactive'}",
            f"SubState={'running' if running else 'dead'}",
            f"MainPID={self.main[unit].pid if running else 0}",
            f"NRestarts={self.restarts}",
            "Result=success",
            "ExecMainStatus=0",
            f"StatusText={'3 profiles converged' if running else ''}",
            f"UnitFileState={'enabled' if unit in self.enabled else 'disabled'}",
        ]) + "\n"


def write_fleet(path: Path, name: str | None = "demo", state_dir: Path | None = None) -> Path:
    lines = ["version: 1"]
    if name:
        lines.append(f"name: {name}")
    if state_dir is not None:
        lines += ["hermes:", f"  home: {json.dumps(str(state_dir.parent))}"]
    lines += ["profiles:", "  alpha:", "    driver: process", f"    command: [{json.dumps(sys.executable)}, -c, pass]"]
    path.write_text("\n".join(lines) + "\n")
    return path


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_stand_in_controller_records_itself_and_stops_on_sigterm(tmp_path, processes):
    proc = processes.controller(tmp_path / "state")
    assert _holder_pid(tmp_path / "state") == proc.pid
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
