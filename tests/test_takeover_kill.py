"""A controller killed (SIGKILL, by PID) in the middle of a take-over, in each of its states: the next controller
resumes it from its durable state and finishes it, or rolls it back, and no two gateways of the home ever run at
once (a watcher samples the processes all along). Real controllers, the demo gateway as the unit's gateway and as
the fleet's, the fake `systemctl` of tests/fake_systemctl.py, whose commands can be held so that the controller is
killed exactly there."""

from __future__ import annotations

import json
import os
import sys

import pytest

from fleet.service.native import GATE_DROPIN, OWNED_FILE
from fleet_harness import DEMO_HERMES, fleet  # noqa: F401
from helpers import read_json, short_in_ci
from native_fakes import GatewayWatch, lock_holder, units, wait_state  # noqa: F401

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="the demo unit's PID checks read /proc")]

# state killed in -> how the take-over ends
KILLS = {"requested": "done", "recorded": "done", "draining": "done", "stopping": "done", "spawning": "done",
         "giving_back": "rolled_back", "unit_starting": "rolled_back"}


def _arrange(fleet, units, where: str) -> None:
    """Hold the take-over in `where` (before it starts, or as soon as it gets there)."""
    if where == "requested":
        units.block("show")
    elif where == "recorded":
        units.block("daemon-reload")
    elif where in ("draining", "giving_back"):
        fleet.control("alpha", active_agents=1)
    elif where == "stopping":
        units.block("stop")
    elif where == "unit_starting":
        units.fail("stop")  # the gateway ends on its planned-stop marker all the same; the rollback starts the unit
        (units.dir / "start-delay").write_text("4")


def _reach(fleet, units, where: str) -> None:
    if where == "requested":
        units.wait_blocked("show")
    elif where == "recorded":
        units.wait_blocked("daemon-reload")
    elif where == "giving_back":
        wait_state(fleet, "alpha", ("draining",), 30)
        units.block("daemon-reload")  # the gate's reload is done: the next one is the give-back's
        units.wait_blocked("daemon-reload", 60)
    elif where == "stopping":
        units.wait_blocked("stop")
    wait_state(fleet, "alpha", (where,), 60)


def _release(fleet, units, where: str) -> None:
    for verb in ("show", "daemon-reload", "stop"):
        units.unblock(verb)
    if where == "draining":
        fleet.control("alpha", active_agents=0)


@pytest.mark.parametrize("where", short_in_ci(KILLS, ("draining", "giving_back")))
def test_a_controller_killed_mid_takeover_resumes_and_ends_it(fleet, units, where):
    command = [sys.executable, str(DEMO_HERMES)]
    if where == "spawning":  # the fleet's gateway takes 2 s to start: long enough to be killed while it verifies
        command = ["sh", "-c", 'sleep 2; exec "$0" "$@"', *command]
    fleet.command = command
    fleet.write_manifest({"alpha": None}, drain_timeout="3s" if where == "giving_back" else "30s",
                         startup_grace="10s")
    unit = units.install(fleet, "alpha")
    home = fleet.profile_home("alpha")
    first = units.main_pid(unit)
    _arrange(fleet, units, where)
    with GatewayWatch(fleet, ["alpha"]) as watch:
        started = fleet.cli("apply", "--take-over", "--no-wait")
        assert started.returncode == 0, fleet.explain(started)
        _reach(fleet, units, where)
        fleet.note_pids()
        fleet.kill9(fleet.controller_pid())
        _release(fleet, units, where)
        again = fleet.cli("apply", "--no-wait")  # a new controller
        assert again.returncode == 0, fleet.explain(again)
        row = wait_state(fleet, "alpha", ("done", "rolled_back", "failed"), 90)
        assert row.state == KILLS[where], row
        kinds = [e.kind for e in fleet.journal()]
        assert kinds.count("controller_started") == 2
        if row.state == "done":
            ours = fleet.wait_running("alpha", timeout=30)
            assert lock_holder(fleet, "alpha") == ours and units.main_pid(unit) is None
            assert (units.unit_dir / f"{unit}.d" / GATE_DROPIN).exists() and (home / OWNED_FILE).exists()
        else:
            serving = units.wait_serving(fleet, "alpha", timeout=30)
            assert lock_holder(fleet, "alpha") == serving and fleet.pid("alpha") is None
            assert not (units.unit_dir / f"{unit}.d").exists() and not (home / OWNED_FILE).exists()
            if where == "giving_back":
                assert serving == first  # never stopped: the drain was abandoned
        assert not (home / ".drain_request.json").exists()
        assert read_json(home / "gateway_state.json")["gateway_state"] == "running"
        starts = json.loads((units.dir / f"{unit}.json").read_text()).get("starts")
        assert starts == (1 if row.state == "done" or where == "giving_back" else 2), starts
    watch.assert_never_two()
