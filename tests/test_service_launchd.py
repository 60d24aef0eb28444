"""The launchd agent: the plist (plistlib round trip, keys and types) and the launchctl
sequences, driven through a fake launchctl with a real stand-in controller."""

from __future__ import annotations

import os
import plistlib
import sys
from dataclasses import replace

import pytest

from fleet.service.base import CommandResult, ServiceTarget
from fleet.service.launchd import LaunchdManager, agent_job, parse_print, render_plist
from fleet.service.lifecycle import Lifecycle

try:
    from test_service_fakes import RecordingRunner, failed, isolated_home, ok, processes
except ImportError:
    from tests.test_service_fakes import RecordingRunner, failed, isolated_home, ok, processes  # noqa: F401

UID = 501
KEY_TYPES = {
    "Label": str, "ProgramArguments": list, "RunAtLoad": bool, "KeepAlive": dict, "ThrottleInterval": int,
    "ExitTimeOut": int, "ProcessType": str, "AbandonProcessGroup": bool, "LimitLoadToSessionType": list,
    "WorkingDirectory": str, "EnvironmentVariables": dict, "StandardOutPath": str, "StandardErrorPath": str,
    "Umask": int,
}


def target(tmp_path, **changes) -> ServiceTarget:
    base = ServiceTarget("demo", str(tmp_path / "fleet.yaml"), str(tmp_path / "state"), sys.executable)
    return replace(base, **changes)


def test_plist_round_trips_through_plistlib(tmp_path):
    job = agent_job(target(tmp_path), "/Users/alice")
    text = render_plist(target(tmp_path), "/Users/alice")
    assert plistlib.loads(text.encode()) == job


def test_plist_keys_and_types(tmp_path):
    job = plistlib.loads(render_plist(target(tmp_path), "/Users/alice").encode())
    assert set(job) == set(KEY_TYPES)
    for key, kind in KEY_TYPES.items():
        assert type(job[key]) is kind, key
    assert job["Label"] == "ai.hermes.fleet.demo"
    assert job["RunAtLoad"] is True
    assert job["KeepAlive"] == {"SuccessfulExit": False}
    assert job["ThrottleInterval"] == 10
    assert job["Umask"] == 63  # 0o077 as an integer: plists have no octal
    assert job["AbandonProcessGroup"] is True
    assert job["ProgramArguments"] == [sys.executable, "-m", "fleet.cli.main", "controller", "run", "-f",
                                       str(tmp_path / "fleet.yaml"), "--state-dir", str(tmp_path / "state")]
    assert all(os.path.isabs(a) for a in (job["ProgramArguments"][0], job["WorkingDirectory"], job["StandardOutPath"]))
    assert job["StandardOutPath"] == job["StandardErrorPath"] == str(tmp_path / "state" / "logs" / "controller.log")
    assert job["EnvironmentVariables"]["HERMES_FLEET_SERVICE"] == "launchd"


def test_the_default_fleet_has_the_plain_label(tmp_path):
    assert agent_job(target(tmp_path, fleet_name="default"), "/h")["Label"] == "ai.hermes.fleet"


PRINT = """gui/501/ai.hermes.fleet.demo = {
\tactive count = 1
\tpath = /Users/alice/Library/LaunchAgents/ai.hermes.fleet.demo.plist
\tstate = running
\tprogram = /usr/bin/python3
\truns = 3
\tpid = {pid}
\tlast exit code = 1
\tendpoints = {{
\t\tstate = active
\t}}
}
"""


def test_parse_print_reads_top_level_fields_only():
    fields = parse_print(PRINT.replace("{pid}", "4242").replace("{{", "{").replace("}}", "}"))
    assert fields == {"state": "running", "runs": "3", "pid": "4242", "last exit code": "1"}


class FakeLaunchctl:
    def __init__(self, processes, state_dir, gui_supported: bool = True):
        self.processes = processes
        self.state_dir = state_dir
        self.gui_supported = gui_supported
        self.loaded: str | None = None
        self.proc = None
        self.runs = 0

    def _start(self):
        self.proc = self.processes.controller(self.state_dir)
        self.runs += 1

    def _stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __call__(self, args: tuple[str, ...]) -> CommandResult | None:
        verb, rest = args[1], args[2:]
        domain = rest[-1].split("/")[0] if verb != "bootstrap" else rest[0].split("/")[0]
        if verb == "print":
            if self.loaded != domain:
                return failed(args, 113, "Could not find service in domain for port")
            pid = self.proc.pid if self.proc and self.proc.poll() is None else 0
            text = PRINT.replace("{pid}", str(pid)).replace("{{", "{").replace("}}", "}")
            return ok(args, text.replace("runs = 3", f"runs = {self.runs}"))
        if verb == "bootout":
            if self.loaded != domain:
                return failed(args, 3, "Boot-out failed: 3: No such process")
            self._stop()
            self.loaded = None
            return ok(args)
        if verb == "enable":
            return ok(args)
        if verb == "bootstrap":
            if domain == "gui" and not self.gui_supported:
                return failed(args, 125, "Bootstrap failed: 125: Domain does not support specified action")
            self.loaded = domain
            self._start()
            return ok(args)
        if verb == "kickstart":
            if "-k" in rest:
                self._stop()
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            return ok(args)
        return failed(args, 64, "unknown verb")


@pytest.fixture
def launchd(tmp_path, processes, isolated_home):
    def build(gui_supported=True, tgt=None, fake=None):
        tgt = tgt or target(tmp_path)
        fake = fake or FakeLaunchctl(processes, tgt.state_dir, gui_supported)
        runner = RecordingRunner(fake)
        manager = LaunchdManager(tgt, runner, agents_dir=str(isolated_home / "Library" / "LaunchAgents"),
                                 home=str(isolated_home), uid=UID)
        lines: list[str] = []
        return fake, runner, manager, lines, Lifecycle(manager, runner=runner, say=lines.append, verify_timeout=15)
    return build


def test_install_bootstraps_in_the_gui_domain_and_sees_the_controller(launchd, isolated_home):
    fake, runner, manager, lines, lifecycle = launchd()
    assert lifecycle.install(), lines
    plist = isolated_home / "Library" / "LaunchAgents" / "ai.hermes.fleet.demo.plist"
    assert plistlib.loads(plist.read_bytes())["Label"] == "ai.hermes.fleet.demo"
    assert runner.mutating()[-1] == ("launchctl", "bootstrap", f"gui/{UID}", str(plist))
    assert f"the controller is up (PID {fake.proc.pid})" in "\n".join(lines)


def test_headless_falls_back_to_the_user_domain(launchd):
    fake, runner, manager, lines, lifecycle = launchd(gui_supported=False)
    assert lifecycle.install(), lines
    assert fake.loaded == "user"
    assert ("launchctl", "bootstrap", f"user/{UID}", manager.location) in runner.calls


def test_second_install_is_a_no_op(launchd):
    fake, runner, manager, lines, lifecycle = launchd()
    assert lifecycle.install()
    runner.calls.clear()
    lines.clear()
    assert lifecycle.install()
    assert lines[0].startswith("nothing changed") and runner.mutating() == []


def test_a_changed_plist_is_booted_out_and_bootstrapped_again(launchd, tmp_path):
    fake, runner, manager, lines, lifecycle = launchd()
    assert lifecycle.install()
    first = fake.proc
    _, runner2, manager2, lines2, lifecycle2 = launchd(tgt=target(tmp_path, python="/opt/python/bin/python3"), fake=fake)
    assert lifecycle2.install(), lines2
    assert first.poll() == 0 and fake.proc.pid != first.pid
    assert ("launchctl", "bootout", f"gui/{UID}/ai.hermes.fleet.demo") in runner2.calls


def test_status_restart_stop_uninstall(launchd):
    fake, runner, manager, lines, lifecycle = launchd()
    assert lifecycle.install()
    status = manager.status()
    assert status.installed and status.running and status.pid == fake.proc.pid and status.restarts == 0
    assert status.state == "gui running"
    old = fake.proc.pid
    assert lifecycle.restart()
    assert ("launchctl", "kickstart", "-k", f"gui/{UID}/ai.hermes.fleet.demo") in runner.calls
    assert fake.proc.pid != old and manager.status().restarts == 1
    assert lifecycle.stop()
    assert fake.loaded is None
    assert lifecycle.start()  # not loaded any more: start bootstraps it again
    assert fake.loaded == "gui"
    assert lifecycle.uninstall()
    assert not os.path.exists(manager.location) and fake.proc.poll() == 0


def test_dry_run_shows_the_plist_and_the_commands(launchd):
    fake, runner, manager, lines, lifecycle = launchd()
    lifecycle.dry_run = True
    assert lifecycle.install()
    text = "\n".join(lines)
    assert "<key>KeepAlive</key>" in text
    assert f"would run: launchctl bootstrap gui/{UID} {manager.location}" in text
    assert f"if that exits with 125: launchctl bootstrap user/{UID} {manager.location}" in text
    assert runner.mutating() == [] and not os.path.exists(manager.location)
