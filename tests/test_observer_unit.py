"""The observer against a fake platform (tests/fakes.py), a temporary state directory and a real Store: what
it makes of a record (the identity verdicts), which processes it adopts and from where, what it reports as
orphans or duplicates, and that a protected process never becomes a profile's gateway."""

from __future__ import annotations

import json
import os

import pytest
from factories import NOW, ROOT, profile_spec, with_changes
from fakes import OTHER_UID, platform, state, store  # noqa: F401

from fleet.observe import hermes_files as hf
from fleet.observe import identity
from fleet.observe.model import Orphan
from fleet.observe.observer import Observer
from fleet.platform.base import ProcessInfo
from fleet.spec.markers import SPEC_HASH_ENV
from fleet.spec.model import DRIVER_PROCESS
from fleet.store.layout import StateDir
from fleet.store.records import PidRecord, write_record

GATEWAY = 5000
SPEC = profile_spec("alpha", driver=DRIVER_PROCESS)


def observe(state, store, platform, *specs, scan: bool = False):
    return Observer(state, store, platform).observe({s.name: s for s in specs or (SPEC,)}, now=NOW, scan=scan)


def ours(state: StateDir, name: str = "alpha") -> dict[str, str]:
    return {**identity.markers(name, str(state.root)), SPEC_HASH_ENV: "v1:running"}


def record_naming(state: StateDir, info: ProcessInfo, *, start_ticks: int | None = None) -> None:
    write_record(state.record("alpha"), PidRecord(
        profile="alpha", pid=info.pid, start_ticks=info.start_ticks if start_ticks is None else start_ticks,
        create_time=info.create_time, spec_hash=SPEC.spec_hash, started_at=NOW - 60.0, controller_pid=1, epoch=1))


# -- what a record is worth ------------------------------------------------------------------------

def marked_gateway(platform, state):
    record_naming(state, platform.run_stranger(GATEWAY, SPEC.command, ours(state)))


def our_child(platform, state):
    pid = platform.spawn_detached(list(SPEC.command), ours(state), "/", "log")
    record_naming(state, platform.process_info(pid))


def ended(platform, state):
    marked_gateway(platform, state)
    platform.end(GATEWAY)


def reused(platform, state):
    info = platform.run_stranger(GATEWAY, ("/usr/bin/vim",), ours(state))
    record_naming(state, info, start_ticks=info.start_ticks - 1)


def another_users(platform, state):
    record_naming(state, platform.run_stranger(GATEWAY, SPEC.command, ours(state), uid=OTHER_UID))


def unmarked(platform, state):
    record_naming(state, platform.run_stranger(GATEWAY, SPEC.command, {"PATH": "/bin"}))


def unreadable_environment(platform, state):
    record_naming(state, platform.run_stranger(GATEWAY, SPEC.command, None))


def marked_for_another_profile(platform, state):
    record_naming(state, platform.run_stranger(GATEWAY, SPEC.command, ours(state, "beta")))


def not_json(platform, state):
    state.record("alpha").write_text("{not json")


@pytest.mark.parametrize("arrange, verdict", [
    (marked_gateway, "alive"), (our_child, "alive"), (ended, "dead"), (reused, "reused"),
    (another_users, "foreign"), (unmarked, "unrelated"), (unreadable_environment, "unrelated"),
    (marked_for_another_profile, "unrelated"), (not_json, "corrupt"),
])
def test_a_record_is_judged_by_the_identity_rule(state, store, platform, arrange, verdict):
    arrange(platform, state)

    obs = observe(state, store, platform).get("alpha")

    assert obs.record_verdict == verdict
    alive = verdict == "alive"
    assert (obs.process is not None) == alive
    assert (obs.record_problem is None) == (verdict in ("alive", "dead"))  # a dead gateway's record is true
    if alive:
        assert obs.process.source == "record" and obs.process.spec_hash == SPEC.spec_hash
    assert platform.signalled() == [] and platform.scans == 0  # a cheap pass: records only, nothing touched


@pytest.mark.parametrize("pid", [1, os.getpid()], ids=["init", "the controller"])
def test_a_protected_pid_never_becomes_a_profiles_process(state, store, platform, pid):
    platform.protected[pid] = "never signalled"
    info = platform.run_stranger(pid, SPEC.command, ours(state))
    record_naming(state, info)

    obs = observe(state, store, platform, scan=True)

    alpha = obs.get("alpha")
    assert alpha.record_verdict == "foreign" and alpha.process is None
    assert "never signalled" in alpha.record_problem
    assert all(o.pid != pid or o.reason.startswith("unproven") for o in obs.orphans)


# -- adoption ---------------------------------------------------------------------------------------

def test_the_scan_adopts_an_unrecorded_process_by_its_markers(state, store, platform):
    platform.run_stranger(GATEWAY, SPEC.command, ours(state))

    cheap = observe(state, store, platform)
    scanned = observe(state, store, platform, scan=True)

    assert cheap.get("alpha").process is None  # without a record, only a scan finds it
    proc = scanned.get("alpha").process
    assert (proc.pid, proc.source, proc.spec_hash) == (GATEWAY, "env_marker", "v1:running")
    assert scanned.orphans == ()


def test_the_scan_adopts_a_process_by_the_profiles_match_pattern(state, store, platform):
    spec = with_changes(SPEC, match=r"gateway\.sh alpha$")
    platform.run_stranger(GATEWAY, spec.command, {"PATH": "/bin"})

    proc = observe(state, store, platform, spec, scan=True).get("alpha").process

    assert (proc.pid, proc.source, proc.spec_hash) == (GATEWAY, "match", None)


@pytest.mark.parametrize("env", [{}, None], ids=["empty", "unreadable"])
def test_an_environment_that_proves_nothing_overrides_a_matching_command_line(state, store, platform, env):
    spec = with_changes(SPEC, match=r"gateway\.sh alpha$")
    platform.run_stranger(GATEWAY, spec.command, env)  # non-dumpable, `env -i`, or mid-exit

    obs = observe(state, store, platform, spec, scan=True)

    assert obs.get("alpha").process is None
    assert obs.orphans == (Orphan(GATEWAY, "alpha", spec.command, "unproven (match)"),)


def hermes_gateway(platform, state, tmp_path, *, lock_held: bool):
    spec = with_changes(profile_spec("alpha"), hermes_home=str(tmp_path / "home"))
    os.makedirs(spec.hermes_home)
    info = platform.run_stranger(GATEWAY, spec.command, {"HERMES_HOME": ROOT})
    (tmp_path / "home" / hf.GATEWAY_PID).write_text(json.dumps(
        {"pid": info.pid, "start_time": info.start_ticks, "argv": list(spec.command)}))
    if lock_held:
        platform.held_locks.add(os.path.join(spec.hermes_home, hf.GATEWAY_LOCK))
    return spec


def test_a_hermes_gateway_is_adopted_from_its_pid_file_while_its_lock_is_held(state, store, platform, tmp_path):
    spec = hermes_gateway(platform, state, tmp_path, lock_held=True)

    proc = observe(state, store, platform, spec).get("alpha").process

    assert (proc.pid, proc.source) == (GATEWAY, "hermes_pidfile")
    assert platform.scans == 0


def test_a_hermes_gateway_without_its_lock_is_reported_never_adopted(state, store, platform, tmp_path):
    spec = hermes_gateway(platform, state, tmp_path, lock_held=False)

    obs = observe(state, store, platform, spec, scan=True)

    assert obs.get("alpha").process is None
    assert obs.orphans == (Orphan(GATEWAY, "alpha", spec.command, "unproven (cmdline)"),)


def test_a_gateway_that_ends_during_the_scan_is_neither_reported_nor_adopted(state, store, platform, tmp_path):
    """A second gateway of a home gives up at once; if it ends between the listing of the processes and the
    reading of its environment, it is gone: no warning about it, no adoption of it."""
    spec = hermes_gateway(platform, state, tmp_path, lock_held=False)
    listed = platform.process_environ

    def ends_before_read(pid):
        if platform.scans and pid in platform.processes:  # listed by the scan, gone when the scan reads it
            platform.end(pid)
        return listed(pid)

    platform.process_environ = ends_before_read

    obs = observe(state, store, platform, spec, scan=True)

    assert obs.get("alpha").process is None
    assert obs.orphans == ()


def test_a_live_gateway_whose_environment_cannot_be_read_is_still_reported(state, store, platform, tmp_path):
    spec = hermes_gateway(platform, state, tmp_path, lock_held=False)
    platform.process_environ = lambda pid: None

    obs = observe(state, store, platform, spec, scan=True)

    assert obs.orphans == (Orphan(GATEWAY, "alpha", spec.command, "unproven (cmdline)"),)


# -- orphans and duplicates ------------------------------------------------------------------------

def test_the_oldest_of_two_marked_gateways_is_adopted_and_the_other_reported_a_duplicate(state, store, platform):
    platform.run_stranger(GATEWAY + 1, SPEC.command, ours(state), create_time=NOW - 10.0)
    platform.run_stranger(GATEWAY, SPEC.command, ours(state), create_time=NOW - 20.0)
    platform.run_stranger(GATEWAY + 2, ("sleep", "5"), ours(state), ppid=GATEWAY)  # the gateway's own child

    obs = observe(state, store, platform, scan=True)

    assert obs.get("alpha").process.pid == GATEWAY
    assert obs.orphans == (Orphan(GATEWAY + 1, "alpha", SPEC.command, "duplicate"),)


def test_a_marked_process_beside_a_recorded_gateway_is_a_duplicate(state, store, platform):
    marked_gateway(platform, state)
    platform.run_stranger(GATEWAY + 1, SPEC.command, ours(state))

    obs = observe(state, store, platform, scan=True)

    assert obs.get("alpha").process.pid == GATEWAY
    assert obs.orphans == (Orphan(GATEWAY + 1, "alpha", SPEC.command, "duplicate"),)


def test_a_marked_process_of_a_profile_nobody_manages_is_reported_unmanaged(state, store, platform):
    platform.run_stranger(GATEWAY, ("/srv/fleet/gateway.sh", "ghost"), ours(state, "ghost"))

    obs = observe(state, store, platform, scan=True)

    assert "ghost" not in obs.profiles
    assert obs.orphans == (Orphan(GATEWAY, "ghost", ("/srv/fleet/gateway.sh", "ghost"), "unmanaged (env_marker)"),)


def test_a_process_of_another_fleet_is_neither_adopted_nor_reported(state, store, platform):
    platform.run_stranger(GATEWAY, SPEC.command, identity.markers("alpha", "/elsewhere/state"))

    obs = observe(state, store, platform, scan=True)

    assert obs.get("alpha").process is None and obs.orphans == ()


# -- a heartbeat its directory refused -------------------------------------------------------------

def test_a_refusal_is_remembered_until_the_directory_takes_writes_again_then_from_that_moment(
        state, store, platform, monkeypatch):
    """The limit a gateway gets to beat again starts when a probe first finds its directory writable, not at the
    last refusal seen: the directory may have taken writes again only a moment before that probe."""
    from fleet.observe import observer as observer_module
    our_child(platform, state)
    state.state_file("alpha").write_text(json.dumps({"updated_at": "2000-01-01T00:00:00Z", "state": "running"}))
    refusal: list[str | None] = ["read-only file system"]
    monkeypatch.setattr(observer_module, "write_refusal", lambda directory: refusal[0])
    observer = Observer(state, store, platform)

    def blocked(at: float):
        return observer.observe({"alpha": SPEC}, now=at, scan=False).get("alpha").heartbeat_blocked

    assert blocked(NOW) == observer_module.WriteRefusal(NOW, "read-only file system")
    assert blocked(NOW + 1) == observer_module.WriteRefusal(NOW + 1, "read-only file system")
    refusal[0] = None
    lifted = observer_module.WriteRefusal(NOW + 3, "read-only file system", lifted=True)
    assert blocked(NOW + 3) == lifted
    assert blocked(NOW + 9) == lifted  # a gateway silent after the lift is judged a limit later, not excused forever
    refusal[0] = "no space left"
    assert blocked(NOW + 10) == observer_module.WriteRefusal(NOW + 10, "no space left")
