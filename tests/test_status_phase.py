"""The phase and health `status` shows for a profile: one row per phase it can say, from the action the
planner chose, the observed process and Hermes' own status file."""

from __future__ import annotations

import pytest

from factories import NOW, crashed, live, observation, status
from fleet.controller.status import _phase
from fleet.observe.hermes_files import GatewayStatus
from fleet.plan.model import Action

PID = 4242


def act(kind: str, reason: str, **fields) -> Action:
    return Action(kind=kind, profile="alpha", reason=reason, **fields)


def hermes_status(state: str, pid: int | None = PID) -> GatewayStatus:
    return GatewayStatus(state=state, active=0, updated_at=NOW - 5.0, pid=pid)


ALIVE = observation("alpha", process=live("alpha", pid=PID))
GONE = observation("alpha")

ROWS = [
    # (why, action, observation, hermes driver, (phase, health))
    ("conflict", act("conflict", "owned_by_other_fleet"), ALIVE, True, ("Failed", "Degraded")),
    ("suspended", act("wait", "suspended"), ALIVE, True, ("Suspended", "Suspended")),
    ("a failed action waits", act("wait", "action_failed"), GONE, True, ("Backoff", "Degraded")),
    ("kept stopped", act("keep", "stopped"), GONE, True, ("Stopped", "Healthy")),
    ("drained out of the manifest", act("drain", "removed_from_manifest"), ALIVE, True, ("Removing", "Progressing")),
    ("drained", act("drain", "desired_stopped"), ALIVE, True, ("Draining", "Progressing")),
    ("replaced", act("replace", "spec_changed"), ALIVE, True, ("Draining", "Progressing")),
    ("waiting on a stop", act("wait", "stopping"), ALIVE, True, ("Draining", "Progressing")),
    ("killed past the drain", act("kill", "drain_timeout"), ALIVE, True, ("Draining", "Degraded")),
    ("killed wedged", act("kill", "wedged"), ALIVE, True, ("Failed", "Degraded")),
    ("spawn backing off", act("spawn", "crashed", not_before=NOW + 4.0),
     observation("alpha", history=crashed("alpha")), True, ("Backoff", "Degraded")),
    ("spawn due", act("spawn", "first_apply"), GONE, True, ("Starting", "Progressing")),
    ("exited cleanly", act("wait", "exited_cleanly"), GONE, True, ("Stopped", "Missing")),
    ("never restarted", act("wait", "restart_policy_never"), GONE, True, ("Stopped", "Missing")),
    ("nothing runs", act("wait", "window_closed"), GONE, True, ("Missing", "Missing")),
    ("gated", act("wait", "idle_gate"), ALIVE, True, ("Waiting", "Healthy")),
    ("hermes wrote no status", act("keep", "running"), ALIVE, True, ("Starting", "Progressing")),
    ("hermes status of another pid", act("keep", "running"),
     observation("alpha", process=live("alpha", pid=PID), status=hermes_status("running", pid=7)), True,
     ("Starting", "Progressing")),
    ("hermes starting", act("keep", "running"),
     observation("alpha", process=live("alpha", pid=PID), status=hermes_status("starting")), True,
     ("Starting", "Progressing")),
    ("hermes startup failed", act("keep", "running"),
     observation("alpha", process=live("alpha", pid=PID), status=hermes_status("startup_failed")), True,
     ("Starting", "Progressing")),
    ("hermes running", act("keep", "running"),
     observation("alpha", process=live("alpha", pid=PID), status=hermes_status("running")), True,
     ("Running", "Healthy")),
    ("process driver starting", act("keep", "running"),
     observation("alpha", process=live("alpha", pid=PID), status=status("starting")), False,
     ("Starting", "Progressing")),
    ("process driver without a status", act("keep", "running"), ALIVE, False, ("Running", "Healthy")),
    ("process driver running", act("keep", "running"),
     observation("alpha", process=live("alpha", pid=PID), status=status("running")), False, ("Running", "Healthy")),
]


@pytest.mark.parametrize(("action", "obs", "hermes", "expected"), [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
def test_phase(action, obs, hermes, expected):
    assert _phase(action, obs, hermes) == expected
