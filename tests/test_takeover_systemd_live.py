"""Taking over a unit under a REAL, private `systemd --user` (tests/systemd_user.py): a unit that runs the demo
gateway as Hermes' own unit runs the real one (Environment=HERMES_HOME, ExecStart ... --profile alpha gateway run,
Restart=always). The take-over drains it while a turn is in flight, the drop-in gates every start (`systemctl
--user start` and Restart=always end in ConditionResult=no) while the fleet runs the gateway, a controller killed
mid-way is resumed, and `release` has the unit serving again. Skipped, with the reason, where a private manager
cannot run here."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from fleet.service.native import GATE_DROPIN, OWNED_FILE
from fleet_harness import DEMO_HERMES, fleet  # noqa: F401
from helpers import read_json, wait_until
from native_fakes import GatewayWatch, lock_holder, wait_state
from systemd_user import private_env, user_manager  # noqa: F401

pytestmark = [pytest.mark.systemd, pytest.mark.timeout(240)]

UNIT = "hermes-gateway-alpha.service"


def _install(manager, home) -> str:
    unit_dir = manager.home / ".config" / "systemd" / "user"
    unit_dir.mkdir(parents=True, exist_ok=True)
    (unit_dir / UNIT).write_text(
        "[Unit]\nDescription=Hermes Agent Gateway - Messaging Platform Integration\nStartLimitIntervalSec=0\n\n"
        f"[Service]\nType=simple\nExecStart={sys.executable} {DEMO_HERMES} --profile alpha gateway run\n"
        f"WorkingDirectory={home}\nEnvironment=\"HERMES_HOME={home}\"\nEnvironment=FAKE_HERMES_POLL_S=0.05\n"
        "Restart=always\nRestartSec=1\nKillMode=mixed\nKillSignal=SIGTERM\nTimeoutStopSec=60\n\n"
        "[Install]\nWantedBy=default.target\n")
    assert manager.systemctl("daemon-reload").returncode == 0
    assert manager.systemctl("enable", "--now", UNIT).returncode == 0
    return str(unit_dir / UNIT)


def _main_pid(manager) -> int:
    return int(manager.show(UNIT, "MainPID")["MainPID"])


def _serving(manager, fleet, other_than: int | None = None) -> int:
    def ok():
        pid = _main_pid(manager)
        st = read_json(fleet.profile_home("alpha") / "gateway_state.json")
        return pid if pid and pid != other_than and isinstance(st, dict) and st.get("pid") == pid \
            and st.get("gateway_state") == "running" else None
    return wait_until(ok, 30, what="the unit's gateway serving")


def test_takeover_and_release_under_a_real_user_manager(private_env, fleet, monkeypatch):
    manager = private_env
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    fleet.write_manifest({"alpha": None}, drain_timeout="30s", startup_grace="20s")
    home = fleet.profile_home("alpha")
    home.mkdir(parents=True)
    path = _install(manager, home)
    dropin = f"{path}.d/{GATE_DROPIN}"
    first = _serving(manager, fleet)
    try:
        with GatewayWatch(fleet, ["alpha"]) as watch:
            fleet.control("alpha", active_agents=1)
            started = fleet.cli("apply", "--take-over", "--no-wait")
            assert started.returncode == 0, fleet.explain(started)
            row = wait_state(fleet, "alpha", ("draining",), 30)
            assert row.units[0]["main_pid"] == first and row.units[0]["enabled"] is True
            assert row.units[0]["invocation"] and row.units[0]["file_hash"].startswith("sha256:")
            assert manager.show(UNIT, "DropInPaths")["DropInPaths"] == dropin  # systemd itself sees the gate

            # The controller is killed while the unit's gateway drains; the next one finishes the take-over.
            fleet.note_pids()
            fleet.kill9(fleet.controller_pid())
            time.sleep(1.0)
            assert _main_pid(manager) == first  # the turn goes on
            assert fleet.cli("apply", "--no-wait").returncode == 0
            fleet.control("alpha", active_agents=0)
            done = wait_state(fleet, "alpha", ("done", "rolled_back", "failed"), 90)
            assert done.state == "done", done
            ours = fleet.wait_running("alpha", timeout=30)
            assert lock_holder(fleet, "alpha") == ours
            assert ".scope" in Path(f"/proc/{ours}/cgroup").read_text()  # the fleet's own scope, not the unit's
            ended = manager.show(UNIT, "ActiveState,Result,MainPID")
            assert ended == {"ActiveState": "inactive", "Result": "success", "MainPID": "0"}  # the take-over's test

            # Every way back in is gated: a start, and Restart=always after the planned stop.
            manager.systemctl("start", UNIT)
            gated = manager.show(UNIT, "ActiveState,ConditionResult,MainPID")
            assert gated == {"ActiveState": "inactive", "ConditionResult": "no", "MainPID": "0"}, gated
            time.sleep(2.5)  # RestartSec=1: a restart would have come by now
            assert _main_pid(manager) == 0 and lock_holder(fleet, "alpha") == ours

            released = fleet.cli("release", "alpha", timeout=120)
            assert released.returncode == 0, fleet.explain(released)
            fleet.wait_gone(ours, 30)
            back = _serving(manager, fleet, other_than=first)
            assert lock_holder(fleet, "alpha") == back and manager.show(UNIT, "ActiveState")["ActiveState"] == "active"
            assert not os.path.exists(dropin) and not (home / OWNED_FILE).exists()
            assert manager.show(UNIT, "DropInPaths")["DropInPaths"] == ""
            assert manager.systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
            assert fleet.profiles()["alpha"]["note"].startswith(f"released to {UNIT} since")
        watch.assert_never_two()
    finally:
        manager.systemctl("disable", "--now", UNIT)
