"""Hermes' own gateway units: which Hermes home each one runs (by what it runs, never by its name), which ones a
take-over gated, and the steps of a take-over per service manager, through a recording command runner (systemd,
launchd and Windows alike: what each runs and the files it leaves)."""

from __future__ import annotations

import json
import os
import plistlib
from pathlib import Path

import pytest

from fleet.service.base import CommandResult
from fleet.service.native import (
    GATE_DROPIN, OWNED_FILE, NativeIndex, Places, find_native_service, parse_unit_text, resolve_homes,
)
from fleet.service.unit_control import LaunchdUnits, SystemdUnits, UnitError, UnitFacts, WindowsTasks, serves_home
from test_service_fakes import RecordingRunner, failed, ok

VENV = "/opt/hermes/venv"


def unit_text(home: str | None, profile: str | None, *, extra: str = "") -> str:
    """What `hermes gateway install` writes (hermes-native-services section 3), trimmed to what matters."""
    flag = f" --profile {profile}" if profile else ""
    env = f'Environment="HERMES_HOME={home}"\n' if home else ""
    return ("[Unit]\nDescription=Hermes Agent Gateway - Messaging Platform Integration\n\n[Service]\nType=simple\n"
            f"ExecStart={VENV}/bin/python -m hermes_cli.main{flag} gateway run\n"
            f'Environment="PATH={VENV}/bin:/usr/bin:/bin"\nEnvironment="VIRTUAL_ENV={VENV}"\n{env}'
            "Restart=always\nRestartSec=5\nKillMode=mixed\n" + extra + "\n[Install]\nWantedBy=default.target\n")


@pytest.fixture
def host(tmp_path):
    home = tmp_path / "home"
    user_dir = home / ".config" / "systemd" / "user"
    system_dir = tmp_path / "etc-systemd-system"
    agents = home / "Library" / "LaunchAgents"
    for d in (user_dir, system_dir, agents):
        d.mkdir(parents=True)
    return Places(str(home), str(user_dir), str(system_dir), str(agents))


def write(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- which home a unit runs -------------------------------------------------------------------------------

def test_homes_resolve_as_hermes_resolves_them(tmp_path):
    user = str(tmp_path / "u")
    native = os.path.join(user, ".hermes")
    assert resolve_homes(None, None, user) == (native,)
    assert resolve_homes(f"{native}/profiles/alpha", "alpha", user) == (f"{native}/profiles/alpha",)
    assert resolve_homes(native, "alpha", user) == (f"{native}/profiles/alpha",)
    assert resolve_homes("/srv/h2", "alpha", user) == ("/srv/h2/profiles/alpha",)  # another root
    assert resolve_homes("/srv/h2/profiles/alpha", "alpha", user) == ("/srv/h2/profiles/alpha",)
    assert resolve_homes("/srv/h2", None, user) == ("/srv/h2",)
    assert resolve_homes("/srv/h2/profiles/beta", "default", user) == ("/srv/h2",)


def test_a_unit_without_profile_also_runs_the_sticky_active_profile(tmp_path):
    root = tmp_path / "root"
    write(root / "active_profile", "beta_two\n")
    assert resolve_homes(str(root), None, str(tmp_path)) == (str(root), str(root / "profiles" / "beta_two"))
    write(root / "active_profile", "default\n")
    assert resolve_homes(str(root), None, str(tmp_path)) == (str(root),)


def test_units_are_mapped_by_what_they_run_never_by_name(host, tmp_path):
    root1, root2 = tmp_path / "root1", tmp_path / "root2"
    # A unit named for alpha that (after a re-point by another root's install) runs root2's alpha.
    write(Path(host.systemd_user) / "hermes-gateway-alpha.service", unit_text(f"{root2}/profiles/alpha", "alpha"))
    # A unit whose name says nothing about the profile it runs.
    write(Path(host.systemd_user) / "hermes-gateway-f254fbcc.service", unit_text(f"{root1}/profiles/beta", "beta"))
    write(Path(host.systemd_user) / "hermes-gateway-alpha-planned-restart-77.service",
          unit_text(f"{root1}/profiles/alpha", "alpha"))  # a transient helper: skipped
    write(Path(host.systemd_user) / "hermes-gateway-other.service",
          unit_text(None, None).replace("hermes_cli.main gateway run", "other.tool run"))  # not a gateway
    index = NativeIndex(host)
    assert find_native_service(f"{root1}/profiles/alpha", index) is None  # the name would have said yes
    assert find_native_service(f"{root2}/profiles/alpha", index).endswith("hermes-gateway-alpha.service")
    assert find_native_service(f"{root1}/profiles/beta", index).endswith("hermes-gateway-f254fbcc.service")
    assert [u.name for u in index.units()] == ["hermes-gateway-alpha.service", "hermes-gateway-f254fbcc.service"]


def test_a_drop_in_overrides_the_units_home_and_a_system_unit_counts_too(host, tmp_path):
    unit = write(Path(host.systemd_user) / "hermes-gateway-alpha.service", unit_text(f"{tmp_path}/a/profiles/alpha", "alpha"))
    write(f"{unit}.d/10-home.conf", f'[Service]\nEnvironment="HERMES_HOME={tmp_path}/b"\n')
    write(Path(host.systemd_system) / "hermes-gateway.service",
          unit_text(f"{tmp_path}/c", None, extra=f'Environment="HOME={tmp_path}/runas"\nUser=alice\n'))
    index = NativeIndex(host)
    assert index.serving(f"{tmp_path}/b/profiles/alpha")[0].name == "hermes-gateway-alpha.service"
    assert not index.serving(f"{tmp_path}/a/profiles/alpha")
    (system,) = index.serving(f"{tmp_path}/c")
    assert system.manager == "systemd-system"


def test_a_gated_unit_no_longer_supervises_its_home(host, tmp_path):
    home = tmp_path / "root" / "profiles" / "alpha"
    home.mkdir(parents=True)
    unit = write(Path(host.systemd_user) / "hermes-gateway-alpha.service", unit_text(str(home), "alpha"))
    assert find_native_service(str(home), NativeIndex(host)) == str(unit)
    write(f"{unit}.d/{GATE_DROPIN}", f"[Unit]\nConditionPathExists=!{home}/{OWNED_FILE}\n")
    assert find_native_service(str(home), NativeIndex(host)) == str(unit), "the drop-in alone gates nothing"
    (home / OWNED_FILE).write_text("{}")
    index = NativeIndex(host)
    assert find_native_service(str(home), index) is None
    assert [u.name for u in index.gated(str(home))] == ["hermes-gateway-alpha.service"]
    os.unlink(f"{unit}.d/{GATE_DROPIN}")  # someone removed our drop-in: the unit supervises again
    assert find_native_service(str(home), NativeIndex(host)) == str(unit)


def test_launchd_and_windows_units_are_read_from_their_files(host, tmp_path):
    home = tmp_path / "root" / "profiles" / "alpha"
    plist = Path(host.launch_agents) / "ai.hermes.gateway-alpha.plist"
    plist.write_bytes(plistlib.dumps({
        "Label": "ai.hermes.gateway-alpha", "RunAtLoad": True, "KeepAlive": True,
        "ProgramArguments": [f"{VENV}/bin/python", "-m", "hermes_cli.main", "--profile", "alpha", "gateway", "run",
                             "--replace"],
        "EnvironmentVariables": {"HERMES_HOME": str(home), "PATH": "/usr/bin"}}))
    vbs = write(home / "gateway-service" / "Hermes_Gateway_alpha.vbs", (
        "' Hermes Agent Gateway\r\nOption Explicit\r\nDim sh, env, existing_pp\r\n"
        'Set sh = CreateObject("WScript.Shell")\r\nSet env = sh.Environment("PROCESS")\r\n'
        f'env.Item("HERMES_HOME") = "{home}"\r\n'
        f'sh.Run "C:\\hermes\\venv\\Scripts\\pythonw.exe -m hermes_cli.main --profile alpha gateway run", 0, False\r\n'))
    units = NativeIndex(host).serving(str(home))
    assert [(u.manager, u.name, u.path) for u in units] == [
        ("launchd", "ai.hermes.gateway-alpha", str(plist)), ("windows-task", "Hermes_Gateway_alpha", str(vbs))]
    # Their gate is the manager's own disable; the owned file names the units gated.
    (home / OWNED_FILE).write_text(json.dumps({"units": ["ai.hermes.gateway-alpha"]}))
    assert [u.name for u in NativeIndex(host).supervising(str(home))] == ["Hermes_Gateway_alpha"]


def test_parse_unit_text_joins_continuations_and_resets_on_an_empty_assignment():
    parsed = parse_unit_text("[Service]\nEnvironment=A=1\nEnvironment=\nEnvironment=B=2 \\\n  C=3\n# x\n")
    assert parsed["Service.Environment"] == ["B=2  C=3"]


# -- systemd: the steps through systemctl ------------------------------------------------------------------

SHOWN = ("Id=hermes-gateway-alpha.service\nLoadState=loaded\nActiveState=active\nSubState=running\nMainPID=4321\n"
         "InvocationID=abc123\nResult=success\nFragmentPath={path}\nDropInPaths=\n"
         "Environment=PATH=/opt/hermes/venv/bin:/usr/bin VIRTUAL_ENV=/opt/hermes/venv HERMES_HOME={home}\n"
         "ExecStart={{ path=/opt/hermes/venv/bin/python ; argv[]=/opt/hermes/venv/bin/python -m hermes_cli.main "
         "--profile alpha gateway run ; ignore_errors=no ; start_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }}\n")


@pytest.fixture
def alpha(host, tmp_path):
    home = tmp_path / "root" / "profiles" / "alpha"
    home.mkdir(parents=True)
    path = write(Path(host.systemd_user) / "hermes-gateway-alpha.service", unit_text(str(home), "alpha"))
    (unit,) = NativeIndex(host).serving(str(home))
    return unit, str(home), path


def test_systemd_record_gate_stop_and_give_back(alpha):
    unit, home, path = alpha

    def answer(args):
        if "show" in args and "-p" in args and args[-1] == "ActiveState,SubState,MainPID,Result":
            return ok(args, "ActiveState=inactive\nSubState=dead\nMainPID=0\nResult=success\n")
        if "show" in args and args[-1].startswith("Id,"):
            return ok(args, SHOWN.format(path=path, home=home))
        if "show" in args:
            return ok(args, "ActiveState=active\nSubState=running\nMainPID=999\n")
        if "is-enabled" in args:
            return CommandResult(args, 0, "enabled\n", "")
        return None

    runner = RecordingRunner(answer)
    units = SystemdUnits(runner)
    facts = units.record(unit)
    assert (facts.enabled, facts.active, facts.main_pid, facts.invocation) == (True, True, 4321, "abc123")
    assert facts.file_hash.startswith("sha256:") and serves_home(facts, unit, home)
    assert UnitFacts.from_json(json.loads(json.dumps(facts.as_json()))) == facts

    units.gate(unit, home, "/state")
    dropin = Path(f"{path}.d") / GATE_DROPIN
    assert f"ConditionPathExists=!{home}/{OWNED_FILE}\n" in dropin.read_text()
    assert json.loads(Path(home, OWNED_FILE).read_text())["units"] == ["hermes-gateway-alpha.service"]
    units.gate(unit, home, "/state")  # again (a controller killed after gating): the same files
    assert dropin.read_text().count("ConditionPathExists") == 1
    assert NativeIndex(Places("/nonexistent", str(Path(path).parent), "/nonexistent")).gated(home) != []

    units.stop(unit)
    assert units.stopped(unit).done and units.stopped(unit).clean
    units.ungate(unit, home, facts)
    units.start(unit, facts)
    assert not dropin.exists() and not Path(f"{path}.d").exists() and not Path(home, OWNED_FILE).exists()
    assert runner.mutating() == [
        ("systemctl", "--user", "is-enabled", "hermes-gateway-alpha.service"),
        ("systemctl", "--user", "daemon-reload"), ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "stop", "--no-block", "hermes-gateway-alpha.service"),
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "is-enabled", "hermes-gateway-alpha.service"),
        ("systemctl", "--user", "reset-failed", "hermes-gateway-alpha.service"),
        ("systemctl", "--user", "start", "--no-block", "hermes-gateway-alpha.service")]


def test_systemd_give_back_enables_again_and_keeps_other_homes_conditions(alpha, tmp_path):
    unit, home, path = alpha
    other = str(tmp_path / "root")
    runner = RecordingRunner(lambda a: CommandResult(a, 1, "disabled\n", "") if "is-enabled" in a else None)
    units = SystemdUnits(runner)
    units.gate(unit, home, "/state")
    units.gate(unit, other, "/state")  # a default-style unit gated for two homes
    facts = UnitFacts(unit.name, unit.manager, str(path), "", True, True, "active/running", 1)
    units.ungate(unit, home, facts)
    assert Path(f"{path}.d", GATE_DROPIN).read_text().count("ConditionPathExists") == 1
    units.start(unit, facts)
    assert ("systemctl", "--user", "enable", "hermes-gateway-alpha.service") in runner.calls


def test_systemd_failures_say_which_command_and_why(alpha):
    unit, home, _ = alpha
    runner = RecordingRunner(lambda a: failed(a, 1, "Failed to connect to bus: No medium found")
                             if "daemon-reload" in a else None)
    with pytest.raises(UnitError, match="daemon-reload` failed: Failed to connect to bus"):
        SystemdUnits(runner).gate(unit, home, "/state")
    system = SystemdUnits(RecordingRunner(lambda a: ok(a, "LoadState=not-found\n")), system=True)
    with pytest.raises(UnitError, match="LoadState=not-found"):
        system.record(unit)
    assert system.hint(unit) == "`systemctl status hermes-gateway-alpha.service`"


# -- launchd and Windows -----------------------------------------------------------------------------------

def test_launchd_gate_is_a_disable_and_the_stop_a_bootout(host, tmp_path):
    home = tmp_path / "root" / "profiles" / "alpha"
    home.mkdir(parents=True)
    plist = Path(host.launch_agents) / "ai.hermes.gateway-alpha.plist"
    plist.write_bytes(plistlib.dumps({"Label": "ai.hermes.gateway-alpha", "EnvironmentVariables": {
        "HERMES_HOME": str(home)}, "ProgramArguments": ["python", "-m", "hermes_cli.main", "--profile", "alpha",
                                                        "gateway", "run", "--replace"]}))
    (unit,) = NativeIndex(host).serving(str(home))
    loaded = {"yes": True}

    def answer(args):
        if args[1] == "print" and args[2].endswith("ai.hermes.gateway-alpha"):
            return ok(args, "\tstate = running\n\tpid = 812\n") if loaded["yes"] else failed(args, 113, "not found")
        if args[1] == "print-disabled":
            return ok(args, 'disabled services = {\n\t"com.other" => disabled\n}\n')
        if args[1] == "bootout":
            loaded["yes"] = False
        return None

    runner = RecordingRunner(answer)
    units = LaunchdUnits(runner, uid=501)
    facts = units.record(unit)
    assert (facts.enabled, facts.active, facts.main_pid) == (True, True, 812)
    units.gate(unit, str(home), "/state")
    assert json.loads((home / OWNED_FILE).read_text())["units"] == ["ai.hermes.gateway-alpha"]
    assert NativeIndex(host).supervising(str(home)) == []
    units.stop(unit)
    assert units.stopped(unit).done
    units.ungate(unit, str(home), facts)
    units.start(unit, facts)
    assert not (home / OWNED_FILE).exists()
    assert runner.mutating() == [
        ("launchctl", "print-disabled", "gui/501"),
        ("launchctl", "disable", "gui/501/ai.hermes.gateway-alpha"),
        ("launchctl", "bootout", "gui/501/ai.hermes.gateway-alpha"),
        ("launchctl", "enable", "gui/501/ai.hermes.gateway-alpha"),
        ("launchctl", "bootstrap", "gui/501", str(plist))]


def test_windows_gate_disables_the_task_and_moves_the_startup_launcher_aside(tmp_path):
    home = tmp_path / "root" / "profiles" / "alpha"
    vbs = write(home / "gateway-service" / "Hermes_Gateway_alpha.vbs",
                f'env.Item("HERMES_HOME") = "{home}"\r\nsh.Run "pythonw.exe -m hermes_cli.main --profile alpha '
                f'gateway run", 0, False\r\n')
    startup = tmp_path / "Startup"
    launcher = write(startup / "Hermes_Gateway_alpha.vbs", "' launcher\r\n")
    (unit,) = NativeIndex(Places(str(tmp_path), "/nonexistent", "/nonexistent")).serving(str(home))
    assert unit.path == str(vbs)
    query = ("HostName: PC\r\nTaskName: \\Hermes_Gateway_alpha\r\nStatus: Ready\r\n"
             "Scheduled Task State: Enabled\r\n")
    runner = RecordingRunner(lambda a: ok(a, query) if "/Query" in a else None)
    tasks = WindowsTasks(runner, startup_dir=str(startup))
    facts = tasks.record(unit)
    assert (facts.enabled, facts.active, facts.main_pid, facts.tracks_pid) == (True, None, None, False)
    tasks.gate(unit, str(home), "/state")
    assert not launcher.exists() and Path(f"{launcher}.hermes-fleet-disabled").exists()
    tasks.stop(unit)  # Ready, not Running: nothing to end (the planned-stop marker stops the gateway)
    tasks.ungate(unit, str(home), facts)
    tasks.start(unit, facts)
    assert launcher.exists() and not (home / OWNED_FILE).exists()
    assert runner.mutating() == [
        ("schtasks", "/Change", "/TN", "Hermes_Gateway_alpha", "/DISABLE"),
        ("schtasks", "/Change", "/TN", "Hermes_Gateway_alpha", "/ENABLE"),
        ("schtasks", "/Run", "/TN", "Hermes_Gateway_alpha")]


def test_service_install_warns_only_of_units_not_gated(alpha):
    from fleet.service.base import ServiceTarget
    from fleet.service.systemd import SystemdManager

    unit, home, path = alpha
    manager = SystemdManager(ServiceTarget("default", "/f", "/s", "/p"), RecordingRunner(),
                             unit_dir=str(Path(path).parent), home=str(Path(home).parents[3]), user="u", version=252,
                             linger_mode="skip")
    (warning,) = manager.conflicts()
    assert unit.name in warning and "`hermes-fleet takeover` moves its profile" in warning
    SystemdUnits(RecordingRunner()).gate(unit, home, "/state")
    assert manager.conflicts() == []


def test_a_home_named_through_a_symlink_is_the_units_home_and_its_gate_too(host, tmp_path):
    """Hermes writes HERMES_HOME resolved; a manifest may name the same home through a symlink. Both name one
    home: the unit supervises it, and once gated (the owned file, the drop-in naming the resolved home) it no
    longer does, whichever name the gate was asked with."""
    disk = tmp_path / "disk"
    (disk / "profiles" / "alpha").mkdir(parents=True)
    linked = tmp_path / "linked"
    linked.symlink_to(disk)
    unit = write(Path(host.systemd_user) / "hermes-gateway-alpha.service", unit_text(f"{disk}/profiles/alpha", "alpha"))
    via_link = f"{linked}/profiles/alpha"
    assert find_native_service(via_link, NativeIndex(host)) == str(unit)
    write(f"{unit}.d/{GATE_DROPIN}", f"[Unit]\nConditionPathExists=!{via_link}/{OWNED_FILE}\n")
    (disk / "profiles" / "alpha" / OWNED_FILE).write_text("{}")
    assert find_native_service(via_link, NativeIndex(host)) is None
    assert find_native_service(f"{disk}/profiles/alpha", NativeIndex(host)) is None
