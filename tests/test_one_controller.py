"""One controller, one writer: a controller whose state directory is removed or replaced under it
stops at once; two fleets over one Hermes home never fight over a gateway; an apply overtaken by a
newer generation says so."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

from factories import fleet_spec, live, observation, observed, plan_text, profile_spec
from fleet_harness import FleetHarness, alive, fleet, pids_with_env  # noqa: F401
from helpers import wait_until

from fleet.store.claims import CLAIM_LEASE_SECONDS, HELD, LEASED, STALE, claim_liveness, own_claim
from fleet.store.layout import StateDir

LINUX = pytest.mark.skipif(os.name != "posix" or not sys.platform.startswith("linux"), reason="Linux process model")
FENCED_EXIT = 4
SUPERSEDED_EXIT = 5
A = profile_spec("alpha")
ONE = fleet_spec(A)
OTHER = "pid 4242 is the gateway of another fleet (state directory /srv/other-state)"


# -- the planner: another fleet's profile is a conflict, never touched ----------------------------

def test_another_fleets_gateway_is_a_conflict_and_never_adopted():
    obs = observed(dataclasses.replace(observation("alpha"), other_fleet=OTHER))
    assert plan_text(ONE, obs) == "alpha conflict owned_by_other_fleet"


def test_another_fleets_gateway_found_by_pidfile_is_not_adopted_nor_replaced():
    base = observation("alpha", process=live(A, source="hermes_pidfile", spec_hash="v1:" + "f" * 64))
    assert "adopt" in plan_text(ONE, observed(base))
    obs = observed(dataclasses.replace(base, other_fleet=OTHER))
    assert plan_text(ONE, obs) == "alpha conflict owned_by_other_fleet"


def test_our_record_naming_another_fleets_gateway_is_only_reclaimed():
    obs = observed(dataclasses.replace(observation("alpha", verdict="unrelated"), other_fleet=OTHER))
    text = plan_text(ONE, obs)
    assert text.splitlines() == ["alpha reclaim pid_unrelated", "alpha conflict owned_by_other_fleet"]


# -- live: helpers ---------------------------------------------------------------------------------

def gateways_of(home, name: str) -> list[int]:
    """Live processes serving profile `name` of the Hermes root `home`, from any fleet."""
    return pids_with_env({"HERMES_FLEET_PROFILE": name, "HERMES_HOME": str(home)})


def never_two(fleet, names, seconds: float, *, until=None) -> None:
    """For `seconds` (or until `until()` holds), no profile has two processes (a bounded observation window)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and until()):
        for name in names:
            pids = gateways_of(fleet.home, name)
            assert len(pids) <= 1, f"{name} has {len(pids)} processes: {pids}"
        time.sleep(0.05)


THREE = {"alpha": None, "beta": None, "gamma": None}


# -- live: the state directory removed or replaced under a running controller ----------------------

@LINUX
@pytest.mark.timeout(120)
def test_state_dir_removed_under_a_running_controller_then_apply(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in THREE}
    old = fleet.controller_pid()
    old_created = fleet.controllers[old]
    shutil.rmtree(fleet.state)
    fleet.apply()
    new = fleet.controller_pid()
    assert new is not None and new != old
    # Within a bound, without anything waking it: the old controller sees its directory is gone; while it
    # lives and after, no profile ever has two processes.
    never_two(fleet, THREE, 10.0, until=lambda: not alive(old, old_created))
    assert not alive(old, old_created), f"the old controller {old} still runs"
    never_two(fleet, THREE, 3.0)
    for name, pid in pids.items():
        assert alive(pid, fleet.seen[pid]), f"{name}'s gateway {pid} was signalled"
        assert fleet.pid(name) == pid  # adopted by the new controller, not replaced
    sock = fleet.state / ".controller.sock"
    assert stat.S_ISSOCK(os.lstat(sock).st_mode), "the old controller unlinked the new one's wake socket"
    kinds = [e.kind for e in fleet.journal()]
    assert "spawned" not in kinds and "killed" not in kinds and "stop_sent" not in kinds


def _replace_file(path) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(path.read_bytes())
    os.replace(tmp, path)


def _replace_db(path) -> None:
    tmp = path.with_name("fleet.db.copy")
    src = sqlite3.connect(str(path))
    dst = sqlite3.connect(str(tmp))
    src.backup(dst)
    src.close()
    dst.close()
    os.replace(tmp, path)


def _replace_socket(path) -> None:
    os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()  # the name stays; only the controller must not take it for its own


@LINUX
@pytest.mark.timeout(120)
@pytest.mark.parametrize("what", ["renamed", "lock", "db", "socket"])
def test_controller_exits_when_its_state_files_are_replaced(fleet, tmp_path, what):
    fleet.write_manifest({"alpha": None})
    proc = fleet.start_controller()
    wait_until(lambda: fleet.controller_pid() == proc.pid, 15, what="the controller to hold the lock")
    fleet.apply()
    pid = fleet.wait_running("alpha")
    moved = tmp_path / "moved"
    replaced = None
    if what == "renamed":
        os.rename(fleet.state, moved)
    elif what == "lock":
        _replace_file(fleet.state / ".supervisor.lock")
    elif what == "db":
        _replace_db(fleet.state / "fleet.db")
    else:
        _replace_socket(fleet.state / ".controller.sock")
        replaced = os.lstat(fleet.state / ".controller.sock").st_ino
    rows_before = None if what in ("renamed", "db") else len(fleet.journal())
    assert proc.wait(timeout=15) == FENCED_EXIT
    assert alive(pid, fleet.seen[pid]), "the gateway was signalled"
    if replaced is not None:
        assert os.lstat(fleet.state / ".controller.sock").st_ino == replaced, "another process' socket was unlinked"
    if rows_before is not None:
        assert len(fleet.journal()) == rows_before, "a fenced controller wrote to the store"
    if what == "renamed":
        os.rename(moved, fleet.state)  # so the harness can bring the fleet down


# -- live: two state directories over one Hermes home ---------------------------------------------

def second_fleet(tmp_path, home):
    """Another fleet (its own state directory under tmp_path/b) over the Hermes root `home`."""
    (tmp_path / "b").mkdir()
    other = FleetHarness(tmp_path / "b")
    other._popens = []
    other.home = home
    return other


@LINUX
@pytest.mark.timeout(150)
@pytest.mark.parametrize("how", ["same_root", "profile_home_override"])
def test_two_state_dirs_over_one_hermes_home(fleet, tmp_path, how):
    fleet.write_manifest({"alpha": None})
    fleet.apply()
    a_pid = fleet.wait_running("alpha")
    a_created = fleet.seen[a_pid]
    other = second_fleet(tmp_path, fleet.home)
    if how == "same_root":
        alpha = None  # the same Hermes root, another state directory
    else:  # another root, but alpha's home is overridden into the first fleet's root
        other.home = tmp_path / "b" / "hermes"
        alpha = {"hermes": {"home": str(fleet.home)}}
    try:
        other.write_manifest({"alpha": alpha, "beta": None})
        result = other.apply(expect=None)
        assert result.returncode == 1, other.explain(result)  # alpha is a conflict: reported, not applied
        beta = other.wait_running("beta")
        never_two(fleet, ["alpha"], 3.0)
        assert alive(a_pid, a_created) and fleet.pid("alpha") == a_pid
        alpha = other.profiles()["alpha"]
        assert alpha["phase"] == "Failed"
        assert "owned_by_other_fleet" in alpha["note"] and str(fleet.state) in alpha["note"], alpha
        assert other.pid("alpha") is None
        assert other.adopt_lines("alpha") == []
        journal = other.journal()
        assert len(journal) < 40, [(e.kind, e.profile, e.message) for e in journal]
        assert not [e for e in journal if e.profile == "alpha" and e.kind in ("adopted", "reclaimed", "spawned")]
        diff = other.cli("diff", "-o", "json")
        assert "owned_by_other_fleet" in diff.stdout, other.explain(diff)
        # The first fleet is untouched: its gateway, its claim, its own view.
        assert fleet.profiles()["alpha"]["phase"] == "Running"
        assert beta in gateways_of(other.home, "beta")
    finally:
        other.cleanup()
    assert alive(a_pid, a_created)


def test_claim_is_held_while_locked_leased_after_its_controller_died_and_stale_once_the_lease_lapsed(tmp_path):
    state = StateDir(tmp_path / "state")
    state.root.mkdir()
    claim = own_claim(state, "store-1", 4242)
    locked = {"yes": True}

    def lock_is_held(path: str) -> bool:
        assert path == str(state.lock)
        return locked["yes"]

    now = claim.renewed_at
    assert claim_liveness(claim, lock_is_held, now + 10 * CLAIM_LEASE_SECONDS) == HELD
    locked["yes"] = False
    assert claim_liveness(claim, lock_is_held, now + 1) == LEASED
    assert claim_liveness(claim, lock_is_held, now + CLAIM_LEASE_SECONDS - 0.1) == LEASED
    assert claim_liveness(claim, lock_is_held, now + CLAIM_LEASE_SECONDS) == STALE
    assert claim_liveness(claim, lock_is_held, now - 5) == STALE  # renewed "in the future": a clock went back
    state.root.rename(tmp_path / "moved")  # kept, so that the new directory cannot reuse its inode
    state.root.mkdir()  # the same path, another directory: not the fleet that claimed
    locked["yes"] = True
    assert claim_liveness(claim, lock_is_held, now + 1) == STALE


@LINUX
@pytest.mark.timeout(150)
def test_down_gives_the_hermes_homes_back_at_once(fleet, tmp_path):
    fleet.write_manifest({"alpha": None})
    fleet.apply()
    a_pid = fleet.wait_running("alpha")
    claim = fleet.profile_home("alpha") / ".hermes-fleet-claim.json"
    wait_until(claim.exists, 10, what="the first fleet's claim")
    down = fleet.cli("down", "--timeout", "15s")
    assert down.returncode == 0, fleet.explain(down)
    fleet.wait_gone(a_pid)
    wait_until(lambda: fleet.controller_pid() is None, 15, what="the first fleet's controller to stop")
    assert not claim.exists()
    other = second_fleet(tmp_path, fleet.home)
    try:
        other.write_manifest({"alpha": None})
        other.apply()
        other.wait_running("alpha")
        assert not [e for e in other.journal("alpha") if e.kind == "claim_taken_over"]
    finally:
        other.cleanup()


@LINUX
@pytest.mark.timeout(150)
def test_a_dead_controllers_claim_holds_for_its_lease_then_is_taken_over_with_a_journal_entry(fleet, tmp_path):
    """A controller killed (or being restarted by its service manager) keeps its Hermes homes for the lease:
    another fleet over the same home reports a conflict meanwhile, and takes the home over once it lapsed."""
    fleet.write_manifest({"alpha": None})
    fleet.apply()
    a_pid = fleet.wait_running("alpha")
    claim = fleet.profile_home("alpha") / ".hermes-fleet-claim.json"
    wait_until(claim.exists, 10, what="the first fleet's claim")
    fleet.kill9(fleet.controller_pid())
    fleet.kill9(a_pid)  # nothing runs in the home: only the claim speaks for the first fleet
    other = second_fleet(tmp_path, fleet.home)
    try:
        other.write_manifest({"alpha": None})
        result = other.apply(expect=None)
        assert result.returncode == 1, other.explain(result)
        note = other.profiles()["alpha"]["note"]
        assert "owned_by_other_fleet" in note and str(fleet.state) in note and "lapses at" in note, note
        assert other.pid("alpha") is None and other.marked_pids("alpha") == []
        data = json.loads(claim.read_text())
        claim.write_text(json.dumps({**data, "renewed_at": time.time() - CLAIM_LEASE_SECONDS - 1}))
        other.apply()
        other.wait_running("alpha")
        taken = [e for e in other.journal("alpha") if e.kind == "claim_taken_over"]
        assert len(taken) == 1 and str(fleet.state) in taken[0].message
    finally:
        other.cleanup()


# -- live: two applies at once ---------------------------------------------------------------------

@LINUX
@pytest.mark.timeout(150)
def test_superseded_apply_exits_non_zero_and_names_the_newer_generation(fleet, tmp_path):
    # The first manifest cannot converge quickly (its second spawn waits out a long stagger), so the
    # second apply always lands while the first one is still waiting.
    fleet.write_manifest({"alpha": None, "beta": None}, stagger="40s")
    first_manifest = fleet.manifest
    argv = [sys.executable, "-m", "fleet.cli.main", "apply", "--timeout", "60s", "--state-dir", str(fleet.state),
            "-f", str(first_manifest)]
    first = subprocess.Popen(argv, cwd=str(tmp_path), env=fleet.env(), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        def generation():
            from fleet.store.db import Store, StoreError
            if not (fleet.state / "fleet.db").exists():
                return None
            try:
                store = Store(fleet.state / "fleet.db", readonly=True)
            except StoreError:  # still being created by the first apply
                return None
            try:
                gen = store.current_generation()
                return gen.generation if gen else None
            except sqlite3.Error:  # the schema is still being created
                return None
            finally:
                store.close()
        wait_until(lambda: generation() == 1, 30, what="the first apply to record generation 1")
        fleet.manifest = tmp_path / "second.yaml"
        fleet.write_manifest({"gamma": None})
        fleet.apply()
        out, err = first.communicate(timeout=60)
        assert first.returncode == SUPERSEDED_EXIT, (out, err)
        assert "generation 1 superseded by generation 2" in err, err
        assert "second.yaml" in err, err
        assert "Converged" not in out
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
