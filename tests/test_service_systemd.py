"""The systemd unit: its settings, `systemd-analyze verify`, and install/status/uninstall
driven through a fake systemctl (a real stand-in controller process plays the unit)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from fleet.service.base import CommandResult, ServiceTarget
from fleet.service.lifecycle import Lifecycle
from fleet.service.systemd import (
    SystemdManager, quote_environment, quote_exec_arg, render_unit, systemd_version, unit_user,
)

try:
    from test_service_fakes import FakeSystemd, RecordingRunner, alive, isolated_home, processes
except ImportError:  # tests/ imported as a package
    from tests.test_service_fakes import FakeSystemd, RecordingRunner, alive, isolated_home, processes  # noqa: F401


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def target_for(tmp_path: Path, **changes) -> ServiceTarget:
    base = ServiceTarget("demo", str(tmp_path / "fleet.yaml"), str(tmp_path / "state"), sys.executable)
    return replace(base, **changes)


# ------------------------------------------------------------------ the unit itself


def test_user_unit_settings_for_systemd_254_and_later(tmp_path):
    unit = parse_unit(render_unit(target_for(tmp_path), home="/home/alice", version=256, system=False, run_as=None))
    service = unit["Service"]
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert service["Restart"] == ["always"]
    assert service["RestartSec"] == ["2s"] and service["RestartSteps"] == ["6"] and service["RestartMaxDelaySec"] == ["60s"]
    assert service["KillMode"] == ["process"]
    assert service["WatchdogSec"] == ["60s"]
    assert service["RestartPreventExitStatus"] == ["78"]  # not 2 (bad manifest) nor 3 (lock held): both heal
    assert service["UMask"] == ["0077"]
    assert service["WorkingDirectory"] == [str(tmp_path / "state")]
    assert "HERMES_FLEET_SERVICE=systemd" in service["Environment"]
    assert "User" not in service
    assert unit["Install"]["WantedBy"] == ["default.target"]
    assert service["ExecStart"] == [
        f"{sys.executable} -m fleet.cli.main controller run -f {tmp_path / 'fleet.yaml'} --state-dir {tmp_path / 'state'}"
    ]


def test_older_systemd_gets_a_fixed_calm_delay_instead_of_steps(tmp_path):
    service = parse_unit(render_unit(target_for(tmp_path), home="/h", version=252, system=False, run_as=None))["Service"]
    assert service["RestartSec"] == ["10s"]
    assert "RestartSteps" not in service and "RestartMaxDelaySec" not in service


def test_system_unit_runs_as_the_named_user_at_boot(tmp_path):
    unit = parse_unit(render_unit(target_for(tmp_path), home="/home/alice", version=256, system=True, run_as="alice"))
    assert unit["Service"]["User"] == ["alice"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert unit["Unit"]["After"] == ["network-online.target"]


def test_unit_user_reads_user_back(tmp_path):
    path = tmp_path / "u.service"
    path.write_text(render_unit(target_for(tmp_path), home="/h", version=256, system=True, run_as="alice"))
    assert unit_user(str(path)) == "alice"
    assert unit_user(str(tmp_path / "missing.service")) is None


@pytest.mark.parametrize(("word", "expected"), [
    ("/usr/bin/python3", "/usr/bin/python3"),
    ("/home/a b/fleet.yaml", '"/home/a b/fleet.yaml"'),
    ("/data/100%/x", "/data/100%%/x"),
    ("/data/$HOME/x", "/data/$$HOME/x"),
    ('/data/"q"\\x', '"/data/\\"q\\"\\\\x"'),
    (";", '";"'),
    ("", '""'),
])
def test_exec_start_words_are_escaped_and_quoted(word, expected):
    assert quote_exec_arg(word) == expected


def test_environment_values_escape_specifiers_and_quote_spaces():
    assert quote_environment("PATH", "/a:/b") == "PATH=/a:/b"
    assert quote_environment("PATH", "/a b:/c%d") == '"PATH=/a b:/c%%d"'


def test_paths_with_control_characters_are_refused(tmp_path):
    from fleet.service.base import ServiceError

    with pytest.raises(ServiceError, match="control character"):
        render_unit(target_for(tmp_path, state_dir="/tmp/a\nExecStartPre=/bin/evil"), home="/h", version=256,
                    system=False, run_as=None)


# ------------------------------------------------------------------ systemd-analyze verify

ANALYZE = shutil.which("systemd-analyze")
ALLOWED_ON_OLD = ("RestartSteps", "RestartMaxDelaySec")


def host_systemd_version() -> int:
    out = subprocess.run([ANALYZE, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.match(r"systemd (\d+)", out)
    return int(match.group(1)) if match else 0


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("version", [252, 256])
@pytest.mark.parametrize("system", [False, True])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path, version, system):
    state = tmp_path / "state with space"
    state.mkdir()
    target = target_for(tmp_path, state_dir=str(state))
    unit_path = tmp_path / "hermes-fleet.service"
    unit_path.write_text(render_unit(target, home=str(tmp_path), version=version, system=system,
                                     run_as="root" if system else None))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path),
           "SYSTEMD_LOG_COLOR": "0"}
    argv = [ANALYZE, *([] if system else ["--user"]), "verify", "--man=no", str(unit_path)]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    problems = [line for line in result.stderr.splitlines() if "Unknown key" in line or "Unknown section" in line
                or "Invalid" in line or "Failed to parse" in line]
    if host_systemd_version() < 254:
        problems = [line for line in problems if not any(f"'{key}'" in line for key in ALLOWED_ON_OLD)]
    assert problems == []


# ------------------------------------------------------------------ install / status / uninstall


@dataclass
class Setup:
    fake: FakeSystemd
    runner: RecordingRunner
    manager: SystemdManager
    lines: list[str]
    lifecycle: Lifecycle

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def systemd(tmp_path, processes, isolated_home):
    def build(version: int = 256, linger: str = "yes", linger_mode: str = "report", target: ServiceTarget | None = None,
              fake: FakeSystemd | None = None, ask=lambda q: False) -> Setup:
        unit_dir = isolated_home / ".config" / "systemd" / "user"
        target = target or target_for(tmp_path)
        fake = fake or FakeSystemd(processes, target.state_dir, unit_dir, version=version, linger=linger)
        runner = RecordingRunner(fake)
        manager = SystemdManager(target, runner, unit_dir=str(unit_dir), home=str(isolated_home), user="alice",
                                 version=version, linger_mode=linger_mode)
        lines: list[str] = []
        lifecycle = Lifecycle(manager, runner=runner, say=lines.append, ask=ask, verify_timeout=15)
        return Setup(fake, runner, manager, lines, lifecycle)

    return build


def test_install_writes_the_unit_enables_starts_and_sees_the_controller(systemd, isolated_home):
    s = systemd()
    assert s.lifecycle.install(), s.output
    unit_path = isolated_home / ".config" / "systemd" / "user" / "hermes-fleet-demo.service"
    assert unit_path.read_text() == s.manager.render()[0].content
    assert oct(unit_path.stat().st_mode & 0o777) == "0o644"
    assert s.runner.mutating() == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", "hermes-fleet-demo.service"),
        ("systemctl", "--user", "start", "hermes-fleet-demo.service"),
    ]
    main_pid = s.fake.main["hermes-fleet-demo.service"].pid
    assert f"the controller is up (PID {main_pid})" in s.output
    assert "linger is on" in s.output
    assert (Path(s.manager.target.state_dir)).stat().st_mode & 0o777 == 0o700


def test_second_install_changes_nothing_and_says_so(systemd):
    s = systemd()
    assert s.lifecycle.install()
    pid = s.fake.main["hermes-fleet-demo.service"].pid
    s.runner.calls.clear()
    s.lines.clear()
    assert s.lifecycle.install()
    assert s.lines[0].startswith("nothing changed") and f"PID {pid}" in s.lines[0]
    assert s.runner.mutating() == []
    assert s.fake.main["hermes-fleet-demo.service"].pid == pid


def test_a_changed_fleet_file_or_python_rewrites_the_unit_and_restarts(systemd, tmp_path, processes):
    first = systemd()
    assert first.lifecycle.install()
    old_pid = first.fake.main["hermes-fleet-demo.service"].pid
    moved = target_for(tmp_path, fleet_file=str(tmp_path / "elsewhere" / "fleet.yaml"), python="/opt/py/bin/python3")
    second = systemd(target=moved, fake=first.fake)
    assert second.lifecycle.install(), second.output
    content = Path(second.manager.location).read_text()
    assert "/opt/py/bin/python3 -m fleet.cli.main" in content and "elsewhere/fleet.yaml" in content
    assert ("systemctl", "--user", "restart", "hermes-fleet-demo.service") in second.runner.calls
    new_pid = second.fake.main["hermes-fleet-demo.service"].pid
    assert new_pid != old_pid and f"PID {new_pid}" in second.output


def test_a_controller_started_outside_systemd_is_handed_over(systemd, processes, tmp_path):
    s = systemd()
    on_demand = processes.controller(s.manager.target.state_dir)
    assert s.lifecycle.install(), s.output
    assert on_demand.wait(10) == 0  # asked to exit (SIGTERM), gateways are never touched by that
    assert f"stop the controller PID {on_demand.pid} that runs outside systemd-user" in s.output
    assert f"PID {s.fake.main['hermes-fleet-demo.service'].pid}" in s.output


def test_a_failed_start_is_reported_with_the_journal(systemd, processes, tmp_path):
    fake = FakeSystemd(processes, tmp_path / "state", tmp_path / "home" / ".config" / "systemd" / "user",
                       start_fails=True)
    s = systemd(fake=fake)
    assert s.lifecycle.install() is False
    assert "install FAILED at `systemctl --user start hermes-fleet-demo.service`" in s.output
    assert "controller: something went wrong" in s.output


def test_success_is_never_reported_without_a_live_controller(systemd, processes, tmp_path):
    class SilentSystemd(FakeSystemd):
        """systemctl says fine, but no controller ever comes up."""

        def __call__(self, args):
            if args[:3] == ("systemctl", "--user", "start"):
                return CommandResult(args, 0, "", "")
            return super().__call__(args)

    fake = SilentSystemd(processes, tmp_path / "state", tmp_path / "home" / ".config" / "systemd" / "user")
    s = systemd(fake=fake)
    s.lifecycle.verify_timeout = 0.3
    assert s.lifecycle.install() is False
    assert "did NOT come up" in s.output
    assert not any(line.startswith(("installed:", "nothing changed")) for line in s.lines)


def test_a_holder_that_is_not_the_main_pid_does_not_count(systemd, processes, tmp_path):
    class ForeignHolder(FakeSystemd):
        """The unit's main process is something else than the process in .supervisor.json."""

        def __call__(self, args):
            if args[:3] == ("systemctl", "--user", "start"):
                self.main[args[-1]] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
                self.processes.procs.append(self.main[args[-1]])
                processes.controller(self.state_dir)  # a controller systemd did not start
                return CommandResult(args, 0, "", "")
            return super().__call__(args)

    s = systemd(fake=ForeignHolder(processes, tmp_path / "state", tmp_path / "home" / ".config" / "systemd" / "user"))
    s.lifecycle.verify_timeout = 0.3
    assert s.lifecycle.install() is False


def test_linger_off_is_reported_with_the_command(systemd):
    s = systemd(linger="no", linger_mode="report")
    assert s.lifecycle.install()
    assert "linger is OFF" in s.output
    assert "loginctl enable-linger alice" in s.output
    assert not any("enable-linger" in c for c in s.runner.calls)


def test_linger_is_enabled_when_asked_and_verified(systemd):
    s = systemd(linger="no", linger_mode="ask", ask=lambda question: "linger" in question)
    assert s.lifecycle.install()
    assert ("loginctl", "--no-ask-password", "enable-linger", "alice") in s.runner.calls
    assert "linger enabled" in s.output


def test_linger_denied_prints_the_sudo_command(systemd):
    s = systemd(linger="no", linger_mode="enable")
    s.fake.linger_enable_allowed = False
    assert s.lifecycle.install()
    assert "sudo loginctl enable-linger alice" in s.output


def test_status_reports_mechanism_state_pid_and_restarts(systemd):
    s = systemd(linger="no")
    assert s.lifecycle.install()
    s.fake.restarts = 2
    status = s.manager.status()
    assert status.mechanism == "systemd-user" and status.installed and status.enabled and status.running
    assert status.pid == s.fake.main["hermes-fleet-demo.service"].pid
    assert status.restarts == 2 and status.current is True
    assert any("linger is off" in n for n in status.notes)
    report = s.lifecycle.status_report(fleet_status=False)
    assert report.healthy and report.holder.pid == status.pid and report.holder_owned is True
    text = report.render_text()
    assert "systemd-user hermes-fleet-demo.service" in text and "restarts by the service manager: 2" in text


def test_status_when_the_user_manager_cannot_be_reached(systemd):
    s = systemd()
    s.runner.handler = lambda args: CommandResult(args, 1, "", "Failed to connect to bus: No medium found")
    status = s.manager.status()
    assert not status.installed
    assert any("Failed to connect to bus" in n for n in status.notes)


def test_status_advice_when_stopped(systemd):
    s = systemd()
    assert s.lifecycle.install()
    assert s.lifecycle.stop()
    report = s.lifecycle.status_report(fleet_status=False)
    assert not report.healthy
    assert any("service start" in a for a in report.advice)


def test_stop_start_restart(systemd):
    s = systemd()
    assert s.lifecycle.install()
    first = s.fake.main["hermes-fleet-demo.service"]
    assert s.lifecycle.stop() and first.poll() == 0
    assert "gateways keep running" in s.output
    assert s.lifecycle.start()
    second = s.fake.main["hermes-fleet-demo.service"]
    s.lines.clear()
    assert s.lifecycle.start() and s.lines[0].startswith("already running")
    assert s.lifecycle.restart()
    assert s.fake.main["hermes-fleet-demo.service"].pid != second.pid


def test_uninstall_removes_the_unit_and_leaves_gateways(systemd, processes, tmp_path):
    s = systemd()
    assert s.lifecycle.install()
    controller = s.fake.main["hermes-fleet-demo.service"]
    gateway = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    processes.procs.append(gateway)
    assert s.lifecycle.uninstall(), s.output
    assert not os.path.exists(s.manager.location)
    assert ("systemctl", "--user", "disable", "--now", "hermes-fleet-demo.service") in s.runner.calls
    assert s.runner.calls[-2:] == [("systemctl", "--user", "daemon-reload"),
                                   ("systemctl", "--user", "reset-failed", "hermes-fleet-demo.service")]
    assert controller.poll() == 0 and alive(gateway.pid)
    s.lines.clear()
    assert s.lifecycle.uninstall() and s.lines[0].startswith("nothing to remove")


def test_uninstall_stop_fleet_drains_first(systemd):
    s = systemd()
    assert s.lifecycle.install()
    s.runner.calls.clear()
    assert s.lifecycle.uninstall(stop_fleet=True)
    assert s.runner.mutating()[0][1:5] == ("-m", "fleet.cli.main", "down", "--state-dir")


def test_dry_run_prints_everything_and_changes_nothing(systemd, isolated_home):
    s = systemd()
    s.lifecycle.dry_run = True
    assert s.lifecycle.install()
    assert not os.path.exists(s.manager.location)
    assert not os.path.exists(s.manager.target.state_dir)
    assert s.runner.mutating() == []
    assert f"would write {s.manager.location} (mode 0644, utf-8):" in s.output
    assert "    Type=notify" in s.output
    for command in ("systemctl --user daemon-reload", "systemctl --user enable hermes-fleet-demo.service",
                    "systemctl --user start hermes-fleet-demo.service"):
        assert f"would run: {command}" in s.output


def test_systemd_version_parsing():
    runner = RecordingRunner(lambda args: CommandResult(args, 0, "systemd 252 (252.38-1~deb12u1)\n+PAM", ""))
    assert systemd_version(runner) == 252
    assert systemd_version(RecordingRunner(lambda args: CommandResult(args, 127, "", "not found"))) is None


def test_stand_in_survives_only_sigterm_path(processes, tmp_path):
    # Guard for the fakes above: SIGTERM gives exit 0, like the real controller.
    proc = processes.controller(tmp_path / "s")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def test_install_refuses_when_the_user_manager_cannot_be_reached(systemd):
    from fleet.service.base import ServiceError

    s = systemd()
    s.runner.handler = lambda args: CommandResult(args, 1, "", "Failed to connect to bus: No medium found")
    with pytest.raises(ServiceError, match="cannot reach your systemd user manager"):
        s.lifecycle.install()
    assert not os.path.exists(s.manager.location)  # refused before writing anything
    assert [c for c in s.runner.calls if "show" not in c] == []


def test_install_warns_about_hermes_agents_own_gateway_units(systemd, isolated_home):
    unit_dir = isolated_home / ".config" / "systemd" / "user"
    unit_dir.mkdir(parents=True)
    (unit_dir / "hermes-gateway-coder.service").write_text(
        "[Service]\nExecStart=/opt/hermes/bin/python -m hermes_cli.main --profile coder gateway run\n")
    s = systemd()
    assert s.lifecycle.install()
    assert "warning: hermes-agent's own gateway unit" in s.output
    assert "systemctl --user disable --now hermes-gateway-coder.service" in s.output
