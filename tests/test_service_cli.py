"""`hermes-fleet service ...` through the CLI, with the command runner replaced."""

from __future__ import annotations

import json
import plistlib
import re
import sys
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from fleet.cli import service_cmd
from fleet.service.base import CommandResult
from fleet.service.select import host_platform

try:
    from test_service_fakes import FakeSystemd, RecordingRunner, isolated_home, processes, write_fleet
except ImportError:
    from tests.test_service_fakes import FakeSystemd, RecordingRunner, isolated_home, processes, write_fleet  # noqa: F401

on_linux = pytest.mark.skipif(host_platform() != "linux", reason="drives the Linux mechanism on this host")


@pytest.fixture
def cli(monkeypatch, isolated_home, tmp_path):
    """Run the service commands in tmp_path with a recording runner (nothing reaches the host)."""
    runner = RecordingRunner(lambda args: CommandResult(args, 1, "", "not available in tests"))
    monkeypatch.setattr(service_cmd, "make_runner", lambda: runner)
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str):
        result = CliRunner().invoke(service_cmd.service_app, list(args), catch_exceptions=False)
        return result

    invoke.runner = runner
    return invoke


def test_dry_run_for_linux_prints_the_unit_and_the_commands(cli, tmp_path):
    write_fleet(tmp_path / "fleet.yaml")
    result = cli("install", "--dry-run", "--platform", "linux", "--state-dir", str(tmp_path / "state"),
                 "--linger", "skip")
    assert result.exit_code == 0, result.output
    assert "would write" in result.output and "hermes-fleet-demo.service" in result.output
    assert f"-f {tmp_path / 'fleet.yaml'} --state-dir {tmp_path / 'state'}" in result.output  # stored absolute
    assert "would run: systemctl --user enable hermes-fleet-demo.service" in result.output
    assert not (tmp_path / "state").exists()
    assert cli.runner.mutating() == []


def test_dry_run_renders_macos_and_windows_anywhere(cli, tmp_path):
    write_fleet(tmp_path / "fleet.yaml")
    mac = cli("install", "--dry-run", "--platform", "macos", "--state-dir", str(tmp_path / "state"))
    assert mac.exit_code == 0, mac.output
    plist_text = "\n".join(line[4:] for line in mac.output.splitlines() if line.startswith("    "))
    assert plistlib.loads(plist_text.encode())["Label"] == "ai.hermes.fleet.demo"
    assert "launchctl bootstrap gui/" in mac.output
    win = cli("install", "--dry-run", "--platform", "windows", "--state-dir", str(tmp_path / "state"))
    assert win.exit_code == 0, win.output
    xml_text = win.output[win.output.index("<?xml"):win.output.index("</Task>") + len("</Task>")]
    root = ET.fromstring(re.sub(r"^ {4}", "", xml_text.split("?>", 1)[1], flags=re.M))
    assert root.get("version") == "1.3"
    assert "schtasks /Create /TN hermes-fleet\\controller-demo" in win.output
    assert "fall back to startup-folder" in win.output
    assert cli.runner.calls == []  # another platform: nothing on this host is asked


def test_windows_service_dry_run_shows_the_api_calls_and_sc_lines(cli, tmp_path):
    write_fleet(tmp_path / "fleet.yaml")
    result = cli("install", "--dry-run", "--platform", "windows", "--mechanism", "windows-service",
                 "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == 0, result.output
    assert "create service HermesFleet-demo" in result.output
    assert "restart after 1, 2, 4, 9, 16, 25, 36, 49, 64 s, reset period 60 s" in result.output
    assert "sc.exe failureflag HermesFleet-demo 1" in result.output


def test_another_platform_only_renders(cli, tmp_path):
    write_fleet(tmp_path / "fleet.yaml")
    other = "windows" if host_platform() != "windows" else "linux"
    result = cli("install", "--platform", other, "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == 2 and "add --dry-run" in result.output


def test_an_invalid_fleet_file_is_refused_before_anything_happens(cli, tmp_path):
    (tmp_path / "fleet.yaml").write_text("version: 2\nprofiles: {}\n")
    result = cli("install", "--dry-run", "--platform", "linux", "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == 2 and "not a valid fleet file" in result.output
    assert cli.runner.calls == []


def test_state_dir_defaults_to_the_environment_then_the_manifest(cli, tmp_path, monkeypatch):
    write_fleet(tmp_path / "fleet.yaml", state_dir=tmp_path / "hermes-home" / "gateway")
    result = cli("install", "--dry-run", "--platform", "macos")
    assert f"<string>{tmp_path / 'hermes-home' / 'gateway'}</string>" in result.output
    monkeypatch.setenv("HERMES_FLEET_STATE_DIR", str(tmp_path / "from-env"))
    result = cli("install", "--dry-run", "--platform", "macos")
    assert f"<string>{tmp_path / 'from-env'}</string>" in result.output


def test_name_overrides_the_manifest_name(cli, tmp_path):
    write_fleet(tmp_path / "fleet.yaml", name=None)
    assert "ai.hermes.fleet</string>" in cli("install", "--dry-run", "--platform", "macos", "--state-dir", "s").output
    result = cli("install", "--dry-run", "--platform", "macos", "--state-dir", "s", "--name", "night")
    assert "ai.hermes.fleet.night" in result.output


def test_system_on_macos_is_refused(cli, tmp_path):
    write_fleet(tmp_path / "fleet.yaml")
    result = cli("install", "--dry-run", "--platform", "macos", "--system", "--state-dir", "s")
    assert result.exit_code == 2 and "not supported on macOS" in result.output


def test_system_unit_needs_its_user(cli, tmp_path):
    write_fleet(tmp_path / "fleet.yaml")
    result = cli("install", "--dry-run", "--platform", "linux", "--system", "--state-dir", "s")
    assert result.exit_code == 2 and "--run-as" in result.output
    result = cli("install", "--dry-run", "--platform", "linux", "--system", "--run-as", "alice", "--state-dir", "s")
    assert result.exit_code == 0, result.output
    assert "/etc/systemd/system/hermes-fleet-demo.service" in result.output and "User=alice" in result.output
    assert "would run: systemctl enable hermes-fleet-demo.service" in result.output


@on_linux
def test_install_status_uninstall_through_the_cli(cli, tmp_path, processes, isolated_home):
    write_fleet(tmp_path / "fleet.yaml")
    state = tmp_path / "state"
    fake = FakeSystemd(processes, state, isolated_home / ".config" / "systemd" / "user")
    fleet_json = {"profiles": [{"name": "alpha", "state": "running"}]}

    def answer(args):
        if args[1:4] == ("-m", "fleet.cli.main", "status"):
            return CommandResult(args, 0, json.dumps(fleet_json), "")
        return fake(args)

    cli.runner.handler = answer
    common = ["-f", "fleet.yaml", "--state-dir", str(state)]
    result = cli("install", *common, "--linger", "report")
    assert result.exit_code == 0, result.output
    pid = fake.main["hermes-fleet-demo.service"].pid
    assert f"the controller is up (PID {pid})" in result.output
    again = cli("install", *common)
    assert again.exit_code == 0 and again.output.startswith("nothing changed")

    shown = cli("status", *common, "-o", "json")
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["healthy"] is True
    assert report["registration"]["mechanism"] == "systemd-user" and report["registration"]["pid"] == pid
    assert report["controller"]["pid"] == pid and report["controller"]["started_by_service"] is True
    assert report["fleet"] == fleet_json
    text = cli("status", *common)
    assert "registration: systemd-user hermes-fleet-demo.service" in text.output and "controller: PID" in text.output

    assert cli("stop", *common).exit_code == 0
    stopped = cli("status", *common, "-o", "json", "--no-fleet")
    assert stopped.exit_code == 1 and json.loads(stopped.output)["advice"]
    assert cli("start", *common).exit_code == 0
    assert cli("restart", *common).exit_code == 0

    removed = cli("uninstall", *common)
    assert removed.exit_code == 0, removed.output
    assert not (isolated_home / ".config" / "systemd" / "user" / "hermes-fleet-demo.service").exists()
    assert "gateways keep running" in removed.output


@on_linux
def test_start_when_not_installed_says_what_to_do(cli, tmp_path, processes, isolated_home):
    write_fleet(tmp_path / "fleet.yaml")
    cli.runner.handler = FakeSystemd(processes, tmp_path / "state", isolated_home / ".config" / "systemd" / "user")
    result = cli("start", "-f", "fleet.yaml", "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == 1 and "service install" in result.output


def test_the_main_cli_mounts_the_service_commands():
    from fleet.cli.main import app

    result = CliRunner().invoke(app, ["service", "--help"])
    assert result.exit_code == 0
    for command in ("install", "uninstall", "start", "stop", "restart", "status"):
        assert command in result.output


def test_the_default_runner_runs_and_decodes(tmp_path):
    from fleet.service.base import RC_NOT_FOUND, RC_TIMEOUT, SubprocessRunner

    runner = SubprocessRunner()
    done = runner.run([sys.executable, "-c", "print('hé')"])
    assert done.ok and done.stdout.strip() in ("hé", "h\ufffd\ufffd")
    assert runner.run([str(tmp_path / "no-such-tool")]).returncode == RC_NOT_FOUND
    slow = runner.run([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2)
    assert slow.returncode == RC_TIMEOUT
