"""A whole fleet on the Windows platform: the CLI and the controller run WindowsPlatform's real code, with only
the lowest OS calls replaced (tests/platform_fakes.py), and the demo gateways behave as Hermes does on Windows
(FAKE_HERMES_AS_WINDOWS: start times from the create time, no signal handlers, so the planned-stop marker is
the only graceful stop they hear). The controller ignores SIGTERM: only the Windows ways can stop it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fleet.platform.controller_process import stop_controller
from fleet.store.layout import StateDir
from fleet.store.lock import read_holder
from fleet_harness import FleetHarness, alive
from helpers import read_json, wait_until
from platform_fakes import windows_platform

pytestmark = [
    pytest.mark.platform,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the stand-ins are made of Linux calls"),
    pytest.mark.timeout(120),
]

FAKES = Path(__file__).resolve().parent / "platform_fakes.py"


@pytest.fixture
def windows_fleet(tmp_path):
    harness = FleetHarness(tmp_path)
    harness._popens = []
    harness.cli_entry = [sys.executable, str(FAKES), "windows-cli"]
    harness.controller_entry = [sys.executable, str(FAKES), "windows-controller"]
    harness.base_env["FAKE_HERMES_AS_WINDOWS"] = "1"
    try:
        yield harness
    finally:
        harness.cleanup()


def test_a_fleet_runs_on_the_windows_platform_from_spawn_to_adoption(windows_fleet):
    fleet = windows_fleet
    fleet.write_manifest({"alpha": None, "beta": None, "gamma": None}, drain_timeout="2s")
    result = fleet.apply()
    assert "Converged: 3 running." in result.stdout, fleet.explain(result)
    state = StateDir(fleet.state)
    assert Path(state.wake_port).exists() and not Path(state.wake_socket).exists()
    first = {name: fleet.wait_running(name) for name in ("alpha", "beta", "gamma")}
    controller = fleet.controller_pid()

    # An exit wakes the controller through its handle waiter, and only that gateway is respawned.
    fleet.kill9(first["alpha"])
    alpha = fleet.wait_running("alpha", other_than=first["alpha"])
    assert fleet.pid("beta") == first["beta"] and fleet.pid("gamma") == first["gamma"]

    # A stop drains through Hermes' drain request and the planned-stop marker: the gateway exits 0 by itself.
    assert fleet.cli("stop", "beta").returncode == 0
    fleet.wait_gone(first["beta"])
    assert read_json(fleet.profile_home("beta") / "gateway_state.json")["gateway_state"] == "stopped"
    assert fleet.journal_kinds("beta", "stop_sent") and not fleet.journal_kinds("beta", "killed")

    # A hung gateway ignores the marker; after the drain timeout it is killed (taskkill /F), identity checked.
    fleet.control("gamma", hang=True)
    assert fleet.cli("stop", "gamma").returncode == 0
    fleet.wait_gone(first["gamma"], timeout=30)
    # The kill's journal row follows the process's end: the controller writes it once taskkill has returned.
    wait_until(lambda: fleet.journal_kinds("gamma", "killed"), 10,
               what="gamma's kill in the journal")

    # The controller stops on its wake channel's `stop` (it ignores SIGTERM) and leaves the gateways running.
    holder = read_holder(state)
    assert holder is not None and holder.pid == controller
    platform, _ = windows_platform()
    assert stop_controller(state, holder, 20, platform=platform)
    wait_until(lambda: not alive(controller), 10, what="the controller to exit")
    assert [e.kind for e in fleet.journal() if e.kind.startswith("controller_")][-1] == "controller_stopped"
    assert alive(alpha) and fleet.pid("alpha") == alpha

    # The next controller adopts what runs; nothing is started twice.
    fleet.clear_control("gamma")
    fleet.start_controller()
    wait_until(lambda: fleet.controller_pid() not in (None, controller), 15, what="a new controller")
    wait_until(lambda: any(str(alpha) in e.message for e in fleet.journal_kinds("alpha", "adopted")), 15,
               what="alpha's adoption")
    assert fleet.pid("alpha") == alpha and fleet.marked_pids("alpha") == [alpha]
    assert fleet.pid("beta") is None and fleet.pid("gamma") is None  # stopped stays stopped
    assert os.path.exists(state.wake_port)
