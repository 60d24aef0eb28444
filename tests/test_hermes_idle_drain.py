"""Idle means idle under a drain (issue 16), proved with the REAL hermes-agent 0.19.0.

Outside a drain Hermes 0.19 does not count an API-server run in `gateway_state.json`: a gateway serving a
long API turn says `running` with `active_agents: 0` all along. The maintenance idle gate and a spec
change's idle gate read exactly that, so they begin a drain while the turn runs. This test shows what follows:
Hermes answers the drain request (`draining`, now counting the turn), refuses new turns with 503
`gateway_draining`, finishes the turn in flight, and only then does the controller stop the gateway (a
planned stop, nothing killed) and start the replacement, which serves the next turn.

The turn is held by a fake model (tests/hermes_turns.py) for HOLD seconds; everything runs offline on
127.0.0.1. Skipped, with the reason, where the hermes venv or aiohttp (the api_server's dependency) cannot
be had. Run it alone with `pytest -m hermes tests/test_hermes_idle_drain.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

import pytest

from fleet_harness import FleetHarness, alive, fleet  # noqa: F401
from helpers import wait_until
from hermes_turns import (  # noqa: F401 - hermes_api_venv is a fixture
    ApiServer, FakeModel, Turn, TurnResult, api_health, chat, configure_api_profile, hermes_api_venv, start_turn,
)
from test_hermes_agent import gateway_state, hermes_venv  # noqa: F401

pytestmark = [
    pytest.mark.hermes,
    pytest.mark.skipif(os.name != "posix" or not sys.platform.startswith("linux"), reason="Linux process model"),
]

HOLD = 20.0  # how long the model holds a turn's answer: a long API turn
LATE_ANSWER = 8.0  # how long after the drain request the paused gateway first runs again
SERVE = 90.0  # deadline for a gateway to start and serve its API (Hermes boots in ~5-10 s, more under load)


@contextlib.contextmanager
def paused(fleet: FleetHarness, pid: int):
    """The gateway `pid` (one this test's fleet started) stopped with SIGSTOP for the block, continued after."""
    created = fleet.seen.get(pid)
    assert created is not None and alive(pid, created), f"pid {pid} is not a live gateway of this test"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if alive(pid, created):
            os.kill(pid, signal.SIGCONT)


@pytest.fixture
def model():
    with FakeModel(hold=HOLD) as m:
        yield m


def manifest(fleet: FleetHarness, generation: int) -> None:
    """One profile, alpha; `generation` changes its env (a spec change). The drain timeout outlasts the turn."""
    fleet.write_manifest({"alpha": {"env": {"IDLE_DRAIN_TEST_GENERATION": str(generation)}}}, stagger="0.2s",
                         drain_timeout="120s", heartbeat_stale="300s", startup_grace="120s", backoff=["0.5s"])


def serving(api: ApiServer, pid: int) -> dict:
    """Wait until the gateway `pid` serves the API."""
    return wait_until(lambda: (h := api_health(api)) is not None and h.get("pid") == pid and h, SERVE, 0.2,
                      what=f"gateway pid {pid} to serve its API")


def long_turn_under_way(fleet: FleetHarness, api: ApiServer, model: FakeModel, pid: int, message: str) -> Turn:
    """Start a turn and wait until the model holds it; it is invisible in Hermes' state file (the premise)."""
    before = len(model.chats)
    model.hold = HOLD
    turn = start_turn(api, message, timeout=HOLD + 150)
    model.wait_for_chats(before + 1, timeout=SERVE)
    st = gateway_state(fleet, "alpha")
    assert (st.get("pid"), st.get("gateway_state"), st.get("active_agents")) == (pid, "running", 0), \
        f"Hermes 0.19 is expected not to count an API run outside a drain: {st}"
    return turn


def drained_after_the_turn(fleet: FleetHarness, api: ApiServer, model: FakeModel, pid: int,
                           turn: Turn) -> tuple[int, TurnResult]:
    """What must happen once a restart of `pid` began while `turn` runs: Hermes answers the drain counting the
    turn, refuses a new turn, finishes this one whole; then, and only then, the planned stop and the
    replacement. Returns the replacement's pid and the turn's result."""
    answered = wait_until(lambda: (st := gateway_state(fleet, "alpha")).get("gateway_state") == "draining" and st,
                          60, 0.1, what="alpha to answer the drain request")
    assert answered.get("pid") == pid and answered.get("active_agents") == 1, answered
    assert (fleet.profile_home("alpha") / ".drain_request.json").exists()
    refused = chat(api, "a new question during the drain", timeout=30)
    assert (refused.status, refused.error_code) == (503, "gateway_draining"), refused
    assert not turn.done and fleet.pid("alpha") == pid and alive(pid), "the gateway went before its turn ended"

    result = turn.result(timeout=HOLD + 150)
    assert result.status == 200, result
    assert result.answer == model.answer, result
    new_pid = fleet.wait_running("alpha", other_than=pid, timeout=SERVE)

    journal = fleet.journal("alpha")
    stops = [e for e in journal if e.kind == "stop_sent" and e.data and e.data.get("pid") == pid]
    exits = [e for e in journal if e.kind == "exited" and e.data and e.data.get("pid") == pid]
    spawns = [e for e in journal if e.kind == "spawned" and e.data and e.data.get("pid") == new_pid]
    assert len(stops) == 1 and len(exits) == 1 and len(spawns) == 1, [(e.kind, e.message) for e in journal]
    answered_at = model.answered[-1]  # the model finished the turn's answer: no stop may come before
    assert stops[0].at >= answered_at, (stops[0].at, answered_at)
    assert exits[0].at > result.ended_at, "the old gateway ended before its turn's answer came back"
    assert spawns[0].at > result.ended_at
    assert exits[0].data["exit_class"] == "planned" and exits[0].data["code"] in (0, -15), exits[0]
    assert not [e for e in journal if e.kind == "killed"], "a gateway was killed"
    return new_pid, result


@pytest.mark.timeout(1500)  # includes the first-time installs in the session fixtures
def test_a_turn_in_flight_finishes_under_the_drain_before_the_restart(fleet, hermes_api_venv, model, tmp_path):
    fleet.command = [str(hermes_api_venv / "bin" / "hermes")]
    lock_dir = tmp_path / "gateway-locks"
    lock_dir.mkdir()
    fleet.base_env = {"HERMES_GATEWAY_LOCK_DIR": str(lock_dir)}
    api = configure_api_profile(fleet.profile_home("alpha"), model)
    manifest(fleet, 1)
    fleet.apply(timeout=120)
    pid0 = fleet.wait_running("alpha", timeout=SERVE)
    serving(api, pid0)

    # 1. A maintenance restart with a short idle window: the idle gate reads running/0 and begins the drain.
    turn = long_turn_under_way(fleet, api, model, pid0, "a long question")
    queued = fleet.cli("maintenance", "restart", "alpha", "--reason", "issue 16", "--idle-seconds", "1", "-o", "json")
    assert queued.returncode == 0, fleet.explain(queued)
    rid = json.loads(queued.stdout)["request"]["id"]
    pid1, _ = drained_after_the_turn(fleet, api, model, pid0, turn)

    def request_state():
        listed = fleet.cli("maintenance", "status", "--all", "-o", "json")
        return next(r for r in json.loads(listed.stdout)["requests"] if r["id"] == rid)
    done = wait_until(lambda: (r := request_state())["state"] in ("done", "failed", "cancelled") and r, 30, 0.5,
                      what=f"maintenance request #{rid} to finish")
    assert done["state"] == "done" and done["outcome"] == "restarted: alpha", done
    serving(api, pid1)

    # 2. A spec change applied while a turn runs: the replace's idle gate is fooled the same way. This time the
    # gateway answers the drain late (paused, as under heavy load): past the 5 s after which earlier releases
    # took the unanswered drain's stale running/0 for idle and stopped it, cutting the turn.
    turn = long_turn_under_way(fleet, api, model, pid1, "another long question")
    with paused(fleet, pid1):
        manifest(fleet, 2)
        fleet.apply("--no-wait")
        begun = wait_until(lambda: [e for e in fleet.journal("alpha") if e.kind == "drain_started"
                                    and e.data and e.data.get("pid") == pid1], 30, 0.1, what="the drain of pid 1")
        hold_until = begun[0].at + LATE_ANSWER
        wait_until(lambda: time.time() >= hold_until, LATE_ANSWER + 5, 0.1, what="the late answer's time")
        st = gateway_state(fleet, "alpha")
        assert (st.get("gateway_state"), st.get("active_agents")) == ("running", 0), st  # unanswered, stale
        assert not [e for e in fleet.journal("alpha") if e.kind in ("stop_sent", "killed")
                    and e.data and e.data.get("pid") == pid1], "stopped on a state from before the drain"
    pid2, _ = drained_after_the_turn(fleet, api, model, pid1, turn)

    # The replacement serves a turn.
    serving(api, pid2)
    model.hold = 0.0
    after = chat(api, "and after the restart?", timeout=SERVE)
    assert after.status == 200 and after.answer == model.answer, after
