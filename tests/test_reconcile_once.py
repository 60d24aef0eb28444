"""One pass of the controller, `Reconciler.reconcile_once(now)`, against a temporary state directory and a
fake platform: no real gateway process is started and nothing on the host is signalled."""

from __future__ import annotations

import sys
import time

import pytest
from fakes import FIRST_PID, FakePlatform, state, store  # noqa: F401

from fleet.controller.bookkeeping import StoreBookkeeping
from fleet.controller.fence_watch import FenceWatch
from fleet.controller.reconcile import Reconciler
from fleet.controller.record import record_manifest
from fleet.spec.load import load_manifest
from fleet.spec.markers import PROFILE_ENV, STATE_DIR_ENV
from fleet.store.db import Store
from fleet.store.fence import Fence
from fleet.store.health import HealthFile
from fleet.store.layout import StateDir, ensure_state_dir
from fleet.store.records import PidRecord, write_record


class NoBreach(Fence):
    def breach(self):
        return None


class Moved(Fence):
    def breach(self):
        return "state directory moved"


def record(store: Store, tmp_path, revision: str = "1", names: tuple[str, ...] = ("alpha",), *, stagger: str = "0s",
           backoff: str = "0s") -> None:
    path = tmp_path / "fleet.yaml"
    profiles = "".join(f"""
  {name}:
    driver: process
    command: ["{sys.executable}", "-c", "pass"]
    env: {{REV: "{revision}"}}""" for name in names)
    path.write_text(f"""version: 1
name: test
hermes: {{home: {tmp_path / 'home'}}}
stagger: {stagger}
restart: {{policy: always, backoff: [{backoff}]}}
profiles:{profiles}
""")
    record_manifest(store, load_manifest(str(path)), {"revision": revision}, prune=True, source="test",
                    lift_down=False)


_NO_BREACH = NoBreach()


def reconciler(state, store, platform, fence=_NO_BREACH) -> Reconciler:
    bookkeeping = StoreBookkeeping(store, HealthFile(state), time.time)
    return Reconciler(state, store, platform, epoch=store.bump_epoch(), fence=FenceWatch(fence),
                      bookkeeping=bookkeeping, clock=time.time)


def kinds(result) -> list[tuple[str, str, str]]:
    return [(a.profile, a.kind, a.reason) for a in result.attempted]


def test_without_a_desired_state_a_pass_plans_nothing(state, store):
    result = reconciler(state, store, FakePlatform()).reconcile_once(time.time())
    assert not result.planned and not result.replan_now and result.profiles == 0


def test_a_pass_spawns_then_the_next_one_sees_the_fleet_converged(state, store, tmp_path):
    record(store, tmp_path)
    platform = FakePlatform()
    passes = reconciler(state, store, platform)
    first = passes.reconcile_once(time.time())
    assert kinds(first) == [("alpha", "spawn", "first_apply")]
    assert first.replan_now and not first.converged and not first.superseded
    [pid] = platform.children
    scans = platform.scans
    second = passes.reconcile_once(time.time())
    assert second.attempted == () and not second.replan_now
    assert second.converged and second.profiles == 1
    assert second.gateways == {pid}
    assert platform.scans == scans  # a converged fleet is observed from its records alone
    assert store.meta("observed_generation") == str(store.current_generation().generation)


def test_a_gateway_this_controller_ran_is_reclaimed_and_respawned_in_one_pass(state, store, tmp_path):
    """Its own child died: the pass reclaims the record, ends what it left, looks at that profile again and
    starts its successor; a pass looks at every profile, so a respawn in two would cost two of them. Beta's
    spawn, due too, waits for the next pass (records first everywhere else)."""
    record(store, tmp_path)
    platform = FakePlatform()
    clock = [time.time()]
    passes = Reconciler(state, store, platform, epoch=store.bump_epoch(), fence=FenceWatch(_NO_BREACH),
                        bookkeeping=StoreBookkeeping(store, HealthFile(state), lambda: clock[0]),
                        clock=lambda: clock[0])
    passes.reconcile_once(clock[0])
    [first] = platform.children
    assert passes.reconcile_once(clock[0]).converged
    record(store, tmp_path, revision="1", names=("alpha", "beta"))
    clock[0] += 120.0  # past the floor between two starts of one profile
    platform.end(first, -9)
    died = passes.reconcile_once(clock[0])
    assert kinds(died) == [("alpha", "reclaim", "pid_dead"), ("alpha", "spawn", "crashed")]
    assert died.replan_now and len(platform.children) == 1 and first not in platform.children
    assert store.history("alpha").last_exit_class == "killed"  # the successor was planned from the reclaim
    assert kinds(passes.reconcile_once(clock[0])) == [("beta", "spawn", "first_apply")]


def test_a_records_fix_runs_alone_before_any_other_action(state, store, tmp_path):
    """A record left by another controller names a dead pid: the pass only reclaims it, though beta's spawn
    is due too, and asks to plan again; the next pass starts both."""
    record(store, tmp_path, names=("alpha", "beta"))
    write_record(state.record("alpha"), PidRecord(profile="alpha", pid=FIRST_PID - 1, start_ticks=1,
                                                  create_time=1.0, spec_hash="x", started_at=1.0,
                                                  controller_pid=1, epoch=0))
    platform = FakePlatform()
    passes = reconciler(state, store, platform)
    first = passes.reconcile_once(time.time())
    assert kinds(first) == [("alpha", "reclaim", "pid_dead")]
    assert first.replan_now and platform.children == {}
    second = passes.reconcile_once(time.time())
    assert sorted(a.profile for a in second.attempted if a.kind == "spawn") == ["alpha", "beta"]
    assert len(platform.children) == 2


def test_a_pass_that_would_spawn_scans_the_host_first_and_adopts_what_it_finds(state, store, tmp_path):
    """The record of a running gateway was lost: the cheap pass (records only) would spawn a second one, so
    the pass scans the process table first, finds the gateway by its markers and adopts it instead."""
    record(store, tmp_path)
    platform = FakePlatform()
    platform.run_stranger(FIRST_PID - 7, [sys.executable, "-c", "pass"],
                          {PROFILE_ENV: "alpha", STATE_DIR_ENV: str(state.root)})
    passes = reconciler(state, store, platform)
    passes.scan = False  # as in any pass after a controller's first, with nothing asking for a scan
    result = passes.reconcile_once(time.time())
    assert [(a.profile, a.kind) for a in result.attempted] == [("alpha", "adopt")]
    assert platform.scans == 1 and platform.children == {}


def test_a_spawn_from_a_desired_state_changed_during_the_pass_is_superseded(state, store, tmp_path):
    record(store, tmp_path, "1")
    platform = FakePlatform()
    platform.on_scan = lambda: record(store, tmp_path, "2") if platform.scans == 1 else None
    passes = reconciler(state, store, platform)
    first = passes.reconcile_once(time.time())
    assert kinds(first) == [("alpha", "spawn", "first_apply")]
    assert first.superseded and first.replan_now
    assert platform.children == {}  # nothing started from generation 1
    second = passes.reconcile_once(time.time())
    assert not second.superseded
    [child] = platform.children.values()
    assert child.env["REV"] == "2" and child.env[PROFILE_ENV] == "alpha"


def test_a_pass_that_finds_its_state_directory_gone_touches_nothing(state, store, tmp_path):
    record(store, tmp_path)
    platform = FakePlatform()
    result = reconciler(state, store, platform, fence=Moved()).reconcile_once(time.time())
    assert result.fenced and result.attempted == ()
    assert platform.children == {}
    assert store.meta("observed_generation") == "0"


def test_a_pass_reads_the_generations_spec_once_however_many_it_spawns(state, store, tmp_path, monkeypatch):
    """Each spawn checks that the desired state did not change meanwhile by the generation's number: reading the
    spec each time (some 300 KB at 1,000 profiles) made a cold start quadratic."""
    names = tuple(f"p{i:02d}" for i in range(20))
    record(store, tmp_path, names=names)
    reads = []
    whole_row = Store.current_generation
    monkeypatch.setattr(Store, "current_generation", lambda self: reads.append(1) or whole_row(self))
    platform = FakePlatform()
    passes = reconciler(state, store, platform)
    spawned = [a for a in passes.reconcile_once(time.time()).attempted if a.kind == "spawn"]
    assert len(spawned) == len(names) == len(platform.children)
    assert len(reads) <= 1
    passes.reconcile_once(time.time())
    assert len(reads) <= 1  # the next pass decodes nothing again


def test_a_stop_request_during_a_pass_starts_no_action_after_the_one_in_hand(state, store, tmp_path):
    """The controller is asked to leave while the pass spawns three profiles: the spawn in hand completes, no
    other starts, and nothing after the actions runs (the observed generation is not recorded). The next
    controller takes up what is left, as after a crash between two actions."""
    record(store, tmp_path, names=("alpha", "beta", "gamma"))
    platform = FakePlatform()
    asked = []
    passes = Reconciler(state, store, platform, epoch=store.bump_epoch(), fence=FenceWatch(_NO_BREACH),
                        bookkeeping=StoreBookkeeping(store, HealthFile(state), time.time), clock=time.time,
                        leaving=lambda: bool(asked))
    real_spawn = platform.spawn_detached

    def spawn_then_stop_request(*args, **kwargs):
        asked.append("SIGTERM")  # what the signal handler sets, between two bytecodes of the pass
        return real_spawn(*args, **kwargs)

    platform.spawn_detached = spawn_then_stop_request
    result = passes.reconcile_once(time.time())
    assert result.left and not result.fenced
    assert kinds(result) == [("alpha", "spawn", "first_apply")]
    assert len(platform.children) == 1
    assert store.meta("observed_generation") == "0"
    asked.clear()
    platform.spawn_detached = real_spawn
    rest = passes.reconcile_once(time.time())
    assert [a.profile for a in rest.attempted if a.kind == "spawn"] == ["beta", "gamma"]


def test_a_stop_request_before_the_actions_leaves_the_pass_after_its_look(state, store, tmp_path):
    record(store, tmp_path)
    platform = FakePlatform()
    passes = Reconciler(state, store, platform, epoch=store.bump_epoch(), fence=FenceWatch(_NO_BREACH),
                        bookkeeping=StoreBookkeeping(store, HealthFile(state), time.time), clock=time.time,
                        leaving=lambda: True)
    result = passes.reconcile_once(time.time())
    assert result.left and result.attempted == () and platform.children == {}


def test_an_action_that_fails_while_the_store_refuses_its_failure_is_held_in_memory(state, store, tmp_path):
    record(store, tmp_path)
    platform = FakePlatform()
    platform.spawn_error = OSError("exec format error")
    passes = reconciler(state, store, platform)

    def refuse(*_args, **_fields):
        raise OSError("disk full")
    store.update_history = refuse
    now = time.time()
    first = passes.reconcile_once(now)
    assert kinds(first) == [("alpha", "spawn", "first_apply")]
    assert passes.holds.failures("alpha", "spawn") == 1
    assert first.next_run == now + 1.0  # the first step of the in-memory backoff
    held = passes.reconcile_once(now + 0.5)
    assert held.attempted == () and held.next_run == now + 1.0
    again = passes.reconcile_once(now + 1.0)
    assert kinds(again) == [("alpha", "spawn", "first_apply")]
    assert passes.holds.failures("alpha", "spawn") == 2 and again.next_run == now + 1.0 + 2.0


# -- a respawn after exits that alone woke the loop (Reconciler.after_exits) ------------------------------------
def _settled_fleet(root, clock, *, names=("alpha", "beta"), stagger="0s", backoff="0s", then=None):
    """A fleet whose last pass changed nothing, its gateways running; `then(store, root)` runs once it is settled.
    Returns (reconciler, platform, store, pid of alpha's gateway)."""
    root.mkdir()
    st = StateDir(root / "state")
    ensure_state_dir(st)
    db = Store(st.db, durable=False, degradable=True)
    record(db, root, names=names, stagger=stagger, backoff=backoff)
    platform = FakePlatform()
    passes = Reconciler(st, db, platform, epoch=db.bump_epoch(), fence=FenceWatch(_NO_BREACH),
                        bookkeeping=StoreBookkeeping(db, HealthFile(st), lambda: clock[0]), clock=lambda: clock[0])
    for _ in range(len(names) + 2):
        if not passes.reconcile_once(clock[0]).replan_now:
            break
    assert passes.settled is not None
    if then is not None:
        then(db, root)
    alpha = next(pid for pid, p in platform.children.items() if p.env[PROFILE_ENV] == "alpha")
    return passes, platform, db, alpha


def _stopped_by_operator(db, root):
    db.update_history("alpha", override_desired="stopped", override_by="test", override_at=time.time())


def _new_generation(db, root):
    record(db, root, revision="2", names=("alpha", "beta"))


SCENARIOS = {
    "crash": {},
    "crash backoff": {"backoff": "30s"},
    "stagger behind a waiting sibling": {"names": ("alpha", "beta", "gamma"), "stagger": "1h"},
    "stopped by an operator meanwhile": {"then": _stopped_by_operator},
    "a new generation meanwhile": {"then": _new_generation},
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_respawn_after_exits_does_what_a_whole_pass_would(tmp_path, scenario):
    """Twin fleets, the same gateway killed in both: one pass is told of the exit (it respawns first, from the last
    look and that profile looked at again), the other is not (it looks at every profile first). They attempt the
    same actions and leave the same gateways, pass after pass."""
    outcomes = []
    for told in (True, False):
        clock = [time.time()]
        passes, platform, db, alpha = _settled_fleet(tmp_path / str(told), clock, **SCENARIOS[scenario])
        clock[0] += 120.0  # past the floor between two starts of one profile
        platform.end(alpha, -9)
        seen = []
        for _ in range(3):
            result = passes.reconcile_once(clock[0], frozenset({alpha}) if told and not seen else frozenset())
            seen.append(sorted((a.profile, a.kind, a.reason) for a in result.attempted))
        outcomes.append((seen, sorted((p.env[PROFILE_ENV], p.env.get("REV")) for p in platform.children.values()),
                         db.history("alpha").last_exit_class))
        db.close()
    (told_passes, *told_rest), (whole_passes, *whole_rest) = outcomes
    assert told_rest == whole_rest
    # Told of the exit, the first pass does what the whole pass does, plus the look the whole pass then takes again.
    assert [p for p in told_passes if p] == [p for p in whole_passes if p]


def test_an_exit_that_alone_woke_the_loop_is_respawned_before_the_pass_looks_at_every_profile(tmp_path):
    clock = [time.time()]
    passes, platform, db, alpha = _settled_fleet(tmp_path / "fleet", clock)
    looked_with: list[int] = []
    look = passes.observer.observe

    def counting_look(*args, **kwargs):
        looked_with.append(len(platform.children))
        return look(*args, **kwargs)

    passes.observer.observe = counting_look
    clock[0] += 120.0
    platform.end(alpha, -9)
    result = passes.reconcile_once(clock[0], frozenset({alpha}))
    assert kinds(result) == [("alpha", "reclaim", "pid_dead"), ("alpha", "spawn", "crashed")]
    assert looked_with == [2]  # the successor ran by the time the pass looked at every profile
    assert result.first == 2 and result.converged and not result.replan_now
    db.close()


def test_exits_after_a_pass_that_acted_wait_for_the_whole_pass(tmp_path):
    """A pass that changed something leaves no settled look: the exit is handled by the whole pass that follows."""
    clock = [time.time()]
    passes, platform, db, alpha = _settled_fleet(tmp_path / "fleet", clock)
    passes.settled = None
    clock[0] += 120.0
    platform.end(alpha, -9)
    result = passes.reconcile_once(clock[0], frozenset({alpha}))
    assert result.first == 0 and kinds(result) == [("alpha", "reclaim", "pid_dead"), ("alpha", "spawn", "crashed")]
    db.close()


def test_an_exit_of_no_gateway_of_the_last_look_changes_nothing_first(tmp_path):
    clock = [time.time()]
    passes, platform, db, alpha = _settled_fleet(tmp_path / "fleet", clock)
    result = passes.reconcile_once(clock[0], frozenset({alpha + 1000}))
    assert result.attempted == () and result.first == 0 and result.converged
    db.close()
