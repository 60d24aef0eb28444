"""The generated unit under a real, private `systemd --user` (docs/service.md, "Testing").

As root, a private mount namespace gets its own /run/systemd (so systemd believes it was
booted with systemd), a delegated cgroup and a private XDG_RUNTIME_DIR; `systemd --user`
runs there and is driven with `systemctl --user` over its private socket. Nothing of the
host's service managers is touched; everything started here is ended by PID.

Two scenarios, both: install -> controller up (READY) -> kill -9 of the controller ->
systemd restarts it -> the gateway is untouched and adopted -> uninstall.
- a stand-in controller (this file) built from the project's SdNotify and scope helpers,
  which checks the unit, readiness, the watchdog and scopes independently of the real
  controller;
- the real controller through the real CLI (`python -m fleet.cli.main service ...`).

The private manager is tests/systemd_user.py's (shared with the take-over tests). Skipped, with the reason,
where the set-up is impossible (not root, no unshare, no
systemd binary, a cgroup layout we cannot delegate, the manager does not come up).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from fleet.service.base import ServiceTarget, SubprocessRunner
from fleet.service.lifecycle import Lifecycle
from fleet.service.systemd import SystemdManager, systemd_version
from systemd_user import private_env, user_manager, wait_for  # noqa: F401

pytestmark = [pytest.mark.systemd, pytest.mark.timeout(150)]

REPO = Path(__file__).resolve().parent.parent


def _kill_recorded(paths) -> None:
    for path in paths:
        try:
            rec = json.loads(Path(path).read_text())
            proc = psutil.Process(int(rec["pid"]))
            if abs(proc.create_time() - float(rec["create_time"])) <= 1:
                proc.kill()
        except (OSError, ValueError, KeyError, psutil.Error):
            pass


def _gateway_environ(pid: int, argv: list[str]) -> dict[str, str]:
    """The gateway's environment once its exec chain is done: its PID runs `systemd-run --scope` first, then
    `env -u INVOCATION_ID`, then the gateway; `env` still carries the scope's INVOCATION_ID it is about to drop."""
    wait_for(lambda: psutil.Process(pid).cmdline() == argv, 30, f"pid {pid} to exec {argv}")
    return psutil.Process(pid).environ()


# ------------------------------------------------------------------ a stand-in controller

STAND_IN = r'''
import json, os, signal, subprocess, sys, time
import psutil
from fleet.service.notify import SdNotify
from fleet.platform.systemd_scope import scope_command, scope_unit_name, strip_service_env

state = sys.argv[1]
me = psutil.Process()
def write(path, obj):
    with open(path + ".tmp", "w") as fh:
        json.dump(obj, fh)
    os.replace(path + ".tmp", path)

write(os.path.join(state, ".supervisor.json"), {"pid": me.pid, "create_time": me.create_time(),
      "version": "stand-in", "started_at": time.time(), "epoch": 1})
record = os.path.join(state, "gw.pid")
rec = None
if os.path.exists(record):
    rec = json.load(open(record))
    try:
        if abs(psutil.Process(rec["pid"]).create_time() - rec["create_time"]) > 1:
            rec = None
    except psutil.Error:
        rec = None
if rec is None:
    gateway = [sys.executable, "-c", "import time\nwhile True: time.sleep(1)"]
    env = strip_service_env(os.environ)
    env["HERMES_FLEET_PROFILE"] = "gw"
    argv = scope_command(scope_unit_name("gw", str(time.time_ns())), gateway) or gateway
    child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    rec = {"pid": child.pid, "create_time": psutil.Process(child.pid).create_time(), "scoped": argv != gateway}
rec["controller_pid"] = me.pid
write(record, rec)
notify = SdNotify()
signal.signal(signal.SIGTERM, lambda *a: (notify.stopping(), sys.exit(0)))
notify.ready("1 profile converged")
while True:
    notify.watchdog()
    time.sleep(min(notify.watchdog_interval or 5, 5))
'''


@dataclass(frozen=True)
class StandInTarget(ServiceTarget):
    script: str = ""

    def controller_args(self) -> tuple[str, ...]:
        return (self.script, self.state_dir)


def _manager(target: ServiceTarget, env: dict[str, str]) -> SystemdManager:
    runner = SubprocessRunner()
    return SystemdManager(target, runner, unit_dir=os.path.join(env["XDG_CONFIG_HOME"], "systemd", "user"),
                          home=env["HOME"], user="root", version=systemd_version(runner), linger_mode="skip")


def test_unit_restarts_a_killed_controller_and_leaves_the_gateway_alone(private_env, tmp_path):
    state = tmp_path / "state"
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text("version: 1\nprofiles: {}\n")
    target = StandInTarget(fleet_name="live", fleet_file=str(fleet_file), state_dir=str(state), python=sys.executable,
                           script=str(script))
    manager = _manager(target, private_env.env)
    lines: list[str] = []
    lifecycle = Lifecycle(manager, runner=manager.runner, say=lines.append, verify_timeout=45)
    try:
        assert lifecycle.install(), "\n".join(lines)
        unit = manager.name
        props = private_env.show(unit)
        assert props["ActiveState"] == "active"
        assert props["StatusText"] == "1 profile converged"  # READY=1 + STATUS= arrived
        first_main = int(props["MainPID"])
        assert f"controller is up (PID {first_main})" in "\n".join(lines)

        gw = json.loads((state / "gw.pid").read_text())
        assert gw["scoped"] is True
        cgroup = Path(f"/proc/{gw['pid']}/cgroup").read_text()
        assert "hermes-fleet-gw-" in cgroup and ".scope" in cgroup, cgroup  # its own scope, not the unit's cgroup
        environ = _gateway_environ(gw["pid"], [sys.executable, "-c", "import time\nwhile True: time.sleep(1)"])
        assert not {"NOTIFY_SOCKET", "INVOCATION_ID", "WATCHDOG_USEC"} & environ.keys()

        os.kill(first_main, signal.SIGKILL)
        restarted = wait_for(
            lambda: (p := private_env.show(unit))["ActiveState"] == "active" and int(p["MainPID"]) not in (0, first_main)
            and int(p["NRestarts"]) >= 1 and p, 60, "systemd to restart the controller")
        second_main = int(restarted["MainPID"])
        survivor = psutil.Process(gw["pid"])
        assert abs(survivor.create_time() - gw["create_time"]) <= 1  # the very same gateway process
        adopted = wait_for(lambda: json.loads((state / "gw.pid").read_text())["controller_pid"] == second_main, 20,
                           "the new controller to adopt the gateway")
        assert adopted

        status = manager.status()
        assert status.running and status.pid == second_main and status.restarts >= 1

        lines.clear()
        assert lifecycle.install()
        assert lines and lines[0].startswith("nothing changed"), lines

        assert lifecycle.uninstall()
        assert not os.path.exists(manager.location)
        assert private_env.show(unit).get("LoadState") == "not-found"
        assert psutil.pid_exists(gw["pid"]) and psutil.Process(gw["pid"]).status() != psutil.STATUS_ZOMBIE
    finally:
        private_env.systemctl("stop", manager.name)
        _kill_recorded([state / "gw.pid", state / ".supervisor.json"])


# ------------------------------------------------------------------ the real controller


def _real_controller_missing() -> str | None:
    probe = subprocess.run([sys.executable, "-m", "fleet.cli.main", "controller", "run", "--help"],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    if probe.returncode != 0:
        return f"`python -m fleet.cli.main controller run` is not available: {(probe.stderr or probe.stdout).strip()[-300:]}"
    probe = subprocess.run([sys.executable, "-m", "fleet.cli.main", "service", "install", "--help"],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    if probe.returncode != 0:
        return "`hermes-fleet service` is not mounted in the CLI yet"
    return None


GATEWAY = "import os, time\nwhile True: time.sleep(1)\n"


def test_real_controller_under_systemd_survives_kill_and_adopts(private_env, tmp_path):
    reason = _real_controller_missing()
    if reason:
        pytest.skip(reason)
    state = tmp_path / "state"
    gateway = tmp_path / "gateway.py"
    gateway.write_text(GATEWAY)
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(textwrap.dedent(f"""\
        version: 1
        name: live
        stagger: 0s
        profiles:
          alpha:
            driver: process
            command: [{json.dumps(sys.executable)}, {json.dumps(str(gateway))}]
        """))
    env = dict(private_env.env, PATH=f"{os.path.dirname(sys.executable)}:{private_env.env['PATH']}")
    cli = [sys.executable, "-m", "fleet.cli.main", "service"]
    common = ["-f", str(fleet_file), "--state-dir", str(state)]
    unit = "hermes-fleet-live.service"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args, *common], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    try:
        done = run("install", "--linger", "skip", "--timeout", "45")
        assert done.returncode == 0, done.stdout + done.stderr
        props = private_env.show(unit)
        first_main = int(props["MainPID"])
        assert props["ActiveState"] == "active" and f"(PID {first_main})" in done.stdout

        record_path = state / "alpha.pid"
        gw = wait_for(lambda: record_path.exists() and json.loads(record_path.read_text()), 30, "the gateway record")
        gw_pid, gw_created = int(gw["pid"]), float(gw["create_time"])
        environ = _gateway_environ(gw_pid, [sys.executable, str(gateway)])
        assert not {"NOTIFY_SOCKET", "INVOCATION_ID", "WATCHDOG_USEC", "WATCHDOG_PID"} & environ.keys()
        assert ".scope" in Path(f"/proc/{gw_pid}/cgroup").read_text()  # spawned in its own transient scope

        os.kill(first_main, signal.SIGKILL)
        restarted = wait_for(
            lambda: (p := private_env.show(unit))["ActiveState"] == "active" and int(p["MainPID"]) not in (0, first_main)
            and int(p["NRestarts"]) >= 1 and p, 60, "systemd to restart the controller")
        second_main = int(restarted["MainPID"])
        assert abs(psutil.Process(gw_pid).create_time() - gw_created) <= 1  # untouched
        wait_for(lambda: int(json.loads(record_path.read_text()).get("controller_pid", 0)) == second_main, 30,
                 "the new controller to adopt the gateway")
        assert int(json.loads(record_path.read_text())["pid"]) == gw_pid  # adopted, not respawned

        shown = run("status", "-o", "json", "--no-fleet")
        report = json.loads(shown.stdout)
        assert report["registration"]["running"] is True and report["registration"]["restarts"] >= 1
        assert report["controller"]["pid"] == second_main

        again = run("install", "--linger", "skip")
        assert again.returncode == 0 and "nothing changed" in again.stdout

        gone = run("uninstall")
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert private_env.show(unit).get("LoadState") == "not-found"
        assert psutil.pid_exists(gw_pid)  # uninstall leaves gateways running by default
    finally:
        private_env.systemctl("stop", unit)
        _kill_recorded([state / "alpha.pid", state / ".supervisor.json"])
