"""Windows mechanisms, checked on any OS: the task XML against the fields Task Scheduler
needs, the Startup-folder launcher, the SCM service behind a fake ScmApi, the task ->
Startup-folder fallback, the service host and the hidden launcher entry point."""

from __future__ import annotations

import locale
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from fleet.service.base import CommandResult, ServiceError, ServiceTarget, decode_output
from fleet.service.lifecycle import Lifecycle
from fleet.service.windows_common import WindowsHost, pythonw_for
from fleet.service.windows_service import (
    FAILURE_RESET_PERIOD_S, FAILURE_RESTART_DELAYS_MS, ScmServiceInfo, WindowsServiceManager, sc_failure_commands,
    service_host_argv,
)
from fleet.service.windows_startup import StartupFolderManager, render_startup_vbs
from fleet.service.windows_task import TASK_NS, ScheduledTaskManager, parse_task_xml, render_task_xml, task_field
from fleet.service.winservice_main import ControllerHost, HostArgs, controller_failure, parse_args

try:
    from test_service_fakes import RecordingRunner, failed, isolated_home, ok, processes
except ImportError:
    from tests.test_service_fakes import RecordingRunner, failed, isolated_home, ok, processes  # noqa: F401

WIN_TARGET = ServiceTarget(
    fleet_name="demo", fleet_file=r"C:\Users\Zoë & Co\fleets\fleet.yaml",
    state_dir=r"C:\Users\Zoë & Co\.hermes\gateway", python=r"C:\Users\Zoë & Co\venv\Scripts\python.exe",
)
WIN_HOST = WindowsHost(
    account=r"DESKTOP\zoe", appdata=r"C:\Users\Zoë & Co\AppData\Roaming", is_admin=False,
    pythonw=r"C:\Users\Zoë & Co\venv\Scripts\pythonw.exe", service_python=r"C:\Python311\python.exe",
    site_dirs=(r"C:\Users\Zoë & Co\venv\Lib\site-packages",),
)


def q(path: str) -> str:
    return "/".join(f"{{{TASK_NS}}}{part}" for part in path.split("/"))


# ------------------------------------------------------------------ Scheduled Task XML


def task_root() -> ET.Element:
    manager = ScheduledTaskManager(WIN_TARGET, RecordingRunner(), host=WIN_HOST)
    [artifact] = manager.render()
    data = artifact.data
    assert data[:2] == b"\xff\xfe"  # UTF-16 LE with a BOM, as Task Scheduler exports it
    return ET.fromstring(data)  # the parser reads the BOM and the encoding declaration itself


def test_task_xml_is_schema_1_3_in_the_task_namespace():
    root = task_root()
    assert root.tag == f"{{{TASK_NS}}}Task"
    assert root.get("version") == "1.3"
    assert root.find(q("RegistrationInfo/URI")).text == "\\hermes-fleet\\controller-demo"


def test_task_xml_has_the_fields_task_scheduler_needs():
    root = task_root()
    logon = root.find(q("Triggers/LogonTrigger"))
    assert logon.find(q("Repetition/Interval")).text == "PT5M"
    assert logon.find(q("Repetition/StopAtDurationEnd")).text == "false"
    assert logon.find(q("Repetition/Duration")) is None  # no duration: repeats forever
    assert logon.find(q("UserId")).text == "DESKTOP\\zoe"
    principal = root.find(q("Principals/Principal"))
    assert principal.find(q("LogonType")).text == "InteractiveToken"
    assert principal.find(q("RunLevel")).text == "LeastPrivilege"
    settings = root.find(q("Settings"))
    assert settings.find(q("Hidden")).text == "true"
    assert settings.find(q("MultipleInstancesPolicy")).text == "IgnoreNew"
    assert settings.find(q("ExecutionTimeLimit")).text == "PT0S"
    assert settings.find(q("Priority")).text == "5"  # 7, the default, is below-normal
    assert settings.find(q("DisallowStartIfOnBatteries")).text == "false"
    assert settings.find(q("StopIfGoingOnBatteries")).text == "false"
    restart = settings.find(q("RestartOnFailure"))
    assert 1 <= int(restart.find(q("Count")).text) <= 255
    assert restart.find(q("Interval")).text == "PT1M"  # the schema minimum


def test_task_action_runs_pythonw_directly_with_the_hidden_launcher():
    root = task_root()
    exe = root.find(q("Actions/Exec"))
    assert exe.find(q("Command")).text == WIN_HOST.pythonw
    assert exe.find(q("WorkingDirectory")).text == WIN_TARGET.state_dir
    assert exe.find(q("Arguments")).text == subprocess.list2cmdline([
        "-m", "fleet.cli.logged_main", "--log-file", r"C:\Users\Zoë & Co\.hermes\gateway\logs\controller.log",
        "--service", "task", "--", "controller", "run", "-f", WIN_TARGET.fleet_file, "--state-dir", WIN_TARGET.state_dir,
    ])


def test_task_xml_path_is_next_to_the_state():
    manager = ScheduledTaskManager(WIN_TARGET, RecordingRunner(), host=WIN_HOST)
    assert manager.xml_path == r"C:\Users\Zoë & Co\.hermes\gateway\service\controller-demo.task.xml"


def test_pythonw_is_found_next_to_the_interpreter():
    assert pythonw_for(r"C:\venv\Scripts\python.exe") == r"C:\venv\Scripts\pythonw.exe"
    assert pythonw_for(r"C:\venv\Scripts\pythonw.exe") == r"C:\venv\Scripts\pythonw.exe"


def test_schtasks_output_is_decoded_with_the_locale_encoding(monkeypatch):
    monkeypatch.setattr(locale, "getencoding", lambda: "cp932")
    assert decode_output("エラー: アクセスが拒否されました。".encode("cp932")) == "エラー: アクセスが拒否されました。"
    assert decode_output(b"\x81") == "\ufffd"  # undecodable bytes are replaced, never raise


# ------------------------------------------------------------------ Startup-folder launcher


def test_startup_launcher_is_hidden_and_checks_its_targets():
    text = render_startup_vbs(WIN_TARGET, WIN_HOST)
    assert f'If Not fso.FileExists("{WIN_HOST.pythonw}") Then WScript.Quit 0' in text
    assert f'If Not fso.FileExists("{WIN_TARGET.fleet_file}") Then WScript.Quit 0' in text
    assert f'If Not fso.FolderExists("{WIN_TARGET.state_dir}") Then WScript.Quit 0' in text
    run_line = next(line for line in text.splitlines() if line.startswith("shell.Run"))
    assert run_line.endswith(", 0, False")  # window style 0: hidden
    assert '""C:\\Users\\Zoë & Co\\venv\\Scripts\\pythonw.exe""' in run_line  # quotes doubled for VBScript
    manager = StartupFolderManager(WIN_TARGET, RecordingRunner(), host=WIN_HOST)
    [artifact] = manager.render()
    assert artifact.path == r"C:\Users\Zoë & Co\AppData\Roaming\Microsoft\Windows\Start Menu\Programs\Startup\hermes-fleet-demo.vbs"
    assert artifact.data.startswith(b"\xff\xfe") and artifact.data.decode("utf-16").lstrip("\ufeff") == text


# ------------------------------------------------------------------ task install with a fake schtasks


class FakeSchtasks:
    """schtasks as seen by the installer; /Run starts a real stand-in controller."""

    def __init__(self, processes, state_dir, create_denied=False):
        self.processes = processes
        self.state_dir = state_dir
        self.create_denied = create_denied
        self.registered: str | None = None
        self.enabled = True
        self.proc = None

    def __call__(self, args):
        if args[0] == "wscript.exe":
            self.proc = self.processes.controller(self.state_dir)
            return ok(args)
        if args[0] != "schtasks":
            return None
        verb = args[1]
        if verb == "/Create":
            if self.create_denied:
                return failed(args, 1, "ERROR: Access is denied.")
            xml_path = args[args.index("/XML") + 1]
            with open(xml_path, "rb") as fh:
                self.registered = fh.read().decode("utf-16")
            self.enabled = True
            return ok(args, "SUCCESS: The scheduled task has successfully been created.")
        if self.registered is None:
            return failed(args, 1, "ERROR: The system cannot find the file specified.")
        if verb == "/Query":
            text = self.registered
            if not self.enabled:
                text = text.replace("<Enabled>true</Enabled>\n    <Hidden>", "<Enabled>false</Enabled>\n    <Hidden>")
            return ok(args, text)
        if verb == "/Run":
            if self.proc is None or self.proc.poll() is not None:  # IgnoreNew
                self.proc = self.processes.controller(self.state_dir)
            return ok(args)
        if verb == "/End":
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(10)
            return ok(args)
        if verb == "/Change":
            self.enabled = "/ENABLE" in args
            return ok(args)
        if verb == "/Delete":
            self.registered = None
            return ok(args)
        return failed(args, 1, "bad verb")


@pytest.fixture
def task_setup(tmp_path, processes, isolated_home):
    def build(create_denied=False):
        tgt = ServiceTarget("demo", str(tmp_path / "fleet.yaml"), str(tmp_path / "state"), sys.executable)
        host = WindowsHost(account="HOST\\zoe", appdata=str(isolated_home / "AppData" / "Roaming"), is_admin=False,
                           pythonw=pythonw_for(sys.executable), service_python=sys.executable)
        fake = FakeSchtasks(processes, tgt.state_dir, create_denied)
        runner = RecordingRunner(fake)
        manager = ScheduledTaskManager(tgt, runner, host=host)
        lines: list[str] = []
        return fake, runner, manager, lines, Lifecycle(manager, runner=runner, say=lines.append, verify_timeout=15)
    return build


def test_task_install_registers_runs_and_is_idempotent(task_setup):
    fake, runner, manager, lines, lifecycle = task_setup()
    assert lifecycle.install(), lines
    assert runner.mutating() == [
        ("schtasks", "/Create", "/TN", "hermes-fleet\\controller-demo", "/XML", manager.xml_path, "/F"),
        ("schtasks", "/Run", "/TN", "hermes-fleet\\controller-demo"),
    ]
    assert f"the controller is up (PID {fake.proc.pid})" in "\n".join(lines)
    status = manager.status()
    assert status.installed and status.enabled and status.current
    runner.calls.clear()
    lines.clear()
    assert lifecycle.install()
    assert lines[0].startswith("nothing changed") and runner.mutating() == []


def test_task_stop_disables_so_the_repetition_does_not_undo_it(task_setup):
    fake, runner, manager, lines, lifecycle = task_setup()
    assert lifecycle.install()
    assert lifecycle.stop()
    assert runner.mutating()[-2:] == [("schtasks", "/Change", "/TN", manager.name, "/DISABLE"),
                                      ("schtasks", "/End", "/TN", manager.name)]
    status = manager.status()
    assert status.enabled is False and any("service start" in a for a in status.advice)
    assert lifecycle.start()
    assert ("schtasks", "/Change", "/TN", manager.name, "/ENABLE") in runner.calls and fake.proc.poll() is None


def test_task_uninstall_deletes_the_task_and_the_xml(task_setup):
    fake, runner, manager, lines, lifecycle = task_setup()
    assert lifecycle.install()
    assert lifecycle.uninstall()
    assert fake.registered is None and not os.path.exists(os.path.dirname(manager.xml_path))
    assert fake.proc.poll() is not None


def test_access_denied_falls_back_to_the_startup_folder(task_setup, isolated_home):
    fake, runner, manager, lines, lifecycle = task_setup(create_denied=True)
    assert lifecycle.install(), lines
    text = "\n".join(lines)
    assert "could not register the scheduled-task (exit 1: ERROR: Access is denied.); falling back to startup-folder" in text
    launcher = isolated_home / "AppData" / "Roaming" / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup" / "hermes-fleet-demo.vbs"
    assert launcher.exists()
    assert ("wscript.exe", "//B", "//Nologo", str(launcher)) in runner.calls
    assert not os.path.exists(manager.xml_path)  # the failed mechanism leaves nothing behind
    assert "nothing restarts it after a crash" in text
    startup = manager.fallback_manager
    status = startup.status()
    assert status.installed and status.mechanism == "startup-folder"
    assert any("no OS restart-on-crash" in n for n in status.notes)
    assert Lifecycle(startup, runner=runner, say=lines.append).uninstall()
    assert not launcher.exists() and fake.proc.poll() is not None


# ------------------------------------------------------------------ Windows service (SCM) with a fake ScmApi


class FakeScm:
    def __init__(self, processes, state_dir):
        self.processes = processes
        self.state_dir = state_dir
        self.calls: list[tuple] = []
        self.services: dict[str, dict] = {}
        self.proc = None

    def query(self, name):
        svc = self.services.get(name)
        if svc is None:
            return None
        running = self.proc is not None and self.proc.poll() is None
        return ScmServiceInfo(
            binary_path=svc["spec"].binary_path, account=svc["spec"].account, start_type="auto", delayed_start=True,
            state="running" if running else "stopped", pid=self.proc.pid if running else None,
            failure_reset_s=svc.get("reset"), failure_delays_ms=svc.get("delays", ()),
            failure_actions_on_non_crash=svc.get("flag"),
        )

    def create(self, spec, password):
        self.calls.append(("create", spec, password))
        self.services[spec.name] = {"spec": spec}

    def update(self, spec, password):
        self.calls.append(("update", spec, password))
        self.services[spec.name]["spec"] = spec

    def set_failure_actions(self, name, reset, delays):
        self.calls.append(("failure_actions", name, reset, delays))
        self.services[name].update(reset=reset, delays=tuple(delays))

    def set_failure_actions_flag(self, name, enabled):
        self.calls.append(("failure_flag", name, enabled))
        self.services[name]["flag"] = enabled

    def start(self, name):
        self.calls.append(("start", name))
        self.proc = self.processes.controller(self.state_dir)

    def stop(self, name, timeout):
        self.calls.append(("stop", name))
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def delete(self, name):
        self.calls.append(("delete", name))
        del self.services[name]

    def grant_service_logon_right(self, account):
        self.calls.append(("grant", account))


@pytest.fixture
def scm_setup(tmp_path, processes, isolated_home):
    def build(tgt=None, scm=None, account="HOST\\zoe"):
        tgt = tgt or ServiceTarget("demo", str(tmp_path / "fleet.yaml"), str(tmp_path / "state"), sys.executable)
        scm = scm or FakeScm(processes, tgt.state_dir)
        host = WindowsHost(account=account, appdata=str(isolated_home), is_admin=True,
                           pythonw=pythonw_for(sys.executable), service_python=sys.executable)
        passwords: list[str] = []
        manager = WindowsServiceManager(tgt, RecordingRunner(), host=host, scm=scm,
                                        password=lambda acct: passwords.append(acct) or "s3cret")
        lines: list[str] = []
        return scm, manager, passwords, lines, Lifecycle(manager, runner=manager.runner, say=lines.append,
                                                         verify_timeout=15)
    return build


def test_service_install_sets_the_recovery_ladder_and_runs_as_the_user(scm_setup):
    scm, manager, passwords, lines, lifecycle = scm_setup()
    assert lifecycle.install(), lines
    kinds = [c[0] for c in scm.calls]
    assert kinds == ["grant", "create", "failure_actions", "failure_flag", "start"]
    create = scm.calls[1]
    assert create[1].name == "HermesFleet-demo" and create[1].account == "HOST\\zoe" and create[2] == "s3cret"
    assert passwords == ["HOST\\zoe"]
    assert scm.calls[2] == ("failure_actions", "HermesFleet-demo", 60,
                            (1000, 2000, 4000, 9000, 16000, 25000, 36000, 49000, 64000))
    assert scm.calls[3] == ("failure_flag", "HermesFleet-demo", True)
    assert f"the controller is up (PID {scm.proc.pid})" in "\n".join(lines)
    assert FAILURE_RESET_PERIOD_S == 60 and FAILURE_RESTART_DELAYS_MS[-1] == 64000


def test_service_second_install_changes_nothing(scm_setup):
    scm, manager, passwords, lines, lifecycle = scm_setup()
    assert lifecycle.install()
    scm.calls.clear()
    lines.clear()
    assert lifecycle.install()
    assert lines[0].startswith("nothing changed") and scm.calls == []


def test_service_changed_target_is_updated_and_restarted(scm_setup, tmp_path):
    scm, manager, passwords, lines, lifecycle = scm_setup()
    assert lifecycle.install()
    first = scm.proc.pid
    moved = ServiceTarget("demo", str(tmp_path / "other.yaml"), str(tmp_path / "state"), sys.executable)
    scm2, manager2, _, lines2, lifecycle2 = scm_setup(tgt=moved, scm=scm)
    assert lifecycle2.install(), lines2
    assert [c[0] for c in scm.calls[-6:]] == ["grant", "update", "failure_actions", "failure_flag", "stop", "start"]
    assert scm.proc.pid != first


def test_service_never_runs_as_localsystem(scm_setup):
    scm, manager, passwords, lines, lifecycle = scm_setup(account="LocalSystem")
    with pytest.raises(ServiceError, match="LocalSystem"):
        manager.spec()


def test_service_uninstall_stops_and_deletes(scm_setup):
    scm, manager, passwords, lines, lifecycle = scm_setup()
    assert lifecycle.install()
    assert lifecycle.uninstall()
    assert [c[0] for c in scm.calls[-2:]] == ["stop", "delete"] and scm.services == {}


def test_service_host_command_line_uses_the_base_interpreter():
    argv = service_host_argv(WIN_TARGET, WIN_HOST)
    assert argv[0] == r"C:\Python311\python.exe" and argv[1] == "-c"
    assert argv[3] == r"C:\Users\Zoë & Co\venv\Lib\site-packages"
    assert argv[4:] == ("--service-name", "HermesFleet-demo", "--python", WIN_TARGET.python,
                        "-f", WIN_TARGET.fleet_file, "--state-dir", WIN_TARGET.state_dir)
    assert parse_args(list(argv[4:])) == HostArgs("HermesFleet-demo", WIN_TARGET.python, WIN_TARGET.fleet_file,
                                                  WIN_TARGET.state_dir)


def test_sc_exe_equivalents():
    assert sc_failure_commands("HermesFleet") == [
        "sc.exe failure HermesFleet reset= 60 actions= restart/1000/restart/2000/restart/4000/restart/9000/"
        "restart/16000/restart/25000/restart/36000/restart/49000/restart/64000",
        "sc.exe failureflag HermesFleet 1",
    ]


# ------------------------------------------------------------------ the service host (winservice_main)


class FakeProcess:
    def __init__(self, exit_after_polls: int | None):
        self.pid = 4321
        self.polls = 0
        self.exit_after = exit_after_polls
        self.code = None
        self.terminated = False

    def poll(self):
        self.polls += 1
        if self.exit_after is not None and self.polls > self.exit_after and self.code is None:
            self.code = 1
        return self.code

    def terminate(self):
        self.terminated = True
        self.code = 1

    def wait(self, timeout=None):
        return self.code

    def kill(self):
        self.code = -9


def test_service_host_starts_the_controller_hidden_and_reports_its_crash(tmp_path):
    calls = []
    proc = FakeProcess(exit_after_polls=2)
    host = ControllerHost(HostArgs("HermesFleet", sys.executable, "f.yaml", str(tmp_path)),
                          popen=lambda argv, **kw: calls.append((argv, kw)) or proc)
    host.start()
    (argv, kwargs), = calls
    assert argv == [sys.executable, "-m", "fleet.cli.main", "controller", "run", "-f", "f.yaml", "--state-dir", str(tmp_path)]
    assert kwargs["creationflags"] == 0x08000000 | 0x00000200  # no window, own process group
    assert kwargs["stdin"] is subprocess.DEVNULL and kwargs["env"]["HERMES_FLEET_SERVICE"] == "winsvc"
    assert host.wait(lambda seconds: False, poll=0) == 1
    assert controller_failure(1) == "the hermes-fleet controller exited with status 1"
    assert controller_failure(0) is None and controller_failure(None) is None


def test_service_host_stop_ends_only_the_controller(tmp_path):
    stopped = []
    holder = type("H", (), {"alive": True, "pid": 999})()
    proc = FakeProcess(exit_after_polls=None)
    host = ControllerHost(HostArgs("HermesFleet", sys.executable, "f.yaml", str(tmp_path)),
                          popen=lambda argv, **kw: proc, holder=lambda state: holder,
                          stop_holder=lambda h: stopped.append(h.pid) or True)
    host.start()
    assert host.wait(lambda seconds: True, poll=0) is None  # a stop request: a clean stop
    assert stopped == [999] and proc.terminated


# ------------------------------------------------------------------ the hidden launcher


def test_logged_main_sends_the_cli_output_to_the_log(tmp_path):
    log = tmp_path / "logs" / "controller.log"
    result = subprocess.run([sys.executable, "-m", "fleet.cli.logged_main", "--log-file", str(log),
                             "--service", "task", "--", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert result.stdout == "" and "Usage" in log.read_text()


def test_logged_main_rejects_a_malformed_line():
    from fleet.cli.logged_main import split_args

    assert split_args(["--log-file", "x.log", "--service", "task", "--", "controller", "run"]) == \
        ("x.log", "task", ["controller", "run"])
    with pytest.raises(ValueError):
        split_args(["controller", "run"])
    with pytest.raises(ValueError):
        split_args(["--log-file", "x.log"])


def test_logged_main_rotates_a_big_log(tmp_path):
    from fleet.cli.logged_main import rotate

    log = tmp_path / "c.log"
    log.write_bytes(b"x" * 100)
    rotate(str(log), limit=10)
    assert not log.exists() and (tmp_path / "c.log.1").read_bytes() == b"x" * 100


def test_parse_task_xml_tolerates_a_bom_and_declaration():
    root = parse_task_xml("\ufeff" + render_task_xml(WIN_TARGET, WIN_HOST))
    assert task_field(root, "Settings/Priority") == "5"
    assert parse_task_xml("not xml") is None


def test_rendering_refuses_control_characters():
    with pytest.raises(ServiceError):
        render_task_xml(replace(WIN_TARGET, state_dir="C:\\a\r\nb"), WIN_HOST)


def test_runner_result_helpers():
    assert CommandResult(("x",), 1, "", "first\nsecond").first_error_line() == "first"
    assert CommandResult(("x",), 3, "", "").first_error_line() == "exit status 3"
