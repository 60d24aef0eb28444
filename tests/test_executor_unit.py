"""The executor against a fake platform (tests/fakes.py), a temporary state directory and a real Store: each
action kind performs exactly what its Action carries. Actions come from the planner where that is natural, so
planner and executor are checked together; nothing on the host is started or signalled."""

from __future__ import annotations

import dataclasses
import json

import pytest
from factories import (
    NOW,
    OLD_HASH,
    crashed,
    desired,
    fleet_spec,
    history,
    inventory,
    live,
    make_plan,
    observation,
    observed,
    pid_record,
    profile_spec,
    restart_request,
    status,
    with_changes,
)
from fakes import FIRST_PID, Call, FakePlatform, platform, state, store  # noqa: F401

from fleet.execute.executor import Executor, iso
from fleet.observe import hermes_files as hf
from fleet.observe import identity
from fleet.plan.model import Action, DrainStart
from fleet.spec.markers import PROFILE_ENV, STATE_DIR_ENV
from fleet.spec.model import DRIVER_PROCESS
from fleet.store.db import ProfileHistory, Store
from fleet.store.layout import StateDir
from fleet.store.records import read_record, write_record

EPOCH = 7


def process_spec(name: str = "alpha", **kw):
    return profile_spec(name, driver=DRIVER_PROCESS, **kw)


def hermes_spec(tmp_path, name: str = "alpha", *, made: bool = True, **kw):
    """A hermes-driver spec whose home is under `tmp_path` (and, when `made`, exists as a running gateway's does)."""
    home = tmp_path / "home" / name
    if made:
        home.mkdir(parents=True)
    return with_changes(profile_spec(name, **kw), hermes_home=str(home))


def executor(state, store, platform, *specs) -> Executor:
    by_name = {s.name: s for s in specs}
    return Executor(state, store, platform, epoch=EPOCH, spec_of=by_name.get, clock=lambda: NOW)


def remember(store: Store, past: ProfileHistory) -> ProfileHistory:
    """Write a history into the store, as the executor finds it after earlier passes, and read it back."""
    blank = ProfileHistory(past.name)
    changed = {f.name: getattr(past, f.name) for f in dataclasses.fields(past)
               if f.name != "name" and getattr(past, f.name) != getattr(blank, f.name)}
    if changed:
        store.update_history(past.name, **changed)
    return store.history(past.name)


def host_runs(platform: FakePlatform, state: StateDir, proc, name: str = "alpha") -> None:
    """The observed process is still there on the host, carrying this profile's markers."""
    platform.run_stranger(proc.pid, proc.cmdline, identity.markers(name, str(state.root)),
                          start_ticks=proc.start_ticks)


def only(plan, kind: str) -> Action:
    [action] = [a for a in plan.actions if a.kind == kind]
    return action


# -- reclaim ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, drain_intent, ran, klass, failures", [
    (1, None, 10.0, "crash", 3),
    (1, None, 7200.0, "crash", 1),  # ran past reset_after: the count starts afresh
    (0, None, 10.0, "clean", 3),
    (0, "stop", 10.0, "planned", 2),
    (0, "stop", 7200.0, "planned", 0),
    (75, None, 10.0, "restart_now", 2),
    (78, None, 10.0, "fatal_config", 2),
])
def test_reclaiming_a_dead_gateway_counts_its_exit(state, store, platform, code, drain_intent, ran, klass,
                                                   failures):
    spec = process_spec()
    record = pid_record("alpha", pid=3131, started_at=NOW - ran, spec_hash=spec.spec_hash)
    write_record(state.record("alpha"), record)
    platform.exits[3131] = code  # our child, ended, not yet reaped
    past = remember(store, history("alpha", failures=2, drain_intent=drain_intent))
    obs = observation("alpha", verdict="dead", record=record, history=past)
    action = only(make_plan(fleet_spec(spec), observed(obs)), "reclaim")
    assert (action.reason, action.exit_count.planned) == ("pid_dead", drain_intent is not None)

    assert executor(state, store, platform, spec).execute(action, obs)

    after = store.history("alpha")
    assert (after.last_exit_code, after.last_exit_class, after.failures) == (code, klass, failures)
    assert after.last_exit_at == NOW
    assert platform.called("reap") == [(3131,)] and platform.signalled() == []
    assert read_record(state.record("alpha")).record is None
    terminal = klass == "fatal_config"
    assert after.failed_reason == ("exit 78 (fatal configuration)" if terminal else None)
    assert after.failed_spec_hash == (spec.spec_hash if terminal else None)


def test_reclaiming_a_reused_pid_removes_the_record_and_counts_no_exit(state, store, platform):
    spec = process_spec()
    obs = observation("alpha", verdict="reused")
    write_record(state.record("alpha"), obs.record)
    action = only(make_plan(fleet_spec(spec), observed(obs)), "reclaim")
    assert action.exit_count is None

    executor(state, store, platform, spec).execute(action, obs)

    assert store.history("alpha").last_exit_class is None
    assert platform.calls == []  # neither reaped nor signalled
    assert read_record(state.record("alpha")).record is None
    assert [e.kind for e in store.events(profile="alpha")] == ["reclaimed"]


# -- drain -----------------------------------------------------------------------------------------

def test_a_hermes_drain_begins_by_recording_its_intent_and_writing_hermes_drain_request(state, store, platform,
                                                                                        tmp_path):
    spec = hermes_spec(tmp_path, desired="stopped", drain_timeout=45.0)
    platform.epoch = "boot-1"
    obs = observation("alpha", process=live(spec))
    action = only(make_plan(fleet_spec(spec), observed(obs)), "drain")
    assert action.drain == DrainStart("stop", "desired_stopped", 45.0)

    executor(state, store, platform, spec).execute(action, obs)

    h = store.history("alpha")
    assert (h.drain_intent, h.drain_reason, h.drain_started, h.drain_deadline, h.drain_pid, h.drain_signalled) == \
        ("stop", "desired_stopped", NOW, NOW + 45.0, 4242, None)
    request = json.loads((tmp_path / "home" / "alpha" / hf.DRAIN_REQUEST).read_text())
    assert (request["action"], request["epoch"], request["requested_at"]) == ("drain", "boot-1", iso(NOW))
    assert platform.signalled() == []  # Hermes drains first; the stop follows once it is idle
    assert not state.stop_marker("alpha").exists()


def test_a_process_driver_drain_begins_with_a_stop_marker_and_one_planned_stop(state, store, platform):
    spec = process_spec(desired="stopped", drain_timeout=45.0)
    proc = live(spec)
    host_runs(platform, state, proc)
    obs = observation("alpha", process=proc)
    action = only(make_plan(fleet_spec(spec), observed(obs)), "drain")

    executor(state, store, platform, spec).execute(action, obs)

    marker = json.loads(state.stop_marker("alpha").read_text())
    assert marker == {"requested_at": iso(NOW), "reason": "desired_stopped", "deadline": iso(NOW + 45.0),
                      "pid": proc.pid}
    assert platform.called("request_stop") == [(proc.pid,)]
    h = store.history("alpha")
    assert (h.drain_intent, h.drain_deadline, h.drain_signalled) == ("stop", NOW + 45.0, NOW)


def test_a_replace_begins_a_drain_whose_intent_is_replace(state, store, platform):
    spec = process_spec(drain_timeout=20.0)
    proc = live(spec, spec_hash=OLD_HASH)
    host_runs(platform, state, proc)
    obs = observation("alpha", process=proc)
    action = only(make_plan(fleet_spec(spec), observed(obs)), "replace")
    assert action.drain == DrainStart("replace", "spec_changed", 20.0)

    executor(state, store, platform, spec).execute(action, obs)

    h = store.history("alpha")
    assert (h.drain_intent, h.drain_reason, h.drain_deadline) == ("replace", "spec_changed", NOW + 20.0)
    assert platform.called("request_stop") == [(proc.pid,)]
    assert platform.called("spawn_detached") == []  # the successor waits for the old gateway's exit


def test_the_stop_phase_of_a_hermes_drain_sends_one_planned_stop(state, store, platform, tmp_path):
    spec = hermes_spec(tmp_path, desired="stopped")
    proc = live(spec)
    host_runs(platform, state, proc)
    past = remember(store, history("alpha", drain_intent="stop", drain_reason="desired_stopped",
                                   drain_started=NOW - 5.0, drain_deadline=NOW + 30.0, drain_pid=proc.pid))
    obs = observation("alpha", process=proc, history=past, status=status("draining", active=0))
    action = only(make_plan(fleet_spec(spec), observed(obs)), "drain")
    assert (action.stage, action.drain) == ("stop", None)

    executor(state, store, platform, spec).execute(action, obs)

    # SIGINT, which Hermes takes as planned even when its own watcher consumed the marker first
    assert platform.called("request_stop") == [(proc.pid, "interrupt")] and len(platform.signalled()) == 1
    planned = json.loads((tmp_path / "home" / "alpha" / hf.PLANNED_STOP).read_text())
    assert (planned["target_pid"], planned["target_start_time"]) == (proc.pid, proc.start_ticks)
    marker = json.loads(state.stop_marker("alpha").read_text())
    assert (marker["reason"], marker["deadline"]) == ("desired_stopped", iso(NOW + 30.0))
    h = store.history("alpha")
    assert (h.drain_signalled, h.drain_started, h.drain_deadline) == (NOW, NOW - 5.0, NOW + 30.0)


# -- kill ------------------------------------------------------------------------------------------

def timed_out(store: Store, spec, proc):
    past = remember(store, history("alpha", drain_intent="stop", drain_reason="desired_stopped",
                                   drain_started=NOW - 90.0, drain_deadline=NOW - 1.0, drain_pid=proc.pid,
                                   drain_signalled=NOW - 30.0))
    obs = observation("alpha", process=proc, history=past)
    return only(make_plan(fleet_spec(spec), observed(obs)), "kill"), obs


def test_a_kill_past_the_drain_deadline_kills_the_tree_and_moves_the_deadline(state, store, platform):
    spec = process_spec(desired="stopped")
    proc = live(spec)
    host_runs(platform, state, proc)
    action, obs = timed_out(store, spec, proc)
    assert action.reason == "drain_timeout" and action.kill_grace is not None

    executor(state, store, platform, spec).execute(action, obs)

    assert platform.signalled() == [platform.calls[-1]]
    assert platform.called("kill_tree") == [(proc.pid, identity.markers("alpha", str(state.root)))]
    assert store.history("alpha").drain_deadline == NOW + action.kill_grace


def test_a_kill_rechecks_identity_and_never_signals_a_reused_pid(state, store, platform):
    spec = process_spec(desired="stopped")
    proc = live(spec)
    platform.run_stranger(proc.pid, ("/usr/bin/vim",), identity.markers("alpha", str(state.root)),
                          start_ticks=proc.start_ticks + 1)  # the pid now names another process
    action, obs = timed_out(store, spec, proc)

    executor(state, store, platform, spec).execute(action, obs)

    assert platform.signalled() == []
    assert store.history("alpha").drain_deadline == NOW - 1.0
    assert [e.kind for e in store.events(profile="alpha")] == ["refused"]


def test_a_forced_restart_outside_a_drain_records_the_drain_its_kill_ends(state, store, platform):
    spec = process_spec()
    proc = live(spec)
    host_runs(platform, state, proc)
    obs = observation("alpha", process=proc, request=restart_request("alpha", kind="force_restart"))
    action = only(make_plan(fleet_spec(spec), observed(obs)), "kill")
    assert action.reason == "forced" and action.drain is not None

    executor(state, store, platform, spec).execute(action, obs)

    h = store.history("alpha")
    assert (h.drain_intent, h.drain_reason, h.drain_started, h.drain_signalled, h.drain_pid) == \
        ("replace", "forced", NOW, NOW, proc.pid)
    assert h.drain_deadline == NOW + action.drain.timeout
    assert [c.name for c in platform.signalled()] == ["kill_tree"]


# -- spawn -----------------------------------------------------------------------------------------

def spawn_of(spec, past: ProfileHistory, obs_kw=None) -> tuple[Action, object]:
    obs = observation("alpha", history=past, **(obs_kw or {}))
    action = only(make_plan(fleet_spec(spec, stagger=0.0), observed(obs), now=NOW + 3600.0), "spawn")
    return action, obs


def test_a_first_spawn_writes_the_record_and_history_and_counts_no_restart(state, store, platform):
    spec = process_spec()
    action, obs = spawn_of(spec, remember(store, history("alpha")))
    assert (action.reason, action.restart) == ("first_apply", False)

    assert executor(state, store, platform, spec).execute(action, obs)

    [(pid, child)] = platform.children.items()
    assert child.env[PROFILE_ENV] == "alpha" and child.env[STATE_DIR_ENV] == str(state.root)
    record = read_record(state.record("alpha")).record
    assert (record.pid, record.spec_hash, record.epoch, record.started_at) == (pid, spec.spec_hash, EPOCH, NOW)
    assert record.start_ticks == child.info.start_ticks
    h = store.history("alpha")
    assert (h.last_start, h.restarts, h.recent_starts) == (NOW, 0, (NOW,))


def test_what_a_spawn_had_to_settle_for_is_in_its_record_for_status_deep(state, store, platform):
    platform.spawn_caveat_text = "started inside the controller's job object"
    spec = process_spec()
    action, obs = spawn_of(spec, remember(store, history("alpha")))

    executor(state, store, platform, spec).execute(action, obs)

    assert read_record(state.record("alpha")).record.caveat == "started inside the controller's job object"


def test_a_respawn_after_a_crash_counts_a_restart_and_keeps_the_failure_count(state, store, platform):
    spec = process_spec()
    action, obs = spawn_of(spec, remember(store, crashed("alpha", failures=2)))
    assert (action.reason, action.restart) == ("crashed", True)

    executor(state, store, platform, spec).execute(action, obs)

    h = store.history("alpha")
    assert (h.restarts, h.failures, h.last_start) == (3, 2, NOW)


@pytest.mark.parametrize("failed_hash, clears", [(OLD_HASH, True), (None, False)])
def test_a_spawn_ends_a_failure_that_stopped_retries_only_when_its_action_says_so(state, store, platform,
                                                                                  failed_hash, clears):
    spec = process_spec()
    past = remember(store, crashed("alpha", code=78, klass="fatal_config", failed_reason="exit 78",
                                   failed_spec_hash=failed_hash or spec.spec_hash))
    request = None if failed_hash else restart_request("alpha", kind="start")
    action = Action("spawn", "alpha", "spawn_failed", clears_failure=clears)
    if failed_hash:  # a new spec since the failure: the planner says to clear it
        action, _ = spawn_of(spec, past)
        assert action.clears_failure
    obs = observation("alpha", history=past, request=request)

    executor(state, store, platform, spec).execute(action, obs)

    h = store.history("alpha")
    assert (h.failed_reason, h.failed_spec_hash) == ((None, None) if clears else ("exit 78", spec.spec_hash))
    assert h.last_start == NOW


def test_a_spawn_whose_desired_state_changed_meanwhile_starts_nothing(state, store, platform):
    spec = process_spec()
    action, obs = spawn_of(spec, remember(store, history("alpha")))

    assert executor(state, store, platform, spec).execute(action, obs, superseded=lambda: True) is False

    assert platform.called("spawn_detached") == [] and platform.children == {}
    assert read_record(state.record("alpha")).record is None
    assert store.history("alpha").last_start is None


def test_a_spawn_that_fails_counts_as_a_failure_not_a_start(state, store, platform):
    spec = process_spec()
    platform.spawn_error = OSError(8, "Exec format error", spec.command[0])
    action, obs = spawn_of(spec, remember(store, crashed("alpha", failures=1)))

    assert executor(state, store, platform, spec).execute(action, obs)

    h = store.history("alpha")
    assert (h.failures, h.last_exit_class, h.last_exit_at, h.recent_starts) == (2, "crash", NOW, (NOW,))
    assert (h.action_error_kind, h.action_errors) == ("spawn", 1)
    assert h.action_error == f"OSError: Exec format error: {spec.command[0]}"
    assert h.last_start == NOW - 100.5  # unchanged: a failed attempt is no start
    assert read_record(state.record("alpha")).record is None
    assert [e.kind for e in store.events(profile="alpha")] == ["spawn_failed"]


# -- update ----------------------------------------------------------------------------------------

def removal(store: Store, spec) -> tuple[Action, object]:
    past = remember(store, history("alpha", restarts=4))
    obs = observation("alpha", history=past)
    want = desired(fleet_spec(profile_spec("other")), previous={"alpha": spec})
    plan = make_plan(want, observed(obs, observation("other"), inventory=inventory("alpha", "other")))
    return only(plan, "update"), obs


@pytest.mark.parametrize("home", ["missing", "regular_file"])
def test_removing_a_profile_whose_files_are_missing_or_cannot_exist_completes(state, store, platform, tmp_path,
                                                                               home):
    spec = hermes_spec(tmp_path, made=False)
    if home == "regular_file":
        (tmp_path / "home").write_text("not a directory")  # the profile's home lies under a regular file
    action, obs = removal(store, spec)
    assert action.reason == "removed_from_manifest"

    executor(state, store, platform, spec).execute(action, obs)

    assert store.history("alpha") == ProfileHistory("alpha")
    assert [e.kind for e in store.events(profile="alpha")] == ["pruned"]
    assert platform.calls == []


# -- adopt -----------------------------------------------------------------------------------------

def test_an_adoption_writes_an_adopted_record_and_an_adopt_log_line_and_signals_nothing(state, store, platform):
    spec = process_spec()
    proc = live(spec, source="env_marker", started_at=NOW - 50.0)
    obs = observation("alpha", process=proc)
    action = only(make_plan(fleet_spec(spec), observed(obs)), "adopt")
    assert action.target == proc

    executor(state, store, platform, spec).execute(action, obs)

    record = read_record(state.record("alpha")).record
    assert (record.pid, record.start_ticks, record.adopted, record.epoch) == (proc.pid, proc.start_ticks, True, EPOCH)
    [line] = state.adopt_log("alpha").read_text().splitlines()
    assert json.loads(line)["source"] == "env_marker"
    assert store.history("alpha").last_start == NOW - 50.0
    assert platform.calls == []


# -- what a dead gateway leaves behind ---------------------------------------------------------------

LEFTOVER, NEIGHBOUR = FIRST_PID + 100, FIRST_PID + 101


def spawned_then_ended(state, store, platform, spec) -> tuple[Executor, Action, object]:
    """A gateway this executor started exits with 1, leaving a marked child and an unmarked member of its
    group; the returned reclaim is the planner's for it."""
    run = executor(state, store, platform, spec)
    start, obs = spawn_of(spec, remember(store, history("alpha")))
    run.execute(start, obs)
    [gateway] = platform.children
    platform.run_stranger(LEFTOVER, ("sleep", "60"), identity.markers("alpha", str(state.root)), ppid=gateway)
    platform.run_stranger(NEIGHBOUR, ("sleep", "60"), {"PATH": "/bin"}, ppid=gateway)
    platform.groups[NEIGHBOUR] = (gateway, gateway)
    platform.end(gateway, 1)
    dead = observation("alpha", verdict="dead", record=read_record(state.record("alpha")).record,
                       history=store.history("alpha"))
    return run, only(make_plan(fleet_spec(spec), observed(dead)), "reclaim"), dead


def test_reclaiming_its_own_gateway_ends_the_marked_leftovers_and_only_reports_the_unmarked(state, store,
                                                                                          platform):
    spec = process_spec()
    run, reclaim, dead = spawned_then_ended(state, store, platform, spec)

    run.execute(reclaim, dead)

    assert platform.signalled() == [Call("request_stop", (LEFTOVER,))]
    assert NEIGHBOUR in platform.processes
    assert run.saw_its_gateway_end("alpha")
    assert [e.kind for e in store.events(profile="alpha")][-3:] == ["warning", "leftovers_ended", "exited"]


def test_a_process_older_than_the_dead_gateway_is_no_leftover_of_it_and_its_environment_is_never_read(
        state, store, platform, monkeypatch):
    """What a gateway forked started after it: a marked process that started earlier (an earlier gateway's, ended
    by the spawn's sweep when it is a stray) is not this gateway's leftover, and the reclaim does not read the
    environment of any process older than the gateway, however many run (most of a host's processes)."""
    spec = process_spec()
    run, reclaim, dead = spawned_then_ended(state, store, platform, spec)
    older = FIRST_PID - 50
    platform.run_stranger(older, ("sleep", "60"), identity.markers("alpha", str(state.root)), start_ticks=1)
    read: list[int] = []
    environ = platform.process_environ
    monkeypatch.setattr(platform, "process_environ", lambda pid: read.append(pid) or environ(pid))

    run.execute(reclaim, dead)

    assert platform.signalled() == [Call("request_stop", (LEFTOVER,))]
    assert older in platform.processes
    assert older not in read and LEFTOVER in read


def test_a_leftover_that_ignores_the_stop_is_killed_after_the_grace(state, store, platform, monkeypatch):
    monkeypatch.setattr("fleet.execute.executor.LEFTOVER_GRACE", 0.0)  # the grace's length is not under test
    spec = process_spec()
    run, reclaim, dead = spawned_then_ended(state, store, platform, spec)
    platform.stubborn.add(LEFTOVER)

    run.execute(reclaim, dead)

    assert platform.signalled() == [Call("request_stop", (LEFTOVER,)), Call("kill_process", (LEFTOVER,))]
    assert LEFTOVER not in platform.processes


def test_a_record_it_did_not_write_ends_no_leftovers_but_the_next_spawn_sweeps_them_first(state, store, platform):
    spec = process_spec()
    record = pid_record("alpha", pid=3131, started_at=NOW - 10.0)
    write_record(state.record("alpha"), record)
    platform.run_stranger(LEFTOVER, ("sleep", "60"), identity.markers("alpha", str(state.root)))
    run = executor(state, store, platform, spec)
    dead = observation("alpha", verdict="dead", record=record)
    run.execute(only(make_plan(fleet_spec(spec), observed(dead)), "reclaim"), dead)
    assert platform.signalled() == [] and not run.saw_its_gateway_end("alpha")

    start, obs = spawn_of(spec, store.history("alpha"))
    run.execute(start, obs)

    assert [c.name for c in platform.calls if c.name != "reap"] == ["request_stop", "spawn_detached"]
    assert platform.called("request_stop") == [(LEFTOVER,)]


def test_a_sibling_gateway_this_controller_adopted_is_never_read_as_a_leftover(state, store, platform, monkeypatch):
    """A fleet started together: the siblings of the dead gateway started after it, yet each is the gateway of
    another profile, spawned or adopted by this controller: never a leftover, so the reclaim does not read them (at
    1,000 profiles, half the fleet for a gateway of the middle). Adopted here: a controller restarted holds none."""
    spec = process_spec()
    run, reclaim, dead = spawned_then_ended(state, store, platform, spec)
    sibling = platform.run_stranger(FIRST_PID + 200, ("sleep", "60"), identity.markers("beta", str(state.root)))
    found = dataclasses.replace(live("beta", pid=sibling.pid, source="env_marker"), start_ticks=sibling.start_ticks,
                                create_time=sibling.create_time)
    beta = observation("beta", process=found)
    run.execute(only(make_plan(fleet_spec(process_spec("beta")), observed(beta)), "adopt"), beta)
    read: list[int] = []
    environ, info = platform.process_environ, platform.process_info
    monkeypatch.setattr(platform, "process_environ", lambda pid: read.append(pid) or environ(pid))
    monkeypatch.setattr(platform, "process_info", lambda pid: read.append(pid) or info(pid))

    run.execute(reclaim, dead)

    assert platform.signalled() == [Call("request_stop", (LEFTOVER,))]
    assert sibling.pid in platform.processes and sibling.pid not in read and LEFTOVER in read


def test_the_gateways_the_leftover_look_skips_are_the_latest_of_each_profile(state, store, platform):
    """The table the leftover look reads ((pid, start ticks) -> profile): each profile's latest gateway (an
    earlier one, replaced, is no one's gateway any more)."""
    ex = executor(state, store, platform, process_spec("alpha"), process_spec("beta"))
    ex._remember("alpha", (100, 1))
    ex._remember("beta", (200, 2))
    assert ex._owners == {(100, 1): "alpha", (200, 2): "beta"}
    ex._remember("alpha", (101, 3))  # alpha's successor
    assert ex._owners == {(101, 3): "alpha", (200, 2): "beta"}
    assert ex._known == {"alpha": (101, 3), "beta": (200, 2)}
