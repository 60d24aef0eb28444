"""The idle maintenance queue without processes: the durable store, the pure gates, and the
agent JSON interface (`maintenance submit` / `fleet.cli.maintenance_cmd.handle`).

The real-process behaviour (busy gateways, kill -9 of the controller, budget, windows) is in
test_maintenance_live.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from factories import recorded_state
from fleet.cli.maintenance_cmd import API_VERSION, handle
from fleet.maintenance import queue
from fleet.maintenance.gates import idle_gate, window_gate
from fleet.maintenance.model import ALL
from fleet.spec.load import load_manifest
from fleet.spec.model import MaintenanceWindow
from fleet.store.db import Store
from fleet.store.layout import StateDir, ensure_state_dir

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "schemas"


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


REQUEST_SCHEMA = _schema("maintenance-request.schema.json")
RESPONSE_SCHEMA = _schema("maintenance-response.schema.json")
REQUEST_VALIDATOR = jsonschema.Draft202012Validator(REQUEST_SCHEMA)
RESPONSE_VALIDATOR = jsonschema.Draft202012Validator(RESPONSE_SCHEMA,
                                                     format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def assert_response_valid(answer: dict) -> dict:
    errors = sorted(RESPONSE_VALIDATOR.iter_errors(answer), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors) + "\n" + json.dumps(answer, indent=1)
    return answer


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "fleet.db")
    try:
        yield s
    finally:
        s.close()


MANIFEST = """\
version: 1
name: unit
hermes: {home: ./hermes, command: [python3, ./hermes-not-run]}
maintenance: {idle: 20m}
profiles:
  alpha: {}
  beta: {}
  gamma: {}
"""


@pytest.fixture
def state(tmp_path):
    """A state directory with one applied generation (alpha, beta, gamma) and no controller."""
    (tmp_path / "fleet.yaml").write_text(MANIFEST)
    return recorded_state(tmp_path / "fleet.yaml", tmp_path / "state")


def open_store(state: StateDir) -> Store:
    return Store(state.db)


# -- the store: submit, dedupe, subsumption ----------------------------------------------------------

def test_duplicate_restart_returns_the_same_id_and_keeps_every_reason(store):
    first = queue.submit(store, profile="alpha", action="restart", reason="new tools installed")
    second = queue.submit(store, profile="alpha", action="restart", reason="config reloaded")
    third = queue.submit(store, profile="alpha", action="restart", reason="new tools installed")
    assert not first.merged and second.merged and third.merged
    assert first.request.id == second.request.id == third.request.id
    assert second.request.reasons == ("new tools installed", "config reloaded")
    assert third.request.reasons == ("new tools installed", "config reloaded")  # no duplicate reason
    assert [r.id for r in queue.open_requests(store)] == [first.request.id]
    kinds = [e.kind for e in store.events()]
    assert kinds.count("maintenance_queued") == 1 and kinds.count("maintenance_merged") == 2


def test_merge_keeps_the_shorter_idle_window_and_a_persons_now(store):
    rid = queue.submit(store, profile="alpha", action="restart", reason="a", idle_seconds=600).request.id
    merged = queue.submit(store, profile="alpha", action="restart", reason="b", idle_seconds=60, now_flag=True)
    assert merged.request.id == rid
    assert merged.request.idle_seconds == 60 and merged.request.now is True
    again = queue.submit(store, profile="alpha", action="restart", reason="c", idle_seconds=3600)
    assert again.request.idle_seconds == 60 and again.request.now is True  # never widened, never un-nowed


def test_requests_for_different_profiles_are_separate(store):
    a = queue.submit(store, profile="alpha", action="restart", reason="x").request
    b = queue.submit(store, profile="beta", action="restart", reason="x").request
    assert a.id != b.id
    assert [r.profile for r in queue.open_requests(store)] == ["alpha", "beta"]


def test_update_subsumes_a_pending_restart_of_the_same_profile(store):
    restart = queue.submit(store, profile="alpha", action="restart", reason="restart please").request
    other = queue.submit(store, profile="beta", action="restart", reason="beta too").request
    update = queue.submit(store, profile="alpha", action="update", reason="new release")
    assert not update.merged and update.request.id != restart.id
    assert update.request.action == "update"
    assert update.request.reasons == ("new release", "restart please")
    old = queue.get(store, restart.id)
    assert old.state == "cancelled" and old.outcome == f"subsumed by #{update.request.id}"
    assert old.finished_at is not None
    assert queue.get(store, other.id).state == "pending"  # another profile's restart is untouched
    # A restart asked for after the update merges into the update: it restarts the profile anyway.
    later = queue.submit(store, profile="alpha", action="restart", reason="and restart")
    assert later.merged and later.request.id == update.request.id and later.request.action == "update"
    assert "and restart" in later.request.reasons


def test_update_of_every_profile_subsumes_all_pending_restarts_and_covers_later_ones(store):
    a = queue.submit(store, profile="alpha", action="restart", reason="a").request
    b = queue.submit(store, profile="beta", action="restart", reason="b").request
    upd = queue.submit(store, profile=ALL, action="update", reason="hermes 0.20").request
    assert upd.profile == ALL and set(upd.reasons) == {"hermes 0.20", "a", "b"}
    assert queue.get(store, a.id).state == queue.get(store, b.id).state == "cancelled"
    assert [r.id for r in queue.open_requests(store)] == [upd.id]
    for profile, action in (("gamma", "restart"), ("alpha", "update"), (ALL, "update")):
        sub = queue.submit(store, profile=profile, action=action, reason=f"{profile} {action}")
        assert sub.merged and sub.request.id == upd.id, (profile, action)
    assert [r.id for r in queue.open_requests(store)] == [upd.id]


def test_a_restart_never_subsumes_an_update(store):
    upd = queue.submit(store, profile="alpha", action="update", reason="u").request
    sub = queue.submit(store, profile="alpha", action="restart", reason="r")
    assert sub.merged and sub.request.id == upd.id and sub.request.action == "update"


def test_submit_refuses_a_bad_action_and_a_missing_reason(store):
    with pytest.raises(queue.QueueError) as bad:
        queue.submit(store, profile="alpha", action="reboot", reason="x")
    assert bad.value.code == "bad_action"
    for reason in ("", "   "):
        with pytest.raises(queue.QueueError) as missing:
            queue.submit(store, profile="alpha", action="restart", reason=reason)
        assert missing.value.code == "missing_reason"
    assert queue.open_requests(store) == []


def test_a_request_submitted_while_another_drains_is_a_new_request(store):
    """A drain already under way is past the point of no return; a new ask is a new request
    (it is satisfied without a second restart when the replacement starts after it)."""
    first = queue.submit(store, profile="alpha", action="restart", reason="one").request
    assert queue.transition(store, first.id, "draining", expect=("pending", "waiting"))
    second = queue.submit(store, profile="alpha", action="restart", reason="two")
    assert not second.merged and second.request.id != first.id


# -- the store: cancel and transitions -------------------------------------------------------------

def test_cancel_of_a_pending_or_waiting_request(store):
    pending = queue.submit(store, profile="alpha", action="restart", reason="x").request
    done = queue.cancel(store, pending.id, by="ops")
    assert done.state == "cancelled" and done.outcome == "cancelled by ops" and done.finished_at is not None
    waiting = queue.submit(store, profile="alpha", action="restart", reason="y").request
    assert waiting.id != pending.id  # a cancelled request is closed: a new one is queued
    queue.set_waiting_on(store, waiting.id, "alpha: 2 active agents")
    assert queue.get(store, waiting.id).state == "waiting"
    assert queue.cancel(store, waiting.id).state == "cancelled"
    assert "maintenance_cancelled" in [e.kind for e in store.events()]


def test_cancel_while_draining_is_refused_with_not_cancellable(store):
    req = queue.submit(store, profile="alpha", action="restart", reason="x").request
    assert queue.transition(store, req.id, "draining", expect=("pending", "waiting"))
    with pytest.raises(queue.QueueError) as refused:
        queue.cancel(store, req.id)
    assert refused.value.code == "not_cancellable"
    assert "draining" in str(refused.value)
    assert queue.get(store, req.id).state == "draining"


@pytest.mark.parametrize("final", ["done", "failed", "cancelled"])
def test_cancel_of_a_finished_request_is_refused(store, final):
    req = queue.submit(store, profile="alpha", action="restart", reason="x").request
    assert queue.transition(store, req.id, final, expect=("pending",), outcome="test")
    with pytest.raises(queue.QueueError) as refused:
        queue.cancel(store, req.id)
    assert refused.value.code == "not_cancellable"


def test_cancel_of_an_unknown_id_is_not_found(store):
    with pytest.raises(queue.QueueError) as missing:
        queue.cancel(store, 4242)
    assert missing.value.code == "not_found"


def test_transitions_are_compare_and_set(store):
    req = queue.submit(store, profile="alpha", action="restart", reason="x").request
    queue.cancel(store, req.id)
    # The controller evaluated the request before the cancel landed; its transition must lose.
    assert queue.transition(store, req.id, "draining", expect=("pending", "waiting")) is False
    assert queue.transition(store, req.id, "done", expect=("pending", "waiting", "draining"), outcome="x") is False
    after = queue.get(store, req.id)
    assert after.state == "cancelled" and after.outcome.startswith("cancelled by")
    # set_waiting_on never reopens a closed request either.
    queue.set_waiting_on(store, req.id, "alpha: idle 1s of 20m")
    assert queue.get(store, req.id).state == "cancelled"


def test_transition_records_timestamps_and_outcome(store):
    req = queue.submit(store, profile="alpha", action="restart", reason="x").request
    assert req.state == "pending" and req.started_at is None
    assert queue.transition(store, req.id, "draining", expect=("pending",))
    draining = queue.get(store, req.id)
    assert draining.started_at is not None and draining.finished_at is None
    assert queue.transition(store, req.id, "done", expect=("draining",), outcome="restarted: alpha")
    done = queue.get(store, req.id)
    assert done.finished_at >= done.started_at and done.outcome == "restarted: alpha" and not done.is_open


def test_set_waiting_on_moves_pending_to_waiting_and_records_the_gate(store):
    req = queue.submit(store, profile="alpha", action="restart", reason="x").request
    queue.set_waiting_on(store, req.id, "alpha: 2 active agents")
    got = queue.get(store, req.id)
    assert got.state == "waiting" and got.waiting_on == "alpha: 2 active agents"
    queue.set_waiting_on(store, req.id, "alpha: idle 4s of 20m")
    assert queue.get(store, req.id).waiting_on == "alpha: idle 4s of 20m"


def test_the_queue_survives_closing_and_reopening_the_store(tmp_path):
    path = tmp_path / "fleet.db"
    s = Store(path)
    rid = queue.submit(s, profile="alpha", action="restart", reason="before", idle_seconds=90).request.id
    upd = queue.submit(s, profile="beta", action="update", reason="upd").request.id
    assert queue.transition(s, upd, "draining", expect=("pending",), update_started=123.0)
    s.close()  # no explicit flush: every submit is its own committed transaction
    s = Store(path)
    try:
        reqs = {r.id: r for r in queue.open_requests(s)}
        assert set(reqs) == {rid, upd}
        assert reqs[rid].reasons == ("before",) and reqs[rid].idle_seconds == 90 and reqs[rid].state == "pending"
        assert reqs[upd].state == "draining" and reqs[upd].update_started == 123.0 and reqs[upd].update_pending
        again = queue.submit(s, profile="alpha", action="restart", reason="after")
        assert again.merged and again.request.id == rid and again.request.reasons == ("before", "after")
    finally:
        s.close()


def test_a_submit_in_another_process_is_seen_and_deduplicated(tmp_path):
    """Two writers (a CLI and the controller) share the file: each sees the other's commits."""
    path = tmp_path / "fleet.db"
    s = Store(path)
    try:
        rid = queue.submit(s, profile="alpha", action="restart", reason="here").request.id
        code = ("import sys; from fleet.store.db import Store; from fleet.maintenance import queue; "
                "s = Store(sys.argv[1]); r = queue.submit(s, profile='alpha', action='restart', reason='there'); "
                "print(r.request.id, r.merged)")
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60,
                             cwd=str(REPO))
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [str(rid), "True"]
        assert queue.get(s, rid).reasons == ("here", "there")
    finally:
        s.close()


def test_a_second_store_in_the_same_process_keeps_the_first_ones_writes_visible(tmp_path):
    """The controller opens a second Store for the update thread. Opening it must not drop the
    process's SQLite locks on fleet.db (closing any descriptor of the file does): otherwise the
    next CLI that closes its connection deletes the WAL the controller still writes into, and
    every later controller write is invisible to other processes and lost on restart."""
    path = tmp_path / "fleet.db"
    reader = ("import sys; from fleet.store.db import Store; s = Store(sys.argv[1], readonly=True); "
              "print(' '.join(e.kind for e in s.events()))")
    closer = "import sys; from fleet.store.db import Store; Store(sys.argv[1]).close()"
    main = Store(path)  # the controller's connection
    try:
        main.journal("before", "x")
        Store(path).close()  # what the update thread does, in the same process
        subprocess.run([sys.executable, "-c", closer, str(path)], check=True, timeout=60, cwd=str(REPO))  # a CLI
        main.journal("after", "x")
        seen = subprocess.run([sys.executable, "-c", reader, str(path)], capture_output=True, text=True, timeout=60,
                              cwd=str(REPO))
        assert seen.stdout.split() == ["before", "after"], seen.stderr
    finally:
        main.close()


def test_an_update_returning_to_waiting_after_its_command_is_not_blocked_by_a_newer_request(store):
    upd = queue.submit(store, profile="alpha", action="update", reason="u").request
    assert queue.transition(store, upd.id, "draining", expect=("pending", "waiting"), update_started=time.time())
    queue.submit(store, profile="alpha", action="restart", reason="while the update command runs")
    # What the pass records once an update command succeeded (MaintenanceTick._record):
    assert queue.transition(store, upd.id, "waiting", expect=("draining",), update_finished=time.time(),
                            update_exit=0, update_output="ok")
    assert queue.get(store, upd.id).state == "waiting"


# -- the gates (pure) ------------------------------------------------------------------------------

NOW = 1_800_000_000.0  # a fixed instant; the gates take time as an argument


@pytest.mark.parametrize("active, state, idle_since, expect_open, detail", [
    (2, "running", None, False, "2 active agents"),
    (1, "running", NOW - 3600, False, "1 active agent"),
    (0, "draining", NOW - 3600, False, "gateway is draining"),
    (0, "running", None, False, "idle 0s of 20m"),
    (0, "running", NOW - 4, False, "idle 4s of 20m"),
    (0, "running", NOW - 1199, False, "idle 19m59s of 20m"),
    (0, "running", NOW - 1200, True, "idle 20m"),
    (0, "running", NOW - 5000, True, "idle 1h23m20s"),
    (None, None, NOW - 1300, True, "idle 21m40s"),  # no status contract: the controller's idle_since decides
])
def test_idle_gate(active, state, idle_since, expect_open, detail):
    gate = idle_gate(active, state, idle_since, 1200.0, NOW)
    assert gate.gate == "idle"
    assert (gate.open, gate.detail) == (expect_open, detail)


def test_idle_gate_short_windows_and_clock_skew():
    assert idle_gate(0, "running", NOW - 0.5, 1.5, NOW).detail == "idle 0.5s of 1.5s"
    assert idle_gate(0, "running", NOW - 1.5, 1.5, NOW).open
    assert idle_gate(0, "running", NOW - 0.0, 0.0, NOW).open  # idle_seconds 0: idle now is enough
    future = idle_gate(0, "running", NOW + 30, 10.0, NOW)  # idle_since ahead of the clock counts as 0
    assert not future.open and future.detail == "idle 0s of 10s"


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def W(kind, schedule, duration, tz="UTC"):
    return MaintenanceWindow(kind=kind, schedule=schedule, duration=duration, timezone=tz)


def test_window_gate_without_windows_is_always_open():
    gate = window_gate((), NOW)
    assert gate.gate == "window" and gate.open and gate.detail == "no windows"


def test_allow_window_opens_only_inside():
    nightly = (W("allow", "0 2 * * *", 3600),)
    inside = window_gate(nightly, _utc("2025-05-06T02:30:00"))  # a Tuesday
    assert inside.open and inside.detail == "inside an allowed window"
    assert window_gate(nightly, _utc("2025-05-06T02:00:00")).open  # the opening minute is inside
    assert not window_gate(nightly, _utc("2025-05-06T03:00:00")).open  # [start, start + duration)
    after = window_gate(nightly, _utc("2025-05-06T03:30:00"))
    assert not after.open and after.detail == "window opens Wed 02:00 UTC"
    before = window_gate(nightly, _utc("2025-05-06T01:59:00"))
    assert not before.open and before.detail == "window opens Tue 02:00 UTC"


def test_deny_window_blocks_only_inside():
    freeze = (W("deny", "0 9 * * 1-5", 8 * 3600),)  # office hours on weekdays
    blocked = window_gate(freeze, _utc("2025-05-06T12:00:00"))  # Tuesday noon
    assert not blocked.open and blocked.detail == "deny window (0 9 * * 1-5, 8h) is open"
    evening = window_gate(freeze, _utc("2025-05-06T18:00:00"))
    assert evening.open and evening.detail == "no deny window open"
    assert window_gate(freeze, _utc("2025-05-10T12:00:00")).open  # Saturday


def test_deny_wins_over_allow():
    windows = (W("allow", "0 0 * * *", 86400), W("deny", "0 2 * * *", 3600))  # allowed all day, except 02:00-03:00
    inside_both = window_gate(windows, _utc("2025-05-06T02:15:00"))
    assert not inside_both.open and inside_both.detail.startswith("deny window (0 2 * * *, 1h)")
    assert window_gate(windows, _utc("2025-05-06T03:15:00")).open
    reversed_order = window_gate(tuple(reversed(windows)), _utc("2025-05-06T02:15:00"))
    assert not reversed_order.open  # the order of the list does not matter


def test_several_allow_windows_any_one_suffices():
    windows = (W("allow", "0 2 * * *", 3600), W("allow", "0 14 * * *", 1800))
    assert window_gate(windows, _utc("2025-05-06T14:10:00")).open
    closed = window_gate(windows, _utc("2025-05-06T10:00:00"))
    assert not closed.open and closed.detail == "window opens Tue 14:00 UTC"  # the earliest next opening


def test_windows_follow_their_time_zone():
    berlin = (W("allow", "0 2 * * *", 3600, "Europe/Berlin"),)
    # Winter: Berlin is UTC+1, so 02:00-03:00 local is 01:00-02:00 UTC.
    assert window_gate(berlin, _utc("2025-01-14T01:30:00")).open
    winter = window_gate(berlin, _utc("2025-01-14T02:30:00"))
    assert not winter.open and winter.detail == "window opens Wed 02:00 CET"
    # Summer: UTC+2, so 02:00-03:00 local is 00:00-01:00 UTC.
    assert window_gate(berlin, _utc("2025-07-15T00:30:00")).open
    assert not window_gate(berlin, _utc("2025-07-15T01:30:00")).open
    # The same schedule in UTC disagrees at the same instants.
    utc = (W("allow", "0 2 * * *", 3600),)
    assert not window_gate(utc, _utc("2025-01-14T01:30:00")).open
    assert window_gate(utc, _utc("2025-01-14T02:30:00")).open


def test_a_deny_window_in_another_time_zone():
    tokyo_day = (W("deny", "0 9 * * *", 9 * 3600, "Asia/Tokyo"),)  # 09:00-18:00 JST = 00:00-09:00 UTC
    assert not window_gate(tokyo_day, _utc("2025-05-06T03:00:00")).open
    assert window_gate(tokyo_day, _utc("2025-05-06T10:00:00")).open


# -- the agent interface: handle() -------------------------------------------------------------------

def test_submit_answers_id_state_position_and_waiting_on(state):
    first = assert_response_valid(handle(state, {"action": "queue_restart", "profile": "alpha",
                                                 "reason": "new tools installed", "requested_by": "agent:planner"}))
    assert first["ok"] is True and first["format_version"] == API_VERSION == "1.0"
    assert first["merged"] is False and first["controller_running"] is False
    req = first["request"]
    assert req["action"] == "restart" and req["profile"] == "alpha" and req["state"] == "pending"
    assert req["position"] == 1 and req["requested_by"] == "agent:planner"
    assert req["reasons"] == ["new tools installed"] and req["idle_seconds"] is None and req["now"] is False
    assert req["waiting_on"] == "no controller is running; the request waits durably"
    assert req["update"] is None
    second = assert_response_valid(handle(state, {"action": "queue_restart", "profile": "beta",
                                                  "reason": "x", "idle_seconds": 300}))
    assert second["request"]["position"] == 2 and second["request"]["idle_seconds"] == 300
    dup = assert_response_valid(handle(state, {"action": "queue_restart", "profile": "alpha", "reason": "again"}))
    assert dup["merged"] is True and dup["request"]["id"] == req["id"] and dup["request"]["position"] == 1
    assert dup["request"]["reasons"] == ["new tools installed", "again"]


def test_queue_update_defaults_to_every_profile(state):
    ans = assert_response_valid(handle(state, {"action": "queue_update", "reason": "hermes 0.20"}))
    assert ans["ok"] and ans["request"]["profile"] == "*" and ans["request"]["action"] == "update"
    assert ans["request"]["update"] == {"started_at": None, "finished_at": None, "exit_code": None,
                                        "output_tail": None}
    one = assert_response_valid(handle(state, {"action": "queue_update", "profile": "beta", "reason": "x"}))
    assert one["merged"] and one["request"]["id"] == ans["request"]["id"]  # covered by the fleet-wide update


def test_status_lists_requests_with_their_positions(state):
    a = handle(state, {"action": "queue_restart", "profile": "alpha", "reason": "a"})["request"]["id"]
    b = handle(state, {"action": "queue_restart", "profile": "beta", "reason": "b"})["request"]["id"]
    handle(state, {"action": "cancel", "id": a})
    st = assert_response_valid(handle(state, {"action": "status"}))
    assert st["ok"] and st["controller_running"] is False
    by_id = {r["id"]: r for r in st["requests"]}
    assert by_id[a]["state"] == "cancelled" and by_id[a]["position"] is None
    assert by_id[b]["state"] == "pending" and by_id[b]["position"] == 1


def test_cancel_through_the_api(state):
    rid = handle(state, {"action": "queue_restart", "profile": "alpha", "reason": "a"})["request"]["id"]
    ans = assert_response_valid(handle(state, {"action": "cancel", "id": rid, "requested_by": "agent:janitor"}))
    assert ans["ok"] and ans["request"]["state"] == "cancelled"
    assert ans["request"]["outcome"] == "cancelled by agent:janitor"
    again = assert_response_valid(handle(state, {"action": "cancel", "id": rid}))
    assert not again["ok"] and again["error"]["code"] == "not_cancellable"


def test_cancel_of_a_draining_request_through_the_api_is_refused(state):
    rid = handle(state, {"action": "queue_restart", "profile": "alpha", "reason": "a"})["request"]["id"]
    s = open_store(state)
    try:
        assert queue.transition(s, rid, "draining", expect=("pending",))
    finally:
        s.close()
    ans = assert_response_valid(handle(state, {"action": "cancel", "id": rid}))
    assert ans == {"format_version": "1.0", "ok": False,
                   "error": {"code": "not_cancellable", "message": ans["error"]["message"]}}
    assert "point of no return" in ans["error"]["message"]


ERROR_CASES = [
    ([], "bad_request"),
    ("queue_restart", "bad_request"),
    ({}, "bad_action"),
    ({"action": "reboot", "profile": "alpha", "reason": "x"}, "bad_action"),
    ({"action": None}, "bad_action"),
    ({"action": "queue_restart", "profile": "alpha"}, "missing_reason"),
    ({"action": "queue_restart", "profile": "alpha", "reason": "   "}, "missing_reason"),
    ({"action": "queue_restart", "profile": "alpha", "reason": 42}, "missing_reason"),
    ({"action": "queue_update", "reason": ""}, "missing_reason"),
    ({"action": "queue_restart", "profile": "zeta", "reason": "x"}, "unknown_profile"),
    ({"action": "queue_update", "profile": "zeta", "reason": "x"}, "unknown_profile"),
    ({"action": "queue_restart", "profile": "alpha", "reason": "x", "force": True}, "unknown_field"),
    ({"action": "status", "verbose": 1}, "unknown_field"),
    ({"action": "queue_restart", "profile": "alpha", "reason": "x", "now": True}, "now_not_allowed"),
    ({"action": "cancel", "id": 1, "now": 1}, "now_not_allowed"),
    ({"action": "queue_restart", "reason": "x"}, "bad_request"),
    ({"action": "queue_restart", "profile": ["alpha"], "reason": "x"}, "bad_request"),
    ({"action": "queue_restart", "profile": "alpha", "reason": "x", "idle_seconds": -1}, "bad_idle_seconds"),
    ({"action": "queue_restart", "profile": "alpha", "reason": "x", "idle_seconds": "20m"}, "bad_idle_seconds"),
    ({"action": "queue_restart", "profile": "alpha", "reason": "x", "idle_seconds": True}, "bad_idle_seconds"),
    ({"action": "queue_restart", "profile": "alpha", "reason": "x", "idle_seconds": 8 * 86400}, "bad_idle_seconds"),
    ({"action": "cancel"}, "bad_request"),
    ({"action": "cancel", "id": "1"}, "bad_request"),
    ({"action": "cancel", "id": True}, "bad_request"),
    ({"action": "cancel", "id": 4242}, "not_found"),
]


@pytest.mark.parametrize("payload, code", ERROR_CASES, ids=[f"{c}-{i}" for i, (_, c) in enumerate(ERROR_CASES)])
def test_bad_requests_get_an_error_code_never_an_exception(state, payload, code):
    ans = assert_response_valid(handle(state, payload))
    assert ans["ok"] is False and ans["format_version"] == "1.0"
    assert ans["error"]["code"] == code, ans
    assert ans["error"]["message"]
    s = open_store(state)
    try:
        assert queue.open_requests(s) == []  # nothing was queued by a refused request
    finally:
        s.close()


def test_an_unknown_profile_error_names_the_profiles(state):
    ans = handle(state, {"action": "queue_restart", "profile": "zeta", "reason": "x"})
    assert ans["error"]["code"] == "unknown_profile"
    assert "alpha, beta, gamma" in ans["error"]["message"]


def test_without_an_applied_manifest_every_profile_is_unknown(tmp_path):
    st = StateDir(tmp_path / "empty-state")
    ans = assert_response_valid(handle(st, {"action": "queue_restart", "profile": "alpha", "reason": "x"}))
    assert ans["error"]["code"] == "unknown_profile" and "apply a manifest first" in ans["error"]["message"]
    status = assert_response_valid(handle(st, {"action": "status"}))
    assert status == {"format_version": "1.0", "ok": True, "controller_running": False, "requests": []}


def test_an_unusable_state_directory_is_state_unavailable(tmp_path):
    st = StateDir(tmp_path / "state")
    ensure_state_dir(st)
    st.db.write_bytes(b"this is not a sqlite database" * 100)
    ans = assert_response_valid(handle(st, {"action": "status"}))
    assert ans["ok"] is False and ans["error"]["code"] == "state_unavailable"


@pytest.mark.parametrize("by", [{"agent": "x"}, ["x"]])
def test_a_non_string_requested_by_is_a_bad_request(state, by):
    ans = handle(state, {"action": "queue_restart", "profile": "alpha", "reason": "x", "requested_by": by})
    assert ans["ok"] is False and ans["error"]["code"] == "bad_request"


def test_a_huge_cancel_id_is_an_error_not_an_exception(state):
    ans = handle(state, {"action": "cancel", "id": 2 ** 70})
    assert ans["ok"] is False and ans["error"]["code"] in ("bad_request", "not_found")


def test_a_profiles_list_is_honoured_or_refused_never_widened(state):
    ans = handle(state, {"action": "queue_update", "profiles": ["alpha"], "reason": "only alpha"})
    assert not ans["ok"] or ans["request"]["profile"] == "alpha", ans


# -- the schemas -----------------------------------------------------------------------------------

def test_the_schemas_are_valid_2020_12_schemas():
    for schema in (REQUEST_SCHEMA, RESPONSE_SCHEMA):
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)
    assert RESPONSE_SCHEMA["$defs"]["format_version"]["const"] == API_VERSION


VALID_REQUESTS = [
    {"action": "queue_restart", "profile": "alpha", "reason": "new tools installed"},
    {"action": "queue_restart", "profile": "alpha", "reason": "x", "idle_seconds": 1200, "requested_by": "agent:a"},
    {"action": "queue_restart", "profile": "beta", "reason": "x", "idle_seconds": 0.5, "now": False},
    {"action": "queue_update", "reason": "hermes 0.20"},
    {"action": "queue_update", "profile": "*", "reason": "hermes 0.20"},
    {"action": "queue_update", "profile": "gamma", "reason": "x", "idle_seconds": 604800},
    {"action": "status"},
    {"action": "cancel", "id": 1},
    {"action": "cancel", "id": 1, "requested_by": "agent:a"},
]
INVALID_REQUESTS = [
    [],
    {},
    {"action": "reboot"},
    {"action": "queue_restart", "profile": "alpha"},
    {"action": "queue_restart", "reason": "x"},
    {"action": "queue_restart", "profile": "alpha", "reason": "  "},
    {"action": "queue_restart", "profile": "alpha", "reason": "x", "force": True},
    {"action": "queue_restart", "profile": "alpha", "reason": "x", "now": True},
    {"action": "queue_restart", "profile": "alpha", "reason": "x", "idle_seconds": -1},
    {"action": "queue_restart", "profile": "alpha", "reason": "x", "idle_seconds": "20m"},
    {"action": "queue_restart", "profile": "alpha", "reason": "x", "idle_seconds": True},
    {"action": "queue_restart", "profile": "alpha", "reason": "x", "idle_seconds": 604801},
    {"action": "cancel"},
    {"action": "cancel", "id": "1"},
    {"action": "cancel", "id": True},
]


@pytest.mark.parametrize("payload", VALID_REQUESTS)
def test_valid_requests_match_the_request_schema_and_are_accepted(state, payload):
    assert list(REQUEST_VALIDATOR.iter_errors(payload)) == []
    if payload["action"] == "cancel":
        handle(state, {"action": "queue_restart", "profile": "alpha", "reason": "to cancel"})
    ans = assert_response_valid(handle(state, payload))
    assert ans["ok"], ans


@pytest.mark.parametrize("payload", INVALID_REQUESTS, ids=range(len(INVALID_REQUESTS)))
def test_invalid_requests_fail_the_request_schema_and_are_refused(state, payload):
    assert list(REQUEST_VALIDATOR.iter_errors(payload)), f"the schema accepts {payload}"
    ans = assert_response_valid(handle(state, payload))
    assert not ans["ok"], ans


def test_answers_for_requests_in_every_state_match_the_response_schema(state):
    """Drive requests through every state the controller uses and validate the status answer."""
    s = open_store(state)
    try:
        ids = {}
        for profile, action in (("alpha", "restart"), ("beta", "update"), ("gamma", "restart")):
            ids[profile] = queue.submit(s, profile=profile, action=action, reason=f"{profile}!").request.id
        queue.set_waiting_on(s, ids["alpha"], "alpha: 2 active agents")
        queue.transition(s, ids["beta"], "draining", expect=("pending",), update_started=time.time())
        queue.transition(s, ids["beta"], "failed", expect=("draining",), update_finished=time.time(), update_exit=3,
                         update_output="E: could not resolve host\n", outcome="update command exited 3")
        queue.transition(s, ids["gamma"], "draining", expect=("pending",))
        queue.transition(s, ids["gamma"], "done", expect=("draining",), outcome="restarted: gamma")
        upd = queue.submit(s, profile=ALL, action="update", reason="all").request.id
        queue.transition(s, upd, "draining", expect=("pending",), update_started=time.time())
        queue.transition(s, upd, "waiting", expect=("draining",), update_finished=time.time(), update_exit=0,
                         update_output="Already up to date.\n")
    finally:
        s.close()
    st = assert_response_valid(handle(state, {"action": "status"}))
    states = {r["id"]: r for r in st["requests"]}
    assert states[ids["beta"]]["update"]["exit_code"] == 3
    assert states[ids["beta"]]["update"]["output_tail"] == "E: could not resolve host\n"
    assert states[ids["beta"]]["position"] is None
    assert states[ids["alpha"]]["state"] == "cancelled" and states[ids["alpha"]]["outcome"] == f"subsumed by #{upd}"
    assert states[upd]["state"] == "waiting" and states[upd]["position"] == 1
    assert {r["state"] for r in st["requests"]} == {"waiting", "failed", "done", "cancelled"}
    assert [r["position"] for r in st["requests"] if r["position"]] == [1]


# -- the CLI agent entry point: bad JSON, never a traceback --------------------------------------

def _submit_cli(state: StateDir, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_FLEET_")}
    return subprocess.run([sys.executable, "-m", "fleet.cli.main", "maintenance", "submit", *args,
                           "--state-dir", str(state.root)], input=stdin, capture_output=True, text=True,
                          timeout=60, cwd=str(REPO), env=env)


def _cli(state: StateDir, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_FLEET_")}
    return subprocess.run([sys.executable, "-m", "fleet.cli.main", *args, "--state-dir", str(state.root)],
                          capture_output=True, text=True, timeout=60, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL)


def test_cli_restart_queues_merges_and_reports_without_a_controller(state):
    first = _cli(state, "maintenance", "restart", "alpha", "beta", "--reason", "new tools", "--idle-seconds", "90",
                 "-o", "json")
    assert first.returncode == 0, first.stderr
    answers = json.loads(first.stdout)
    assert [a["request"]["profile"] for a in answers] == ["alpha", "beta"]  # several profiles: a list of answers
    for a in answers:
        assert_response_valid(a)
        assert a["request"]["idle_seconds"] == 90 and a["controller_running"] is False
    again = _cli(state, "maintenance", "restart", "alpha", "--reason", "again", "--idle-seconds", "20m")
    assert again.returncode == 0 and again.stdout.startswith(f"merged into #{answers[0]['request']['id']}:")
    assert "no controller is running" in again.stderr
    status = _cli(state, "maintenance", "status")
    assert status.returncode == 0 and "controller: NOT RUNNING" in status.stdout
    unknown = _cli(state, "maintenance", "restart", "zeta", "--reason", "x")
    assert unknown.returncode == 2 and "unknown_profile" in unknown.stderr and "Traceback" not in unknown.stderr
    s = open_store(state)
    try:
        assert queue.get(s, answers[0]["request"]["id"]).idle_seconds == 90  # the shorter window is kept
    finally:
        s.close()


def test_now_for_one_profile_does_not_skip_the_gates_of_a_fleet_wide_update(state):
    assert _cli(state, "maintenance", "update", "--reason", "hermes 0.20").returncode == 0
    out = _cli(state, "maintenance", "restart", "alpha", "--reason", "alpha right now", "--now")
    assert out.returncode == 0, out.stderr
    s = open_store(state)
    try:
        fleet_wide = [r for r in queue.open_requests(s) if r.profile == ALL]
        assert fleet_wide and not fleet_wide[0].now, "beta and gamma would now be restarted while busy"
    finally:
        s.close()


@pytest.mark.parametrize("how", ["stdin", "--json"])
def test_bad_json_on_the_cli_is_a_json_error(state, how):
    text = '{"action": "queue_restart", "profile": '
    out = _submit_cli(state, stdin=text) if how == "stdin" else _submit_cli(state, "--json", text)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    ans = assert_response_valid(json.loads(out.stdout))
    assert ans["ok"] is False and ans["error"]["code"] == "bad_json"


def test_the_cli_answers_one_json_object_on_success_and_error(state):
    ok = _submit_cli(state, stdin=json.dumps({"action": "queue_restart", "profile": "alpha", "reason": "cli"}))
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.strip().splitlines()) == 1  # one object, one line
    answer = assert_response_valid(json.loads(ok.stdout))
    assert answer["ok"] and answer["request"]["profile"] == "alpha"
    for payload, code in (({"action": "explode"}, "bad_action"), ({"action": "cancel", "id": 99}, "not_found"),
                          ({"action": "queue_restart", "profile": "alpha", "reason": "x", "now": True},
                           "now_not_allowed"), ([1, 2], "bad_request")):
        out = _submit_cli(state, "--json", json.dumps(payload))
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert assert_response_valid(json.loads(out.stdout))["error"]["code"] == code


# -- the planner's maintenance decisions (pure: no I/O, no clock) ------------------------------------

from fleet.maintenance.model import MaintenanceRequest  # noqa: E402
from fleet.observe.hermes_files import GatewayStatus  # noqa: E402
from fleet.observe.model import LiveProcess, Observed, ProfileObservation  # noqa: E402
from fleet.plan.model import Desired  # noqa: E402
from fleet.plan.planner import plan  # noqa: E402
from fleet.store.db import ProfileHistory  # noqa: E402

T0 = float(int(time.time()))  # "now" for the planner and tick tests (the queue stamps real time)


def _desired(tmp_path, names=("alpha", "beta"), *, windows=None, stagger="0.1s") -> Desired:
    maintenance = {"idle": "20m"}
    if windows:
        maintenance["windows"] = windows
    doc = {"version": 1, "name": "unit", "stagger": stagger,
           "hermes": {"home": "./hermes", "command": ["python3", "./hermes-not-run"]},
           "maintenance": maintenance, "profiles": {n: {} for n in names}}
    (tmp_path / "fleet.yaml").write_text(json.dumps(doc))
    spec = load_manifest(tmp_path / "fleet.yaml").spec
    return Desired(spec=spec, generation=1, previous={p.name: p for p in spec.profiles})


def _running(desired: Desired, name: str, *, pid: int, active: int = 0, state: str = "running",
             idle_since: float | None = T0 - 3600, **history) -> ProfileObservation:
    spec = desired.spec.profile(name)
    proc = LiveProcess(pid=pid, start_ticks=pid * 10, create_time=T0 - 7200, cmdline=tuple(spec.command),
                       started_at=T0 - 7200, spec_hash=spec.spec_hash, source="record", record_epoch=1)
    return ProfileObservation(name=name, record_verdict="alive", process=proc,
                              status=GatewayStatus(state, active, T0 - 60), heartbeat_at=T0 - 1,
                              history=ProfileHistory(name, last_start=T0 - 7200, idle_since=idle_since, **history))


def _request(rid: int, profile: str, *, action="restart", now=False, idle_seconds=None, created=T0 - 10,
             state="waiting", **fields) -> MaintenanceRequest:
    base = dict(id=rid, profile=profile, action=action, reasons=("test",), requested_by="t", idle_seconds=idle_seconds,
                now=now, not_before=None, deadline=None, state=state, waiting_on=None, created_at=created,
                updated_at=created, started_at=None, finished_at=None, outcome=None, update_started=None,
                update_finished=None, update_exit=None, update_output=None)
    base.update(fields)
    return MaintenanceRequest(**base)


def _plan(desired, profiles, requests, *, now=T0, last_spawn_at=T0 - 7200):
    observed = Observed(observed_at=now, epoch=1, profiles={p.name: p for p in profiles},
                        last_spawn_at=last_spawn_at, maintenance=tuple(requests))
    return {a.profile: a for a in plan(desired, observed, now).actions}


def test_plan_busy_profile_waits_on_the_idle_gate(tmp_path):
    d = _desired(tmp_path)
    acts = _plan(d, [_running(d, "alpha", pid=100, active=2), _running(d, "beta", pid=200)],
                 [_request(1, "alpha")])
    assert acts["alpha"].kind == "wait" and acts["alpha"].reason == "idle_gate"
    assert acts["alpha"].message == "maintenance #1 (restart): 2 active agents"
    assert acts["beta"].kind == "keep"


def test_plan_idle_not_long_enough_waits_until_the_window_elapses(tmp_path):
    d = _desired(tmp_path)
    acts = _plan(d, [_running(d, "alpha", pid=100, idle_since=T0 - 4), _running(d, "beta", pid=200)],
                 [_request(1, "alpha")])
    assert acts["alpha"].kind == "wait" and acts["alpha"].message.endswith("idle 4s of 20m")
    assert acts["alpha"].not_before == T0 - 4 + 1200  # the controller wakes when the window elapses
    short = _plan(d, [_running(d, "alpha", pid=100, idle_since=T0 - 4), _running(d, "beta", pid=200)],
                  [_request(1, "alpha", idle_seconds=3)])
    assert short["alpha"].kind == "replace" and short["alpha"].reason == "maintenance"


def test_plan_idle_long_enough_replaces_through_the_graceful_path(tmp_path):
    d = _desired(tmp_path)
    acts = _plan(d, [_running(d, "alpha", pid=100), _running(d, "beta", pid=200)], [_request(1, "alpha")])
    a = acts["alpha"]
    assert (a.kind, a.reason, a.stage, a.voluntary) == ("replace", "maintenance", "begin", True)
    assert {g.gate: g.open for g in a.gates} == {"idle": True, "window": True}


def test_plan_a_draining_gateway_is_not_idle(tmp_path):
    d = _desired(tmp_path)
    acts = _plan(d, [_running(d, "alpha", pid=100, state="draining"), _running(d, "beta", pid=200)],
                 [_request(1, "alpha")])
    assert acts["alpha"].kind == "wait" and acts["alpha"].message.endswith("gateway is draining")


def test_plan_a_process_started_after_the_request_satisfies_it(tmp_path):
    d = _desired(tmp_path)
    acts = _plan(d, [_running(d, "alpha", pid=100), _running(d, "beta", pid=200)],
                 [_request(1, "alpha", created=T0 - 9000)])  # the process (T0 - 7200) is newer
    assert acts["alpha"].kind == "keep"


def test_plan_now_skips_idle_and_window_but_not_the_budget(tmp_path):
    d = _desired(tmp_path, windows=[{"kind": "deny", "schedule": "* * * * *", "duration": "1h"}])
    busy = [_running(d, "alpha", pid=100, active=3), _running(d, "beta", pid=200)]
    gated = _plan(d, busy, [_request(1, "alpha")])
    assert gated["alpha"].kind == "wait" and "3 active agents" in gated["alpha"].message
    assert "deny window" in gated["alpha"].message
    forced = _plan(d, busy, [_request(1, "alpha", now=True)])
    assert forced["alpha"].kind == "replace" and forced["alpha"].gates == ()
    # beta is mid-replace: the budget (1) is used, --now or not.
    beta_draining = _running(d, "beta", pid=200, drain_intent="replace", drain_reason="maintenance",
                             drain_started=T0 - 1, drain_deadline=T0 + 60, drain_pid=200)
    blocked = _plan(d, [busy[0], beta_draining], [_request(1, "alpha", now=True)])
    assert blocked["alpha"].kind == "wait" and blocked["alpha"].reason == "budget_exhausted"
    assert "budget: beta in maintenance" in blocked["alpha"].message


def test_plan_deny_window_holds_an_idle_profile(tmp_path):
    d = _desired(tmp_path, windows=[{"kind": "allow", "schedule": "* * * * *", "duration": "1h"},
                                    {"kind": "deny", "schedule": "* * * * *", "duration": "1h"}])
    acts = _plan(d, [_running(d, "alpha", pid=100), _running(d, "beta", pid=200)], [_request(1, "alpha")])
    assert acts["alpha"].kind == "wait" and acts["alpha"].reason == "window_closed"
    assert acts["alpha"].message == "maintenance #1 (restart): deny window (* * * * *, 1h) is open"


def test_plan_budget_one_starts_one_profile_at_a_time(tmp_path):
    d = _desired(tmp_path, ("alpha", "beta", "gamma"))
    idle = [_running(d, n, pid=100 * (i + 1)) for i, n in enumerate(("alpha", "beta", "gamma"))]
    acts = _plan(d, idle, [_request(1, "alpha"), _request(2, "beta"), _request(3, "gamma")])
    assert acts["alpha"].kind == "replace"
    for n in ("beta", "gamma"):
        assert acts[n].kind == "wait" and acts[n].reason == "budget_exhausted", acts[n]
        assert acts[n].message.endswith("budget: alpha in maintenance")


def test_plan_a_crash_looping_profile_uses_the_budget(tmp_path):
    d = _desired(tmp_path)
    crashed = ProfileObservation(name="beta", history=ProfileHistory("beta", last_start=T0 - 30, failures=3,
                                                                     last_exit_class="crash", last_exit_at=T0 - 1))
    acts = _plan(d, [_running(d, "alpha", pid=100), crashed], [_request(1, "alpha")])
    assert acts["alpha"].kind == "wait" and acts["alpha"].reason == "budget_exhausted"


def test_plan_a_drained_profile_awaiting_its_respawn_still_uses_the_budget(tmp_path):
    d = _desired(tmp_path, stagger="5s")
    # alpha was drained for maintenance #1 and exited; its respawn waits for the stagger (another spawn 1s ago).
    alpha_down = ProfileObservation(name="alpha", history=ProfileHistory(
        "alpha", last_start=T0 - 7200, last_exit_class="planned", last_exit_code=0, last_exit_at=T0 - 0.5))
    requests = [_request(1, "alpha", state="draining", started_at=T0 - 3), _request(2, "beta")]
    acts = _plan(d, [alpha_down, _running(d, "beta", pid=200)], requests, last_spawn_at=T0 - 1)
    assert acts["alpha"].kind == "spawn" and acts["alpha"].not_before is not None  # deferred by the stagger
    assert acts["beta"].kind == "wait" and acts["beta"].reason == "budget_exhausted", acts["beta"]


# -- the controller's side: MaintenanceTick moves requests through their states ------------------------

from fleet.controller.maintenance_tick import MaintenanceTick  # noqa: E402


def _tick_setup(tmp_path, names=("alpha", "beta"), **kw):
    d = _desired(tmp_path, names, **kw)
    s = Store(tmp_path / "fleet.db")
    return d, s, MaintenanceTick(str(tmp_path / "fleet.db"), s, epoch=1)


def _advance(tick, store, desired, profiles, *, now=T0):
    observed = Observed(observed_at=now, epoch=1, profiles={p.name: p for p in profiles}, last_spawn_at=T0 - 7200,
                        maintenance=tuple(queue.open_requests(store)))
    tick.advance(desired, observed, plan(desired, observed, now), now)


def _wait_updates(tick):
    for thread in list(tick.running_updates.values()):
        thread.join(60)
        assert not thread.is_alive()


def test_tick_cancels_requests_of_removed_suspended_and_stopped_profiles(tmp_path):
    d, s, tick = _tick_setup(tmp_path, ("alpha", "beta", "gamma"))
    try:
        ids = {n: queue.submit(s, profile=n, action="restart", reason=n).request.id for n in ("alpha", "beta", "gamma",
                                                                                            "delta")}
        # delta is not in the manifest (removed); beta is suspended; gamma is stopped by an operator.
        spec = dataclasses.replace(d.spec, profiles=tuple(
            dataclasses.replace(p, suspend=True) if p.name == "beta" else p for p in d.spec.profiles))
        desired = Desired(spec=spec, generation=2)
        profiles = [_running(desired, "alpha", pid=100, active=1),
                    _running(desired, "beta", pid=200, active=1),
                    _running(desired, "gamma", pid=300, active=1, override_desired="stopped")]
        _advance(tick, s, desired, profiles)
        outcomes = {n: (queue.get(s, rid).state, queue.get(s, rid).outcome) for n, rid in ids.items()}
        assert outcomes == {
            "alpha": ("waiting", None),
            "beta": ("cancelled", "the profile is suspended"),
            "gamma": ("cancelled", "the profile is stopped"),
            "delta": ("cancelled", "the profile was removed from fleet.yaml"),
        }
        assert queue.get(s, ids["alpha"]).waiting_on == "alpha: 1 active agent"
        kinds = [(e.profile, e.kind) for e in s.events() if e.kind == "maintenance_cancelled"]
        assert sorted(kinds) == [("beta", "maintenance_cancelled"), ("delta", "maintenance_cancelled"),
                                 ("gamma", "maintenance_cancelled")]
    finally:
        s.close()


def test_tick_marks_a_restart_done_once_a_newer_process_runs(tmp_path):
    d, s, tick = _tick_setup(tmp_path)
    try:
        rid = queue.submit(s, profile="alpha", action="restart", reason="x").request.id
        req = queue.get(s, rid)
        old = _running(d, "alpha", pid=100, active=2)
        _advance(tick, s, d, [old, _running(d, "beta", pid=200)])
        assert queue.get(s, rid).state == "waiting"
        # The drain began (the executor recorded drain_reason=maintenance): the request is draining.
        draining = _running(d, "alpha", pid=100, drain_intent="replace", drain_reason="maintenance",
                            drain_started=T0, drain_deadline=T0 + 60, drain_pid=100)
        _advance(tick, s, d, [draining, _running(d, "beta", pid=200)])
        assert queue.get(s, rid).state == "draining"
        newer = _running(d, "alpha", pid=101)
        newer = dataclasses.replace(newer, process=dataclasses.replace(newer.process, started_at=req.created_at + 5))
        _advance(tick, s, d, [newer, _running(d, "beta", pid=200)], now=req.created_at + 6)
        done = queue.get(s, rid)
        assert done.state == "done" and done.outcome == "restarted: alpha"
    finally:
        s.close()


def test_tick_fails_a_request_whose_deadline_passed(tmp_path):
    d, s, tick = _tick_setup(tmp_path)
    try:
        rid = queue.submit(s, profile="alpha", action="restart", reason="x", deadline=T0 - 1).request.id
        _advance(tick, s, d, [_running(d, "alpha", pid=100, active=1), _running(d, "beta", pid=200)])
        got = queue.get(s, rid)
        assert got.state == "failed" and got.outcome == "deadline passed before the gates opened"
    finally:
        s.close()


def test_tick_an_update_interrupted_by_a_controller_restart_fails_and_leaves_the_gateways(tmp_path):
    d, s, tick = _tick_setup(tmp_path)
    try:
        rid = queue.submit(s, profile="alpha", action="update", reason="x").request.id
        # An earlier controller started the command and was killed: no thread of ours runs it.
        assert queue.transition(s, rid, "draining", expect=("pending",), update_started=T0 - 30)
        _advance(tick, s, d, [_running(d, "alpha", pid=100), _running(d, "beta", pid=200)])
        got = queue.get(s, rid)
        assert got.state == "failed" and "the controller stopped while the update command ran" in got.outcome
        assert tick.running_updates == {}  # never re-run behind the operator's back
    finally:
        s.close()


def _update_desired(tmp_path, command):
    doc = {"version": 1, "name": "unit", "stagger": "0.1s",
           "hermes": {"home": "./hermes", "command": ["python3", "./hermes-not-run"]},
           "maintenance": {"idle": "20m", "update_command": command}, "profiles": {"alpha": {}, "beta": {}}}
    (tmp_path / "fleet.yaml").write_text(json.dumps(doc))
    spec = load_manifest(tmp_path / "fleet.yaml").spec
    return Desired(spec=spec, generation=1, previous={p.name: p for p in spec.profiles})


def test_tick_runs_the_update_command_once_when_every_target_is_idle(tmp_path):
    counter = tmp_path / "runs"
    cmd = [sys.executable, "-c", f"open({str(counter)!r}, 'a').write('x'); print('Updated.')"]
    d = _update_desired(tmp_path, cmd)
    s = Store(tmp_path / "fleet.db")
    tick = MaintenanceTick(str(tmp_path / "fleet.db"), s, epoch=1)
    try:
        rid = queue.submit(s, profile=ALL, action="update", reason="x").request.id
        _advance(tick, s, d, [_running(d, "alpha", pid=100), _running(d, "beta", pid=200, active=1)])
        assert tick.running_updates == {} and queue.get(s, rid).state == "waiting"  # beta is busy
        assert "beta: 1 active agent" in queue.get(s, rid).waiting_on
        idle = [_running(d, "alpha", pid=100), _running(d, "beta", pid=200)]
        _advance(tick, s, d, idle)
        _advance(tick, s, d, idle)  # a second pass while (or after) it runs starts nothing more
        _wait_updates(tick)
        _advance(tick, s, d, idle)
        got = queue.get(s, rid)
        assert counter.read_text() == "x"
        assert got.state == "waiting" and got.update_exit == 0 and got.update_output == "Updated.\n"
        assert got.update_started is not None and got.update_finished >= got.update_started
    finally:
        s.close()


def test_tick_a_failed_update_command_fails_the_request_with_the_output_tail(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('x' * 5000); print('E: broken'); sys.exit(4)"]
    d = _update_desired(tmp_path, cmd)
    s = Store(tmp_path / "fleet.db")
    tick = MaintenanceTick(str(tmp_path / "fleet.db"), s, epoch=1)
    try:
        rid = queue.submit(s, profile="alpha", action="update", reason="x").request.id
        _advance(tick, s, d, [_running(d, "alpha", pid=100), _running(d, "beta", pid=200)])
        assert queue.get(s, rid).state == "draining"
        _wait_updates(tick)
        assert queue.get(s, rid).state == "draining"  # the thread hands its outcome to the next pass
        _advance(tick, s, d, [_running(d, "alpha", pid=100), _running(d, "beta", pid=200)])
        got = queue.get(s, rid)
        assert got.state == "failed" and got.update_exit == 4
        assert got.update_output.endswith("E: broken\n") and len(got.update_output) == 4000
        assert got.outcome.startswith("update command exited 4; gateways left running") and "E: broken" in got.outcome
    finally:
        s.close()


def test_tick_an_update_thread_never_opens_the_store_so_a_store_refusing_writes_cannot_lose_its_outcome(
        tmp_path, monkeypatch):
    """The thread hands its outcome to the pass, whose connection keeps writes in memory while the store refuses
    them (a chaos soak made the state directory read-only as an update ended: the thread's own Store failed to
    open, the thread died, and the request stayed `draining` for ever)."""
    from fleet.controller import maintenance_tick
    cmd = [sys.executable, "-c", "print('Updated.')"]
    d = _update_desired(tmp_path, cmd)
    s = Store(tmp_path / "fleet.db")
    opened_by: list[str] = []
    real_store = maintenance_tick.Store

    def watched_store(*args, **kwargs):
        opened_by.append(threading.current_thread().name)
        return real_store(*args, **kwargs)
    monkeypatch.setattr(maintenance_tick, "Store", watched_store)
    tick = MaintenanceTick(str(tmp_path / "fleet.db"), s, epoch=1)
    try:
        rid = queue.submit(s, profile="alpha", action="update", reason="x").request.id
        idle = [_running(d, "alpha", pid=100), _running(d, "beta", pid=200)]
        _advance(tick, s, d, idle)
        assert tick.busy()
        _wait_updates(tick)
        assert tick.busy()  # its outcome waits for a pass
        _advance(tick, s, d, idle)
        got = queue.get(s, rid)
        assert got.state == "waiting" and got.update_exit == 0 and got.update_output == "Updated.\n"
        assert opened_by == [] and not tick.busy() and tick.running_updates == {}
    finally:
        s.close()
