"""One profile's trouble never touches a sibling.

- Any failure of an action on one profile (any exception type) is that profile's failure: it is
  kept in the store, backs off and shows in `status`, and takes no stagger slot, budget or
  wake-up of another profile (planner tables, then the real controller with the demo gateway).
- A profile that keeps dying at once is slowed by the restart floor and the start limit.
"""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
import textwrap
import time

import pytest

from factories import NOW, crashed, fleet_spec, history, make_plan, observation, observed, plan_text, profile_spec
from fleet_harness import REPO, alive, create_time, environ_of, fleet, proc_start_ticks  # noqa: F401
from helpers import reaper, wait_until  # noqa: F401

from fleet.platform.wake import send_wake
from fleet.plan.model import Action
from fleet.spec.model import RestartPolicy
from fleet.store.db import OperatorRequest
from fleet.store.layout import StateDir
from fleet.store.files import write_atomic, write_json_atomic

pytestmark = pytest.mark.timeout(180) if hasattr(pytest.mark, "timeout") else []


def spawn_failed(name: str, *, at: float = NOW, errors: int = 1, error: str = "ValueError: embedded null byte",
                 starts: tuple[float, ...] | None = None) -> object:
    """The history the executor leaves after a spawn that raised: a failure and an attempt, no start."""
    return history(name, failures=errors, last_exit_at=at, last_exit_class="crash", action_error=error,
                   action_error_kind="spawn", action_error_at=at, action_errors=errors,
                   recent_starts=starts if starts is not None else (at,))


def zero_backoff(name: str, **restart) -> object:
    base = profile_spec(name)
    return dataclasses.replace(base, restart=dataclasses.replace(base.restart, backoff=(0.0,), **restart))


# -- planner: a failed spawn ------------------------------------------------------------------

def test_a_failed_spawn_backs_off_and_a_fresh_sibling_takes_the_slot():
    fleet = fleet_spec("alpha", "beta")
    p = make_plan(fleet, observed(observation("alpha", history=spawn_failed("alpha"))))
    spawns = {a.profile: a for a in p.actions if a.kind == "spawn"}
    assert spawns["beta"].not_before is None  # ready now, not pushed behind alpha's retry
    assert spawns["alpha"].reason == "spawn_failed"
    # its own restart backoff (1 s), then behind beta's start by the stagger
    assert spawns["alpha"].not_before == NOW + 2.5
    assert "ValueError: embedded null byte" in spawns["alpha"].message
    assert [a.profile for a in p.executable(NOW)] == ["beta"]


def test_a_retrying_spawn_reserves_no_slot_a_sibling_could_use():
    """Once a LIVELOCK: the failing profile took the first stagger slot on every pass."""
    fleet = fleet_spec(zero_backoff("alpha"), "beta", stagger=2.5)
    obs = observed(observation("alpha", history=spawn_failed("alpha", at=NOW - 0.1)),
                   observation("beta", history=crashed("beta", failures=1, at=NOW - 0.5)))  # backoff 1 s
    p = make_plan(fleet, obs)
    spawns = {a.profile: a.not_before for a in p.actions if a.kind == "spawn"}
    assert spawns["alpha"] == pytest.approx(NOW + 0.15)  # the floor after its last attempt
    assert spawns["beta"] == pytest.approx(NOW + 0.5)  # its own backoff; alpha's retry does not push it
    # And when both are ready at once, the healthy one goes first.
    obs = observed(observation("alpha", history=spawn_failed("alpha", at=NOW - 5)),
                   observation("beta", history=crashed("beta", failures=1, at=NOW - 5)))
    assert plan_text(fleet, obs) == "alpha spawn spawn_failed @+2.5\nbeta spawn crashed"


def test_a_profile_that_cannot_spawn_holds_no_maintenance_budget():
    """A crashed sibling holds the budget (it was capacity and is down); one that never started does not,
    or a broken profile would block every sibling's maintenance for good."""
    from factories import running
    a, b = profile_spec("alpha"), profile_spec("beta")
    obs = observed(running(a, pid=100, spec_hash="v1:" + "0" * 64), observation("beta", history=spawn_failed("beta")))
    p = make_plan(fleet_spec(a, b), obs)
    assert [(x.profile, x.kind) for x in p.actions] == [("beta", "spawn"), ("alpha", "replace")]


@pytest.mark.parametrize("kind", ["reclaim", "adopt", "drain", "kill", "update"])
def test_any_failed_action_waits_its_backoff_and_never_blocks_a_sibling(kind):
    fleet = fleet_spec("alpha", "beta")
    failed = history("alpha", action_error=f"RuntimeError: {kind} exploded", action_error_kind=kind,
                     action_error_at=NOW - 0.5, action_errors=2)
    from fleet.plan import planner
    reason = {"reclaim": "pid_dead", "adopt": "record_missing", "update": "policy_changed", "drain": "desired_stopped",
              "kill": "wedged"}[kind]
    actions = [Action(kind, "alpha", reason, pid=7), Action("keep", "alpha", "running")]
    held = planner._hold_failed(actions, failed, NOW)
    assert held[0].kind == "wait" and held[0].reason == "action_failed"
    assert held[0].not_before == NOW - 0.5 + planner.ACTION_BACKOFF[1]
    assert f"RuntimeError: {kind} exploded" in held[0].message and "next try at" in held[0].message
    assert len(held) == 1  # the profile's other actions follow once the failing one succeeds
    assert planner._hold_failed(actions, failed, NOW + 10) == actions  # the backoff has passed
    # In a whole plan: a failed reclaim (a record fix, normally run alone first) no longer holds beta's spawn.
    if kind == "reclaim":
        obs = observed(observation("alpha", verdict="dead", history=failed))
        p = make_plan(fleet, obs)
        assert [(a.profile, a.kind) for a in p.executable(NOW)] == [("beta", "spawn")]


# -- planner: floor and start limit -----------------------------------------------------------

def test_the_floor_spaces_two_starts_of_one_profile_whatever_the_backoff():
    fleet = fleet_spec(zero_backoff("alpha"))
    h = dataclasses.replace(crashed("alpha", failures=3, at=NOW), recent_starts=(NOW - 0.1,))
    assert plan_text(fleet, observed(observation("alpha", history=h))) == "alpha spawn crashed @+0.15"


def test_the_start_limit_marks_a_crash_loop_and_slows_it():
    fleet = fleet_spec(zero_backoff("alpha"))
    starts = (NOW - 4, NOW - 3, NOW - 2, NOW - 1, NOW - 0.5)
    h = dataclasses.replace(crashed("alpha", failures=5, at=NOW - 0.4), recent_starts=starts)
    spawn = make_plan(fleet, observed(observation("alpha", history=h))).actions[0]
    assert spawn.kind == "spawn" and spawn.not_before == NOW - 4 + 10.0
    assert "crash-looping: 5 starts within 10s" in spawn.message
    # Starts spread over more than the interval are not a crash loop.
    spread = dataclasses.replace(h, recent_starts=(NOW - 40, NOW - 30, NOW - 20, NOW - 10, NOW - 0.5))
    assert plan_text(fleet, observed(observation("alpha", history=spread))) == "alpha spawn crashed"
    # An operator's restart is never held back; burst 0 turns the limit off.
    request = OperatorRequest(1, "alpha", "restart", NOW - 0.1, "me", "pending")
    assert plan_text(fleet, observed(observation("alpha", history=h, request=request))) == "alpha spawn crashed"
    off = fleet_spec(zero_backoff("alpha", start_limit_burst=0))
    assert plan_text(off, observed(observation("alpha", history=h))) == "alpha spawn crashed"


def test_the_start_limit_counts_immediate_restarts_too():
    """Exit 75 (restart now) has no backoff: only the start limit brakes a gateway that keeps asking."""
    fleet = fleet_spec(zero_backoff("alpha"))
    starts = tuple(NOW - 4 + i for i in range(5))
    h = dataclasses.replace(crashed("alpha", failures=0, at=NOW - 0.1, code=75, klass="restart_now"),
                            recent_starts=starts)
    spawn = make_plan(fleet, observed(observation("alpha", history=h))).actions[0]
    assert spawn.not_before == NOW - 4 + 10.0


def test_restart_policy_defaults_brake():
    r = RestartPolicy("always", (0.0,), 64.0, 60.0)
    assert (r.floor, r.start_limit_burst, r.start_limit_interval) == (0.25, 5, 10.0)


# -- the real controller: spawn failures of every kind stay with their profile ---------------

def _healthy_siblings_survive(fleet, bad: str = "bad") -> None:
    """good starts; crashy's gateway, killed, is respawned; bad shows Backoff with its error."""
    good = fleet.wait_running("good", timeout=30)
    first = fleet.wait_running("crashy", timeout=30)
    fleet.kill9(first)
    second = fleet.wait_running("crashy", other_than=first, timeout=30)
    assert second != first and alive(good)

    def backoff_shown():
        row = fleet.profiles().get(bad)
        return row if row and row["phase"] in ("Backoff", "Failed") and row["action"]["not_before"] \
            and "could not start" in row["note"] else None
    row = wait_until(backoff_shown, 20, what=f"{bad} to show its failure")
    errors = [e for e in fleet.journal(bad) if e.kind in ("spawn_failed", "error")]
    assert errors, fleet.journal(bad)
    assert fleet.pid(bad) is None
    return row


@pytest.mark.parametrize("how", ["home_under_a_file", "stop_marker_is_a_directory"])
def test_a_profile_that_cannot_spawn_never_blocks_its_siblings(fleet, how):
    blocker = fleet.tmp / "a-file"
    blocker.write_text("not a directory\n")
    bad = {"hermes": {"home": str(blocker / "hermes")}} if how == "home_under_a_file" else None
    fleet.write_manifest({"bad": bad, "crashy": None, "good": None}, stagger="0.5s")
    if how == "stop_marker_is_a_directory":
        (fleet.state / "bad.stop").mkdir(parents=True)
        fleet.profile_home("bad").mkdir(parents=True)
    fleet.profile_home("crashy").mkdir(parents=True)
    fleet.profile_home("good").mkdir(parents=True)
    fleet.apply("--no-wait")
    _healthy_siblings_survive(fleet)
    # A profile that never ran can be removed: cleaning up files it could never have written succeeds.
    fleet.write_manifest({"crashy": None, "good": None}, stagger="0.5s")
    fleet.apply()
    assert "bad" not in fleet.profiles()


WRAPPER = textwrap.dedent("""\
    import os, sys
    sys.path.insert(0, {repo!r})
    from fleet.controller import __main__ as entry
    from fleet.platform.linux import LinuxPlatform
    import builtins
    EXC = getattr(builtins, os.environ["ISOLATION_SPAWN_RAISES"])

    class Raising(LinuxPlatform):
        def spawn_detached(self, argv, env, cwd, log_path):
            if env.get("HERMES_FLEET_PROFILE") == "bad":
                raise EXC("injected by the test")
            return super().spawn_detached(argv, env, cwd, log_path)

    entry.current_platform = Raising
    sys.exit(entry.main(sys.argv[1:]))
    """)


@pytest.mark.parametrize("exc", ["ValueError", "TypeError", "RuntimeError", "PermissionError", "KeyError",
                                 "LookupError"])
def test_any_exception_from_a_spawn_is_that_profiles_failure(fleet, exc):
    fleet.write_manifest({"bad": None, "crashy": None, "good": None}, stagger="0.5s")
    for name in ("bad", "crashy", "good"):
        fleet.profile_home(name).mkdir(parents=True)
    script = fleet.tmp / "controller_wrapper.py"
    script.write_text(WRAPPER.format(repo=str(REPO)))
    env = fleet.env()
    env["ISOLATION_SPAWN_RAISES"] = exc
    fleet.state.mkdir(parents=True, exist_ok=True)
    with open(fleet.tmp / "controller.out", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(script), "--state-dir", str(fleet.state)], cwd=str(fleet.tmp),
                                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    fleet.controllers[proc.pid] = create_time(proc.pid) or time.time()
    fleet._popens.append(proc)
    wait_until(lambda: fleet.controller_pid() == proc.pid, 20, what="the wrapped controller to hold the lock")
    fleet.apply("--no-wait")
    row = _healthy_siblings_survive(fleet)
    assert proc.poll() is None
    assert "could not start" in row["note"] and f"{exc}: " in row["note"], row  # the text itself may be masked


# -- the real controller: what a dead gateway leaves is ended before its successor --------------

def _marked(fleet, profile: str) -> list[int]:
    """Live processes carrying this test fleet's and this profile's markers (psutil, independent of the code)."""
    return [p.pid for p in fleet._strays() if environ_of(p.pid).get("HERMES_FLEET_PROFILE") == profile]


@pytest.mark.parametrize("how", ["group", "session", "daemon"])
def test_a_crashing_gateway_leaves_no_orphans_and_down_says_so_truthfully(fleet, how):
    fleet.write_manifest({"leaky": None, "good": None}, backoff=["0.2s"])
    fleet.profile_home("leaky").mkdir(parents=True)
    fleet.profile_home("good").mkdir(parents=True)
    fleet.control("leaky", leave_child=how, crash=True)  # every instance leaves a child, then crashes
    fleet.apply("--no-wait")
    fleet.wait_running("good", timeout=30)
    wait_until(lambda: len(fleet.journal_kinds("leaky", "exited")) >= 4, 60, what="four crashes of leaky")
    fleet.clear_control("leaky")
    live = fleet.wait_running("leaky", timeout=60)
    assert _marked(fleet, "leaky") == [live], (how, _marked(fleet, "leaky"), live)
    ended = fleet.journal_kinds("leaky", "leftovers_ended")
    assert len(ended) >= 3, [e.message for e in fleet.journal("leaky")]
    result = fleet.cli("down", "--timeout", "30s")
    assert result.returncode == 0, fleet.explain(result)
    assert "nothing of the fleet runs" in result.stdout
    assert fleet._strays() == []


# -- the restart brake ----------------------------------------------------------------------------

def test_a_crash_loop_is_braked_and_its_journal_stays_bounded(fleet):
    """Once 440 spawns a second with backoff [0s]: now at most start_limit_burst (5) starts in any
    start_limit_interval (10 s), never two within the floor, and a bounded number of rows per start."""
    fleet.write_manifest({"loop": {"driver": "process", "command": [sys.executable, "-c", "raise SystemExit(3)"]},
                          "good": None}, backoff=["0s"])
    fleet.profile_home("good").mkdir(parents=True)
    fleet.apply("--no-wait")
    fleet.wait_running("good", timeout=30)

    def starts() -> list[float]:
        return sorted(e.at for e in fleet.journal("loop") if e.kind in ("spawned", "spawn_failed"))
    wait_until(lambda: len(starts()) >= 8, 90, what="eight starts of the crash-looping profile")
    at = starts()
    slack = 0.2  # a journal row is written after its spawn, which takes a few ms on a loaded machine
    for i in range(len(at) - 5):
        assert at[i + 5] - at[i] >= 10.0 - slack, at  # the sixth start waits for the window
    for a, b in itertools.pairwise(at):
        assert b - a >= 0.25 - slack, at
    rows = fleet.journal("loop")
    assert len(rows) <= 3 * len(at) + 5, [(e.kind, e.message) for e in rows]
    # Between two starts the profile backs off (a start lives for a moment as Running, then exits).
    wait_until(lambda: fleet.profiles()["loop"]["phase"] in ("Backoff", "Starting", "Missing"), 15,
               what="the crash-looping profile shown backing off")


def test_retention_bounds_the_journal_requests_and_adoption_logs(tmp_path):
    from fleet.spec.model import RetentionPolicy
    from fleet.store.db import Store
    from fleet.store.layout import StateDir
    from fleet.store.retention import apply_retention

    state = StateDir(tmp_path)
    store = Store(tmp_path / "fleet.db")
    try:
        now = time.time()
        with store.tx():
            for i in range(500):
                store.conn.execute("INSERT INTO journal(at, epoch, profile, kind, message) VALUES(?,?,?,?,?)",
                                   (now - 100 * 86400 if i < 50 else now - 500 + i, 1, "a", "spawned", f"row {i}"))
            for i in range(40):
                store.conn.execute("INSERT INTO requests(profile, kind, created_at, state, done_at) "
                                   "VALUES('a','restart',?,?,?)", (now - 10, "done" if i < 37 else "pending", now - 5))
            for i in range(30):
                store.conn.execute("INSERT INTO maintenance_requests(profile, action, reasons, state, created_at, "
                                   "updated_at, finished_at) VALUES(?, 'restart', '[]', ?, ?, ?, ?)",
                                   (f"p{i}", "done" if i < 25 else "pending", now - 10, now - 5,
                                    now - 5 if i < 25 else None))
        log = tmp_path / "a.adopt.log"
        old = '{"at": "2001-01-01T00:00:00.000Z", "event": "adopt"}\n'
        new = '{"at": "%s", "event": "adopt", "pad": "%s"}\n'
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now))
        log.write_text(old * 10 + "".join(new % (stamp, "x" * 100) for _ in range(100)))
        policy = RetentionPolicy(max_age=30 * 86400.0, journal_rows=100, request_rows=10, adopt_log_bytes=4096)
        assert apply_retention(store, state, policy, now) > 0
        rows = store.events(limit=100000)
        assert len(rows) == 100 and rows[-1].message == "row 499"
        states = [r[0] for r in store.conn.execute("SELECT state FROM requests")]
        assert states.count("pending") == 3 and states.count("done") == 10
        maint = [r[0] for r in store.conn.execute("SELECT state FROM maintenance_requests")]
        assert maint.count("pending") == 5 and maint.count("done") == 10
        text = log.read_text()
        assert len(text.encode()) <= 4096 and "2001-01-01" not in text and text.endswith("}\n")
        assert apply_retention(store, state, policy, now) == 0  # idempotent
    finally:
        store.close()


def test_down_names_what_of_the_fleet_still_runs(fleet, reaper):
    """`down` never says "stopped" while a process carrying the fleet's markers still runs (here one the
    controller has no record of, so it is never its to end)."""
    fleet.write_manifest({"good": None})
    fleet.profile_home("good").mkdir(parents=True)
    fleet.apply()
    fleet.wait_running("good")
    env = dict(fleet.env(), HERMES_FLEET_PROFILE="ghost")
    stray = reaper.spawn([sys.executable, "-c", "import time; time.sleep(120)"], env=env)
    wait_until(lambda: environ_of(stray.pid).get("HERMES_FLEET_PROFILE") == "ghost", 10, what="the stray to start")
    result = fleet.cli("down", "--timeout", "3s")
    assert result.returncode == 1, fleet.explain(result)
    assert f"pid {stray.pid} (ghost)" in result.stderr and "still run" in result.stderr, fleet.explain(result)
    assert "nothing of the fleet runs" not in result.stdout
    assert stray.poll() is None  # reported, never signalled: no record makes it the controller's


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process model")
@pytest.mark.parametrize("driver", ["process", "hermes"])
@pytest.mark.parametrize("forged", ["reused", "dead", "unrelated", "corrupt"])
def test_a_forged_record_never_makes_a_live_gateway_a_leftover(fleet, reaper, driver, forged):
    """A record replaced by one naming a reused pid (with an older start), a dead pid, another live process
    of ours with its true start, or by garbage, under a live gateway
    adopted by this controller (so no child of it) and, for Hermes, with Hermes' own gateway.pid forged too
    (the lock then names nobody): the record says nothing true about what came after the gateway, so the
    gateway, which carries the profile's markers, is adopted again, never ended as the record's leftover,
    and no second gateway starts."""
    name = "worker" if driver == "process" else "alpha"
    body = {"driver": "process", "env": {"HOME": str(fleet.tmp / "phome")},
            "command": [sys.executable, str(REPO / "examples/demo/hermes"), "gateway", "run"]} if driver == "process" \
        else None
    fleet.write_manifest({name: body})
    fleet.apply()
    pid = fleet.wait_pid(name)
    fleet.kill9(fleet.controller_pid())  # the next controller adopts the gateway: it is nobody's child of ours
    fleet.apply()
    wait_until(lambda: fleet.journal_kinds(name, "adopted"), 20, what="the gateway to be adopted")
    decoy = reaper.spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    record: dict | str
    if forged == "reused":
        record = dict(fleet.record(name), pid=decoy.pid, start_ticks=1, create_time=1.0)
    elif forged == "dead":
        gone = reaper.spawn([sys.executable, "-c", "pass"])
        gone.wait(10)
        record = dict(fleet.record(name), pid=gone.pid, start_ticks=1, create_time=1.0)
    elif forged == "unrelated":
        record = dict(fleet.record(name), pid=decoy.pid, start_ticks=proc_start_ticks(decoy.pid),
                      create_time=create_time(decoy.pid))
    else:
        record = "{not a record"
    if driver == "hermes":
        write_json_atomic(fleet.profile_home(name) / "gateway.pid", {
            "pid": decoy.pid, "kind": "hermes-gateway", "start_time": proc_start_ticks(decoy.pid),
            "argv": ["hermes", "-p", name, "gateway", "run", "--external-supervisor"]})
    if isinstance(record, dict):
        write_json_atomic(fleet.state / f"{name}.pid", record)  # under the running controller
    else:
        write_atomic(fleet.state / f"{name}.pid", record.encode())
    send_wake(StateDir(fleet.state))
    wait_until(lambda: fleet.journal_kinds(name, "reclaimed") or fleet.journal_kinds(name, "exited"), 20,
               what="the forged record to be reclaimed")
    wait_until(lambda: fleet.pid(name) == pid, 20, what="the live gateway to be adopted again")
    assert alive(pid) and decoy.poll() is None
    assert not fleet.journal_kinds(name, "leftovers_ended"), fleet.journal(name)
    assert not fleet.journal_kinds(name, "spawned")[1:], fleet.journal(name)  # only the first apply's
    assert fleet.marked_pids(name) == [pid]
