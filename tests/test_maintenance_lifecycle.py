"""The maintenance request lifecycle as a table: one row per transition of the pure function
(`fleet.maintenance.lifecycle.advance`), the request's state and the profiles' facts in, the next
state and its effects out. The executor that performs them is tested in test_maintenance_queue.py."""

from __future__ import annotations

import pytest

from fleet.maintenance.lifecycle import CONTROLLER_STOPPED, STAY, ProfileFacts, Transition, advance
from fleet.maintenance.model import ALL, MaintenanceRequest

CREATED = 1000.0
NOW = 2000.0
UPDATED = 1500.0  # when an update request's command finished


def request(profile: str = "a", action: str = "restart", state: str = "pending", **fields) -> MaintenanceRequest:
    values = dict(id=7, profile=profile, action=action, reasons=("r",), requested_by="ops", idle_seconds=None,
                  now=False, not_before=None, deadline=None, state=state, waiting_on=None, created_at=CREATED,
                  updated_at=CREATED, started_at=None, finished_at=None, outcome=None, update_started=None,
                  update_finished=None, update_exit=None, update_output=None)
    values.update(fields)
    return MaintenanceRequest(**values)


def facts(name: str, **fields) -> ProfileFacts:
    values = dict(name=name, suspended=False, wanted="running", process_started_at=CREATED - 1, drain_reason=None,
                  planned_reason=None, wait_note=None)
    values.update(fields)
    return ProfileFacts(**values)


def waits(name: str, reason: str, note: str, **fields) -> ProfileFacts:
    return facts(name, planned_reason=reason, wait_note=note, **fields)


def case(name: str, req: MaintenanceRequest, profiles: list[ProfileFacts], expected: Transition,
         update_running: bool = False):
    return pytest.param(req, profiles, expected, update_running, id=name)


A, B = facts("a"), facts("b")
RESTARTED = CREATED + 1

ROWS = [
    # -- a single profile's request ends when its profile no longer wants to run ---------------------
    case("profile removed", request(profile="gone"), [A],
     Transition(state="cancelled", outcome="the profile was removed from fleet.yaml")),
    case("profile suspended", request(), [facts("a", suspended=True)],
     Transition(state="cancelled", outcome="the profile is suspended")),
    case("profile stopped by the operator", request(state="waiting"), [facts("a", wanted="stopped")],
     Transition(state="cancelled", outcome="the profile is stopped")),
    case("cancelled even while draining", request(state="draining"), [facts("a", wanted="stopped")],
     Transition(state="cancelled", outcome="the profile is stopped")),
    # -- the deadline holds only until draining -------------------------------------------------------
    case("deadline passed while waiting", request(state="waiting", deadline=NOW - 1), [A],
     Transition(state="failed", outcome="deadline passed before the gates opened")),
    case("deadline not passed yet", request(deadline=NOW), [waits("a", "idle_gate", "busy")],
     Transition(state="waiting", waiting_on="a: busy")),
    case("deadline passed after draining began", request(state="draining", deadline=NOW - 1), [A], STAY),
    # -- an update: first its command, once ------------------------------------------------------------
    case("update, every target ready", request(ALL, "update"), [A, B],
     Transition(state="draining", start_update=True, targets=("a", "b"), waiting_on="waiting for the controller")),
    case("update, a target held by the update itself", request(ALL, "update", state="waiting"),
     [waits("a", "update_command", "update command"), B],
     Transition(state="draining", start_update=True, targets=("a", "b"), waiting_on="a: update command")),
    case("update, a held target without a process", request(ALL, "update"),
     [waits("a", "window_closed", "window closed", process_started_at=None)],
     Transition(state="draining", start_update=True, targets=("a",), waiting_on="a: window closed")),
    case("update, a target busy", request(ALL, "update"), [waits("a", "idle_gate", "2 agents active"), B],
     Transition(state="waiting", waiting_on="a: 2 agents active")),
    case("update, a target with a non-wait action", request(ALL, "update"), [facts("a", planned_reason="crashed"), B],
     Transition(state="waiting", waiting_on="waiting for the controller")),
    case("update command running", request(ALL, "update", state="draining", update_started=NOW - 5), [A], STAY, True),
    case("update command lost with its controller", request(ALL, "update", state="draining", update_started=NOW - 5),
     [A], Transition(state="failed", outcome=CONTROLLER_STOPPED)),
    case("update of no target runs for every profile's command", request(ALL, "update"), [facts("a", suspended=True)],
     Transition(state="draining", start_update=True, targets=(), waiting_on="waiting for the controller")),
    # -- then (and for a restart) the restarts through the graceful path --------------------------------
    case("update done, target restarted after the command", request("a", "update", state="waiting",
                                                                update_finished=UPDATED),
     [facts("a", process_started_at=UPDATED + 1)], Transition(state="done", outcome="restarted: a")),
    case("update done, target started before the command finished",
     request("a", "update", state="waiting", update_finished=UPDATED),
     [waits("a", "idle_gate", "busy", process_started_at=RESTARTED)], Transition(state="waiting", waiting_on="a: busy")),
    case("restart, every target restarted", request(ALL), [facts("a", process_started_at=RESTARTED),
                                                        facts("b", process_started_at=RESTARTED)],
     Transition(state="done", outcome="restarted: a, b")),
    case("restart, only running targets count", request(ALL, state="draining"),
     [facts("a", process_started_at=RESTARTED), facts("b", wanted="stopped", process_started_at=None)],
     Transition(state="done", outcome="restarted: a")),
    case("restart, a target not restarted yet", request(ALL, state="waiting"),
     [facts("a", process_started_at=RESTARTED), waits("b", "window_closed", "window closed")],
     Transition(state="waiting", waiting_on="b: window closed")),
    case("restart, a target without a process", request(), [facts("a", process_started_at=None)],
     Transition(state="waiting", waiting_on="waiting for the controller")),
    case("restart, the planner began a maintenance drain", request(state="waiting"),
     [facts("a", drain_reason="maintenance")], Transition(state="draining")),
    case("restart, another drain does not count", request(), [waits("a", "draining", "stopping", drain_reason="manual")],
     Transition(state="waiting", waiting_on="a: stopping")),
    case("restart draining, target not back yet", request(state="draining"), [facts("a", drain_reason="maintenance")],
     STAY),
    case("restart of no target, never seen", request(ALL), [facts("a", suspended=True)],
     Transition(state="waiting", waiting_on="waiting for the controller")),
    case("restart of no target, seen before", request(ALL, state="waiting"), [facts("a", suspended=True)],
     Transition(state="done", outcome="nothing to restart")),
]


@pytest.mark.parametrize("req, profiles, expected, update_running", ROWS)
def test_transition(req, profiles, expected, update_running):
    assert advance(req, {p.name: p for p in profiles}, NOW, update_running=update_running) == expected
