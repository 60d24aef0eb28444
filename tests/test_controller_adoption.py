"""Controller restarts with real processes: adoption, the supervisor lock, identity of PID records."""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from fleet_harness import alive, environ_of, fleet, proc_start_ticks  # noqa: F401
from helpers import SIGNAL_LOGGER, ProcessReaper, reaper, wait_until  # noqa: F401

from fleet.store.files import write_json_atomic

pytestmark = [
    pytest.mark.skipif(os.name != "posix" or not sys.platform.startswith("linux"), reason="Linux process model"),
    pytest.mark.timeout(60),
]

THREE = {"alpha": None, "beta": None, "gamma": None}



def lock_free_now(path: Path) -> bool:
    """One non-blocking exclusive flock attempt, no retry."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def test_kill9_controller_then_new_controller_adopts_without_restarts(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in THREE}
    first = fleet.controller_pid()
    first_epoch = fleet.holder()["epoch"]
    fleet.kill9(first)
    assert all(alive(p) for p in pids.values()), "children outlive the controller"
    result = fleet.apply()  # starts a new controller
    second = fleet.controller_pid()
    assert second and second != first
    assert fleet.holder()["epoch"] > first_epoch
    profiles = fleet.profiles()
    for name, pid in pids.items():
        assert fleet.pid(name) == pid and alive(pid), name
        assert profiles[name]["pid"] == pid and profiles[name]["restarts"] == 0, profiles[name]
        assert fleet.marked_pids(name) == [pid], f"duplicate gateways for {name}"
        lines = fleet.adopt_lines(name)
        assert len(lines) == 1 and lines[0]["event"] == "adopt" and lines[0]["pid"] == pid, lines
        assert lines[0]["epoch"] == fleet.holder()["epoch"]
        record = fleet.record(name)
        assert record["controller_pid"] == second and record["pid"] == pid
        assert len(fleet.journal_kinds(name, "spawned")) == 1
        assert not fleet.journal_kinds(name, "killed") and not fleet.journal_kinds(name, "stop_sent")
    assert "Converged: 3 running." in result.stdout


def test_children_do_not_inherit_the_supervisor_lock(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in THREE}
    lock_path = fleet.state / ".supervisor.lock"
    for name, pid in pids.items():
        fds = psutil.Process(pid).open_files()
        assert all(Path(f.path) != lock_path for f in fds), (name, fds)
        targets = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
        assert str(lock_path) not in targets, (name, targets)
        assert str(fleet.state / "fleet.db") not in targets, (name, targets)
    controller = fleet.controller_pid()
    fleet.kill9(controller)
    # The kernel released the lock with the controller: nobody else holds it.
    assert lock_free_now(lock_path)
    proc = fleet.start_controller()
    wait_until(lambda: fleet.controller_pid() == proc.pid, 10, what="the new controller to hold the lock")
    assert proc.poll() is None
    for name, pid in pids.items():
        wait_until(lambda: fleet.record(name) and fleet.record(name)["controller_pid"] == proc.pid, 10,
                   what=f"{name} adopted by the new controller")
        assert fleet.pid(name) == pid and alive(pid)


def test_two_controllers_started_at_once_exactly_one_runs(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in THREE}
    result = fleet.cli("controller", "stop")
    assert result.returncode == 0, fleet.explain(result)
    assert fleet.controller_pid() is None
    records_before = {n: fleet.record(n) for n in THREE}
    procs = [fleet.start_controller(), fleet.start_controller()]
    codes = wait_until(lambda: [p.poll() for p in procs] if any(p.poll() is not None for p in procs) else None,
                       15, what="one of the two controllers to exit")
    loser = procs[0] if codes[0] is not None else procs[1]
    winner = procs[1] if loser is procs[0] else procs[0]
    assert loser.returncode == 3, codes
    assert winner.poll() is None, "the winner keeps running"
    wait_until(lambda: fleet.controller_pid() == winner.pid, 10, what="the winner to publish itself")
    for name, pid in pids.items():
        wait_until(lambda: (fleet.record(name) or {}).get("controller_pid") == winner.pid, 10,
                   what=f"{name} adopted by the winner")
        assert fleet.pid(name) == pid and alive(pid)
        assert fleet.marked_pids(name) == [pid]
        assert all(line["pid"] == pid for line in fleet.adopt_lines(name))
        assert records_before[name]["controller_pid"] != loser.pid
    loser_mentions = [e for e in fleet.journal() if str(loser.pid) in e.message]
    assert not loser_mentions, loser_mentions
    assert {e.epoch for e in fleet.journal() if e.kind == "adopted"} == {fleet.holder()["epoch"]}


@pytest.mark.parametrize("forgery", ["wrong_start", "no_marker"])
def test_record_naming_an_unrelated_process_never_signals_it(fleet, reaper, tmp_path, forgery):
    fleet.write_manifest({"alpha": {"env": {"FAKE_HERMES_HEARTBEAT_S": "0.2"}},
                          "beta": {"env": {"FAKE_HERMES_HEARTBEAT_S": "0.2"}}},
                         heartbeat_stale="1s", startup_grace="0.5s", drain_timeout="3s")
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in ("alpha", "beta")}
    result = fleet.cli("controller", "stop")
    assert result.returncode == 0, fleet.explain(result)
    original = fleet.record("alpha")
    fleet.kill9(pids["alpha"])
    # An unrelated process of ours: it notes every catchable signal and never exits by itself.
    signals_log = tmp_path / "signals.log"
    bystander = reaper.spawn([sys.executable, "-c", SIGNAL_LOGGER, str(signals_log)])
    wait_until(lambda: Path(str(signals_log) + ".ready").exists(), 10, what="the bystander to start")
    ticks = proc_start_ticks(bystander.pid)
    created = psutil.Process(bystander.pid).create_time()
    forged = dict(original, pid=bystander.pid, started_at=time.time())
    if forgery == "wrong_start":
        forged.update(start_ticks=ticks - 1000, create_time=created - 10.0)
    else:  # the right start, but nothing says it is a gateway of this fleet
        forged.update(start_ticks=ticks, create_time=created)
    write_json_atomic(fleet.state / "alpha.pid", forged)
    assert "HERMES_FLEET_PROFILE" not in environ_of(bystander.pid)

    fleet.apply(expect=None)  # a new controller reads the forged record
    new_alpha = fleet.wait_running("alpha", other_than=bystander.pid, timeout=15)
    assert new_alpha != bystander.pid
    assert fleet.pid("beta") == pids["beta"]
    result = fleet.cli("down", "--timeout", "20s")
    assert result.returncode == 0, fleet.explain(result)
    journal = "\n".join(f"{e.profile} {e.kind}: {e.message}" for e in fleet.journal("alpha"))
    assert bystander.poll() is None, f"the unrelated process was killed; journal:\n{journal}"
    assert not signals_log.exists(), f"the unrelated process was signalled: {signals_log.read_text()}\n{journal}"
    adopted = [line for line in fleet.adopt_lines("alpha") if line["pid"] == bystander.pid]
    assert not adopted, adopted
    reclaimed = [e for e in fleet.journal_kinds("alpha", "reclaimed") if str(bystander.pid) in e.message]
    assert [e.data["reason"] for e in reclaimed] == ["pid_reused" if forgery == "wrong_start" else "pid_unrelated"]


def test_a_stopped_controller_finishes_its_teardown_before_it_exits(fleet):
    """The controller leaves without the interpreter's own teardown: everything it holds must be released first,
    and what it prints must reach its log."""
    fleet.write_manifest(THREE)
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in THREE}
    assert fleet.cli("controller", "stop").returncode == 0
    proc = fleet.start_controller()
    for name in THREE:
        wait_until(lambda: (fleet.record(name) or {}).get("controller_pid") == proc.pid, 10,
                   what=f"{name} adopted by the foreground controller")
    proc.terminate()
    assert proc.wait(10) == 0
    log = max(fleet.tmp.glob("controller-*.log"), key=lambda p: p.stat().st_mtime).read_text()
    assert log.rstrip().endswith("controller stopped; gateways left running"), log
    assert not (fleet.state / "fleet.db-wal").exists(), "the store was closed (its log checkpointed) before the exit"
    assert fleet.holder() is None and fleet.controller_pid() is None
    assert max(fleet.journal(), key=lambda e: e.at).kind == "controller_stopped"
    assert all(alive(pid) and fleet.pid(name) == pid for name, pid in pids.items())
