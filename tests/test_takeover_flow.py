"""Taking over Hermes' own units, and giving them back, with a real controller and the demo gateway, against
the fake `systemctl` of tests/fake_systemctl.py (the real `systemd --user` and the real hermes-agent are in
tests/test_takeover_systemd_live.py).

- The whole way: a busy unit gateway is drained (its turn is not cut off), stopped as planned, the fleet's
  gateway runs; the unit is gated; `release` gives it back and holds the profile for its unit across `apply` and
  a controller restart; `takeover` takes it back.
- A failure at each step rolls back to the unit as it was and says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from fleet.service.native import GATE_DROPIN, OWNED_FILE
from fleet_harness import DEMO_HERMES, fleet  # noqa: F401
from helpers import read_json, short_in_ci, wait_until
from native_fakes import GatewayWatch, lock_holder, takeovers, units, wait_state  # noqa: F401

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="the demo unit's PID checks read /proc")]


def profile(fleet, name: str) -> dict:
    return fleet.profiles()[name]


def gated(units, unit: str, home) -> bool:
    return (units.unit_dir / f"{unit}.d" / GATE_DROPIN).exists() and (home / OWNED_FILE).exists()


def test_takeover_drains_the_busy_unit_then_release_gives_it_back(fleet, units):
    fleet.write_manifest({"alpha": None}, drain_timeout="30s", startup_grace="10s")
    unit = units.install(fleet, "alpha")
    home = fleet.profile_home("alpha")
    unit_pid = units.main_pid(unit)
    with GatewayWatch(fleet, ["alpha"]) as watch:
        refused = fleet.cli("apply")
        assert refused.returncode == 3, fleet.explain(refused)
        assert "hermes-gateway-alpha.service" in refused.stderr and "takeover" in refused.stderr

        fleet.control("alpha", active_agents=1)  # a turn in flight on the unit's gateway
        started = fleet.cli("apply", "--take-over", "--no-wait")
        assert started.returncode == 0, fleet.explain(started)
        wait_state(fleet, "alpha", ("draining",), 30)
        assert gated(units, unit, home)
        time.sleep(1.5)  # the turn goes on: nothing stops the gateway while an agent is active
        assert units.main_pid(unit) == unit_pid
        st = read_json(home / "gateway_state.json")
        assert st["gateway_state"] == "draining" and st["active_agents"] == 1
        row = profile(fleet, "alpha")
        assert row["phase"] == "Waiting" and "taking over from hermes-gateway-alpha.service: draining" in row["note"]

        fleet.control("alpha", active_agents=0)  # the turn ends
        done = wait_state(fleet, "alpha", ("done", "rolled_back"), 60)
        assert done.state == "done", done
        ours = fleet.wait_running("alpha", timeout=30)
        assert ours != unit_pid and lock_holder(fleet, "alpha") == ours
        shown = units.show(unit)
        assert shown["ActiveState"] == "inactive" and shown["Result"] == "success"  # a planned stop, exit 0
        journal = [e.kind for e in fleet.journal("alpha")]
        assert journal.index("takeover_draining") < journal.index("takeover_stopping") < journal.index("spawned")
        wait_until(lambda: profile(fleet, "alpha")["sync"] == "Synced", 20, what="alpha Synced")

        # The gate holds: the unit does not start while the fleet owns the home.
        units.ctl("start", unit)
        assert units.show(unit)["ConditionResult"] == "no" and units.main_pid(unit) is None
        assert lock_holder(fleet, "alpha") == ours

        released = fleet.cli("release", "alpha")
        assert released.returncode == 0, fleet.explain(released)
        assert "released to hermes-gateway-alpha.service" in released.stdout
        fleet.wait_gone(ours, 20)
        back = units.wait_serving(fleet, "alpha", other_than=unit_pid)
        assert lock_holder(fleet, "alpha") == back and not gated(units, unit, home)
        assert not (units.unit_dir / f"{unit}.d").exists()
        note = profile(fleet, "alpha")
        assert note["phase"] == "Stopped" and "released to hermes-gateway-alpha.service since" in note["note"]
        assert note["sync"] == "OutOfSync" and note["pid"] == back  # the unit's gateway, shown, never touched
        assert "`hermes-fleet takeover alpha` takes it back" in note["note"]

        again = fleet.apply()  # neither apply nor a new controller runs it under the fleet
        assert "Converged" in again.stdout
        fleet.kill9(fleet.controller_pid())
        fleet.apply()
        time.sleep(1.0)
        assert units.main_pid(unit) == back and fleet.pid("alpha") is None

        taken = fleet.cli("takeover", "alpha", "-o", "json", timeout=120)
        assert taken.returncode == 0, fleet.explain(taken)
        report = json.loads(taken.stdout)
        assert [r["state"] for r in report["requests"]] == ["done"] and report["result"] == "done"
        assert fleet.wait_running("alpha", timeout=30) != back and units.main_pid(unit) is None
    watch.assert_never_two()
    assert len(watch.seen["alpha"]) == 4  # the unit's, ours, the unit's again, ours again: nothing else ever ran


def test_release_refuses_what_was_not_taken_over_and_takeover_what_has_no_unit(fleet, units):
    fleet.write_manifest({"alpha": None, "beta": None})
    for name in ("alpha", "beta"):
        fleet.profile_home(name).mkdir(parents=True)
    fleet.apply()
    units.install(fleet, "alpha", start=False)
    released = fleet.cli("release", "alpha")
    assert released.returncode == 2 and "was not taken over by the fleet" in released.stderr
    taken = fleet.cli("takeover", "beta", "gamma")
    assert taken.returncode == 2
    assert "gamma is not in the applied fleet" in taken.stderr and "beta: no native unit" in taken.stderr
    assert takeovers(fleet) == []  # nothing asked for when any profile cannot be


# -- a failure at each step rolls back to the unit as it was ------------------------------------------------

FAILURES = {
    # step: (how it fails, what the rollback says)
    "record": ("show", "nothing changed"),
    "gate": ("daemon-reload", "daemon-reload` failed"),
    "drain": (None, "did not drain in time: 1 agent(s) still active"),
    "stop": ("stop", "`systemctl --user stop --no-block hermes-gateway-alpha.service` failed"),
    "spawn": (None, "the fleet's gateway did not come up in time"),
}


@pytest.mark.parametrize("step", short_in_ci(FAILURES, ("gate", "stop", "spawn")))
def test_a_failed_step_rolls_back_to_the_unit_as_it_was(fleet, units, step):
    verb, says = FAILURES[step]
    # The fleet's gateway alone dies at once, and is not respawned before the verification's deadline: a
    # respawn that happened to run when the take-over looked would (rightly) count as come up.
    env = {"FAKE_HERMES_EXIT_AFTER": "0"} if step == "spawn" else {}
    fleet.write_manifest({"alpha": {"env": env}}, drain_timeout="2s", startup_grace="3s",
                         backoff=["60s"] if step == "spawn" else ["0.5s"])
    unit = units.install(fleet, "alpha")
    home = fleet.profile_home("alpha")
    unit_pid = units.main_pid(unit)
    if step == "drain":
        fleet.control("alpha", active_agents=1)
    if verb:
        units.fail(verb)
    with GatewayWatch(fleet, ["alpha"]) as watch:
        result = fleet.cli("apply", "--take-over", "--timeout", "90s", timeout=150)
        assert result.returncode == 1, fleet.explain(result)
        (row,) = takeovers(fleet, "alpha")
        assert row.state == "rolled_back" and says in row.outcome, (row, result.stdout, result.stderr)
        assert "alpha: take-over rolled back" in result.stderr and says in result.stderr
        serving = units.wait_serving(fleet, "alpha")
        if step in ("record", "gate", "drain"):
            assert serving == unit_pid  # the very same gateway: it was never stopped
        assert lock_holder(fleet, "alpha") == serving and fleet.pid("alpha") is None
        assert not gated(units, unit, home) and not (home / ".drain_request.json").exists()
        assert read_json(home / "gateway_state.json")["gateway_state"] == "running"
        assert profile(fleet, "alpha")["note"].startswith("conflict (owned_by_native_service)")
        assert any(e.kind == "takeover_rolled_back" and says in e.message for e in fleet.journal("alpha"))
    watch.assert_never_two()


def test_a_unit_that_does_not_come_back_is_reported_failed(fleet, units):
    fleet.write_manifest({"alpha": None}, drain_timeout="2s", startup_grace="3s")
    units.install(fleet, "alpha")
    units.fail("stop")  # the planned-stop marker ends the gateway all the same; the rollback must start the unit
    units.fail("start", 10)
    result = fleet.cli("apply", "--take-over", "--timeout", "90s", timeout=150)
    assert result.returncode == 1, fleet.explain(result)
    (row,) = takeovers(fleet, "alpha")
    assert row.state == "failed" and "giving back failed 5 times" in row.outcome, row
    assert "nothing may run alpha now" in row.outcome


def test_a_unit_installed_beside_the_fleets_gateway_is_gated_without_touching_the_gateway(fleet, units):
    fleet.write_manifest({"alpha": None})
    fleet.profile_home("alpha").mkdir(parents=True)
    fleet.apply()
    ours = fleet.wait_running("alpha")
    unit = units.install(fleet, "alpha", start=False)  # `hermes gateway install --no-start-now` later on
    assert profile(fleet, "alpha")["note"] == ""  # the fleet's own gateway runs on; only apply would refuse now
    assert fleet.cli("apply").returncode == 3
    taken = fleet.cli("takeover", "alpha", timeout=90)
    assert taken.returncode == 0, fleet.explain(taken)
    assert "alpha: done: taken over" in taken.stdout
    assert fleet.pid("alpha") == ours and lock_holder(fleet, "alpha") == ours  # never restarted
    assert gated(units, unit, fleet.profile_home("alpha")) and units.main_pid(unit) is None
    again = fleet.cli("takeover", "alpha")
    assert again.returncode == 2 and "taken over already" in again.stderr
    assert fleet.apply().returncode == 0


def test_the_watch_sees_even_a_short_lived_second_gateway(fleet, units):
    """The watcher the tests above rely on: a second gateway of a home, which gives up on the lock at once, is
    seen all the same."""
    fleet.write_manifest({"alpha": None})
    units.install(fleet, "alpha")
    home = fleet.profile_home("alpha")
    with GatewayWatch(fleet, ["alpha"]) as watch:
        time.sleep(0.2)
        second = subprocess.run([sys.executable, str(DEMO_HERMES), "--profile", "alpha", "gateway", "run"],
                                env={**os.environ, "HERMES_HOME": str(home)}, capture_output=True, text=True,
                                timeout=30)
        assert second.returncode == 1 and "already running" in second.stderr
        time.sleep(0.2)
    with pytest.raises(AssertionError, match="two gateways of one home at once"):
        watch.assert_never_two()


def test_restart_and_down_leave_a_released_profiles_unit_alone(fleet, units):
    fleet.write_manifest({"alpha": None, "beta": None})
    fleet.profile_home("beta").mkdir(parents=True)
    unit = units.install(fleet, "alpha")
    assert fleet.cli("apply", "--take-over", timeout=120).returncode == 0
    assert fleet.cli("release", "alpha", timeout=120).returncode == 0
    back = units.wait_serving(fleet, "alpha")
    restart = fleet.cli("restart", "alpha")
    assert restart.returncode == 2 and "released to its native unit" in restart.stderr
    down = fleet.cli("down", "--timeout", "60s", timeout=120)
    assert down.returncode == 0, fleet.explain(down)
    assert units.main_pid(unit) == back and fleet.pid("beta") is None
