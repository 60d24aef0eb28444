"""Hostile state directory: corrupt and truncated PID records and fleet.db, records that name
unrelated processes (PID reuse, forgery), symlinked records, markers, lock, holder and state
directory, unsafe permissions and ownership, and a full disk during writes.

Expected every time: refuse or recover with a clear message (no traceback), never signal a
process that is not a profile's, never follow a symlink, never lose an acknowledged request.
The gateways are the demo's fake `hermes`; decoys are unrelated processes that log every
signal they receive.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet_harness import FleetHarness, alive, fleet  # noqa: F401
from helpers import wait_until
from reliability_support import (
    Decoys, explain, fake_record, fill, fleet_env, no_traceback, run_cli, sweep, symlink_atomic, write_atomic, write_json,
)

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process model (/proc)"),
    pytest.mark.timeout(180),
]

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TWO = {"alpha": None, "beta": None}


@pytest.fixture
def swept():
    """State directories whose processes (if a refusal ever turns into an acceptance) are killed at teardown."""
    states: list[Path] = []
    try:
        yield states
    finally:
        for state in states:
            sweep(state)


@pytest.fixture
def decoys(tmp_path):
    d = Decoys(tmp_path / "decoys")
    try:
        yield d
    finally:
        d.cleanup()


def clean(result: subprocess.CompletedProcess) -> bool:
    return no_traceback(result.stderr) and no_traceback(result.stdout)


def controller_run(state: Path, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    """The lean controller entry point, expected to refuse and exit on its own."""
    return subprocess.run([sys.executable, "-m", "fleet.controller", "--state-dir", str(state)], cwd=str(cwd),
                          env=fleet_env(state), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def journal_for(fleet, profile, kind):
    return [e for e in fleet.journal(profile) if e.kind == kind]


def signalled_pids(fleet) -> set[int]:
    """Every pid the controller says it stopped or killed."""
    return {e.data["pid"] for e in fleet.journal() if e.kind in ("stop_sent", "killed") and e.data}


# -- corrupt records ----------------------------------------------------------------------------------
CORRUPT_FORMS = {
    "empty": lambda rec: b"",
    "truncated": lambda rec: rec[: len(rec) // 2],
    "garbage": lambda rec: bytes(range(256)) * 3,
    "wrong_types": lambda rec: json.dumps({"profile": ["alpha"], "pid": "many", "create_time": {},
                                           "started_at": None, "managed_by": "hermes-fleet"}).encode(),
    "negative_pid": lambda rec: json.dumps({**json.loads(rec), "pid": -5}).encode(),
    "another_tool": lambda rec: json.dumps({**json.loads(rec), "managed_by": "supervisord"}).encode(),
    "json_list": lambda rec: b"[1, 2, 3]",
    "nan_times": lambda rec: json.dumps({**json.loads(rec), "create_time": float("nan"), "start_ticks": None,
                                         "started_at": float("-inf")}).encode(),
    "huge_pid": lambda rec: json.dumps({**json.loads(rec), "pid": 10 ** 30}).encode(),
    "dead_pid": lambda rec: json.dumps({**json.loads(rec), "pid": 4194304 - 1, "start_ticks": 1}).encode(),
    "oversized": lambda rec: b'{"pad": "' + b"x" * (1 << 20) + b'"}',
}

PARSEABLE = ("nan_times", "huge_pid", "dead_pid")  # well-formed, but naming no live process of the profile


def test_corrupt_records_are_reported_then_reclaimed_without_a_restart(fleet):
    names = ("alpha", "beta", "gamma", "delta")
    fleet.write_manifest({n: None for n in names})
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in names}
    good = {n: (fleet.state / f"{n}.pid").read_bytes() for n in names}
    forms = list(CORRUPT_FORMS)
    for start in range(0, len(forms), len(names)):  # a round: one form per profile
        planted = dict(zip(names, forms[start:start + len(names)], strict=False))
        for name, form in planted.items():
            write_atomic(fleet.state / f"{name}.pid", CORRUPT_FORMS[form](good[name]))
        deep = fleet.cli("status", "--deep", "-o", "json")
        assert deep.returncode in (0, 1) and clean(deep), f"{planted}: {explain(deep)}"
        rows = {p["name"]: p for p in json.loads(deep.stdout)["profiles"]}
        for name, form in planted.items():
            checks = {c["probe"]: c for c in rows[name]["checks"]}
            if form not in PARSEABLE:  # an unreadable record is reported as such
                assert checks["record present"]["result"] == "FAIL", (form, checks["record present"])
        table = fleet.cli("status")
        assert table.returncode in (0, 1) and clean(table), explain(table)
        seen = {n: len(journal_for(fleet, n, "reclaimed")) + len(journal_for(fleet, n, "exited")) for n in planted}
        fleet.apply()  # wakes the controller: reclaim the records, adopt the live gateways
        for name, form in planted.items():
            assert len(journal_for(fleet, name, "reclaimed")) + len(journal_for(fleet, name, "exited")) > seen[name], form
            record = fleet.record(name)
            assert record and record["pid"] == pids[name] and record["managed_by"] == "hermes-fleet", (form, record)
    for name, pid in pids.items():
        assert alive(pid) and fleet.pid(name) == pid, name
        assert len(journal_for(fleet, name, "spawned")) == 1, f"{name} was restarted by a corrupt record"
    assert fleet.cli("status").returncode == 0


@pytest.mark.timeout(90)
def test_an_unremovable_record_does_not_stall_the_fleet(fleet):
    fleet.write_manifest(TWO)
    fleet.apply()
    before = fleet.wait_running("beta")
    (fleet.state / "zzz.pid").mkdir()
    try:
        result = fleet.cli("restart", "beta", "--timeout", "6s")
        assert result.returncode == 0, explain(result)
        assert fleet.wait_running("beta", other_than=before)
        assert len(fleet.journal("zzz")) < 50, f"{len(fleet.journal('zzz'))} journal entries for zzz"
    finally:
        (fleet.state / "zzz.pid").rmdir()


@pytest.mark.timeout(120)
def test_record_with_an_infinite_pid_is_reclaimed(fleet):
    fleet.write_manifest(TWO)
    fleet.apply()
    pid = fleet.wait_running("alpha")
    controller = fleet.controller_pid()
    write_atomic(fleet.state / "alpha.pid", b'{"profile": "alpha", "pid": 1e999, "create_time": 1, '
                                            b'"started_at": 1, "managed_by": "hermes-fleet"}')
    status = fleet.cli("status", "-o", "json")
    fleet.apply(expect=None)  # wakes the controller
    assert clean(status), explain(status)
    assert alive(controller) and fleet.controller_pid() == controller, "the controller died"
    assert fleet.pid("alpha") == pid


@pytest.mark.timeout(120)
@pytest.mark.parametrize("form", ["garbage", "forged"])
def test_lost_record_after_a_crash_respawn_never_duplicates(fleet, decoys, form):
    """A profile that crashed once and runs again under a new pid loses its record (corrupted, or forged to name
    another process): the controller must find the live gateway again, not start a second one."""
    d = decoys.start(1)[0]
    fleet.write_manifest({"worker": {"driver": "process",
                                     "command": [sys.executable, str(fleet.command[1]), "gateway", "run"],
                                     "env": {"HOME": str(fleet.tmp / "worker-home")}}})
    fleet.apply()
    first = fleet.wait_pid("worker")
    fleet.kill9(first)
    second = fleet.wait_pid("worker", other_than=first)
    fleet.apply()  # settled: running again after a crash
    if form == "garbage":
        write_atomic(fleet.state / "worker.pid", b"\x00garbage")
    else:
        write_json(fleet.state / "worker.pid", fake_record("worker", d.pid, start_ticks=d.ticks,
                                                           create_time_=d.created, spec_hash=None))
    fleet.apply(expect=None)  # wakes the controller
    time.sleep(1.0)
    fleet.note_pids()
    spawned = [e.data["pid"] for e in journal_for(fleet, "worker", "spawned")]
    assert spawned == [first, second], f"a second gateway was started beside pid {second}: {spawned}"
    assert fleet.pid("worker") == second and alive(second)
    assert decoys.problems() == []


# -- fleet.db damage ----------------------------------------------------------------------------------------
def make_db(state: Path, form: str) -> None:
    state.mkdir(mode=0o700, exist_ok=True)
    db = state / "fleet.db"
    if form == "garbage":
        db.write_bytes(bytes(range(256)) * 40)
    elif form == "empty":
        db.write_bytes(b"")
    else:  # a real store cut short
        from fleet.store.db import Store
        store = Store(db)
        store.journal("test", "a journal entry")
        store.add_request("alpha", "restart")
        store.close()
        with open(db, "r+b") as fh:
            fh.truncate(8192)


@pytest.mark.parametrize("form", ["garbage", "empty", "truncated"])
def test_damaged_store_is_refused_by_writers_and_the_controller(tmp_path, form):
    state = tmp_path / "state"
    make_db(state, form)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\nprofiles:\n  alpha: {driver: process, command: [sleep, '100']}\n")
    try:
        for args in (["apply", "-f", str(manifest), "--no-wait"], ["maintenance", "restart", "alpha", "--reason", "x"]):
            result = run_cli(state, *args, cwd=tmp_path)
            if form == "empty" and result.returncode == 0:
                continue  # an empty file is an empty SQLite database: a fresh store (apply starts the fleet)
            assert result.returncode != 0 and clean(result), f"{args}: {explain(result)}"
            assert "fleet.db" in result.stderr + result.stdout, f"{args}: the message must name the file"
        if form != "empty":
            ctl = controller_run(state, tmp_path)
            assert ctl.returncode == 2 and clean(ctl) and "fleet.db" in ctl.stderr, explain(ctl)
    finally:
        sweep(state)  # what an accepted apply started


@pytest.mark.parametrize("form", ["garbage", "empty", "truncated"])
def test_damaged_store_is_reported_by_readers(tmp_path, form):
    state = tmp_path / "state"
    make_db(state, form)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\nprofiles:\n  alpha: {driver: process, command: [sleep, '100']}\n")
    problems = []
    for args in (["status", "-o", "json"], ["events"], ["diff", "-f", str(manifest)]):
        result = run_cli(state, *args, cwd=tmp_path)
        if not clean(result) or result.returncode not in (1, 2):
            problems.append(f"{args}: {explain(result)}")
    assert not problems, "\n".join(problems)


# -- records naming unrelated processes ------------------------------------------------------------------------
def test_records_naming_unrelated_processes_never_get_them_signalled(fleet, decoys):
    fleet.write_manifest({"alpha": None, "beta": None, "gamma": None})
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in ("alpha", "beta", "gamma")}
    d = decoys.start(4)
    state = fleet.state
    # PID reuse: alpha's record names a decoy with another start time.
    write_json(state / "alpha.pid", fake_record("alpha", d[0].pid, start_ticks=(d[0].ticks or 0) + 7,
                                                create_time_=d[0].created - 1000, spec_hash="v1:stale"))
    # Forgery: beta's record names a decoy with its true start time and an outdated spec (a replace would signal it).
    write_json(state / "beta.pid", fake_record("beta", d[1].pid, start_ticks=d[1].ticks, create_time_=d[1].created,
                                               spec_hash="v1:stale"))
    # No such profile: a valid record naming a decoy.
    write_json(state / "ghost.pid", fake_record("ghost", d[2].pid, start_ticks=d[2].ticks, create_time_=d[2].created,
                                                spec_hash=None))
    # PID 1, with a wrong start time, for a profile of the manifest.
    write_json(state / "gamma.pid", fake_record("gamma", 1, start_ticks=999999999, create_time_=1.0,
                                                spec_hash="v1:stale"))
    # Hermes' own gateway.pid naming a decoy with its true start time.
    write_json(fleet.profile_home("alpha") / "gateway.pid",
               {"pid": d[3].pid, "kind": "hermes-gateway", "start_time": d[3].ticks,
                "argv": ["hermes", "-p", "alpha", "gateway", "run", "--external-supervisor"]})
    fleet.apply()
    for name, pid in pids.items():
        assert fleet.pid(name) == pid and alive(pid), f"{name}: {fleet.record(name)}"
        assert len(journal_for(fleet, name, "spawned")) == 1, f"{name} was restarted by a hostile record"
    # Operations that signal processes: only the gateways are ever signalled.
    result = fleet.cli("restart", "alpha", "beta", "--timeout", "30s")
    assert result.returncode == 0, explain(result)
    result = fleet.cli("restart", "gamma", "--force", "--timeout", "30s")
    assert result.returncode == 0, explain(result)
    fleet.cli("down", "--timeout", "30s")
    foreign = {x.pid for x in d} | {1}
    assert not signalled_pids(fleet) & foreign, signalled_pids(fleet) & foreign
    assert decoys.problems() == [], decoys.problems()


# -- symlinks -------------------------------------------------------------------------------------------------
def test_symlinked_record_and_holder_are_not_followed(fleet, decoys, tmp_path):
    fleet.write_manifest(TWO)
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in TWO}
    d = decoys.start(2)
    outside = tmp_path / "outside"
    outside.mkdir()
    record_target = outside / "record.json"
    record_bytes = (json.dumps(fake_record("alpha", d[0].pid, start_ticks=d[0].ticks, create_time_=d[0].created,
                                           spec_hash="v1:stale")) + "\n").encode()
    record_target.write_bytes(record_bytes)
    symlink_atomic(fleet.state / "alpha.pid", record_target)
    status = fleet.cli("status", "--deep", "alpha", "-o", "json")
    assert status.returncode in (0, 1) and clean(status), explain(status)
    checks = {c["probe"]: c for c in json.loads(status.stdout)["profiles"][0]["checks"]}
    assert checks["record present"]["result"] == "FAIL" and "symlink" in checks["record present"]["detail"]
    fleet.apply()
    assert record_target.read_bytes() == record_bytes, "the symlink's target was written"
    assert not (fleet.state / "alpha.pid").is_symlink() and fleet.pid("alpha") == pids["alpha"]
    assert len(journal_for(fleet, "alpha", "spawned")) == 1
    # The holder file: a symlink to a holder naming a decoy. `controller stop` must not signal it.
    holder_target = outside / "holder.json"
    holder_target.write_text(json.dumps({"pid": d[1].pid, "create_time": d[1].created, "version": "0",
                                         "started_at": time.time(), "epoch": 99}))
    real_holder = fleet.holder()
    symlink_atomic(fleet.state / ".supervisor.json", holder_target)
    for args in (["controller", "stop"], ["status"]):
        result = fleet.cli(*args)
        assert clean(result), explain(result)
    assert decoys.problems() == [], decoys.problems()
    assert alive(real_holder["pid"]), "the real controller was not asked to stop through a symlinked holder"
    os.unlink(fleet.state / ".supervisor.json")
    write_json(fleet.state / ".supervisor.json", real_holder)


def test_symlinked_stop_marker_and_state_file_are_replaced_not_written_through(fleet, tmp_path):
    fleet.write_manifest({"alpha": None, "worker": {"driver": "process",
                                                      "command": [sys.executable, str(fleet.command[1]), "gateway",
                                                                  "run"],
                                                      "env": {"HOME": str(tmp_path / "worker-home")}}})
    fleet.apply()
    pids = {n: fleet.wait_pid(n) for n in ("alpha", "worker")}
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in pids:
        # Dangling links: a gateway that checks its stop file must not see one; a write through the link would create it.
        symlink_atomic(fleet.state / f"{name}.stop", outside / f"{name}-stop-target")
    precious = outside / "precious-state"
    precious.write_text("precious\n")
    symlink_atomic(fleet.state / "worker.state.json", precious)
    result = fleet.cli("restart", "alpha", "worker", "--timeout", "30s")
    assert result.returncode == 0, explain(result)
    for name, pid in pids.items():
        assert fleet.wait_pid(name, other_than=pid)
        assert not (outside / f"{name}-stop-target").exists(), f"{name}: the stop marker was written through a symlink"
    assert precious.read_text() == "precious\n"


def test_symlinked_lock_is_refused_and_left_intact(tmp_path, swept):
    state = tmp_path / "state"
    swept.append(state)
    state.mkdir(mode=0o700)
    target = tmp_path / "precious"
    target.write_text("precious\n")
    os.symlink(target, state / ".supervisor.lock")
    ctl = controller_run(state, tmp_path)
    assert ctl.returncode != 0 and clean(ctl), explain(ctl)
    assert ".supervisor.lock" in ctl.stderr, ctl.stderr
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\nprofiles:\n  alpha: {driver: process, command: [sleep, '100']}\n")
    for args in (["apply", "-f", str(manifest), "--no-wait"], ["status"]):
        result = run_cli(state, *args, cwd=tmp_path)
        assert clean(result) and result.returncode != 0, explain(result)
    assert target.read_text() == "precious\n"
    assert (state / ".supervisor.lock").is_symlink()


def test_symlinked_state_directory_is_refused(tmp_path, swept):
    real = tmp_path / "real-state"
    real.mkdir(mode=0o700)
    link = tmp_path / "state"
    swept.append(link)
    os.symlink(real, link)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\nprofiles:\n  alpha: {driver: process, command: [sleep, '100']}\n")
    for args in (["apply", "-f", str(manifest), "--no-wait"], ["status"],
                 ["maintenance", "restart", "alpha", "--reason", "x"]):
        result = run_cli(link, *args, cwd=tmp_path)
        assert result.returncode == 2 and clean(result), explain(result)
        assert "symlink" in result.stderr + result.stdout, explain(result)
    ctl = controller_run(link, tmp_path)
    assert ctl.returncode == 2 and "symlink" in ctl.stderr, explain(ctl)
    assert os.listdir(real) == []


def test_symlinked_adopt_log_is_not_written_through(fleet, tmp_path):
    fleet.write_manifest({"alpha": None})
    fleet.apply()
    fleet.wait_running("alpha")
    target = tmp_path / "precious"
    target.write_text("precious\n")
    (fleet.state / "alpha.adopt.log").unlink(missing_ok=True)
    os.symlink(target, fleet.state / "alpha.adopt.log")
    result = fleet.cli("controller", "stop")
    assert result.returncode == 0, explain(result)
    fleet.apply()  # a new controller adopts alpha (recorded by the previous epoch)
    assert journal_for(fleet, "alpha", "adopted")
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("what", ["controller_log", "logs_folder"])
def test_symlinked_logs_are_not_written_through(tmp_path, what):
    harness = FleetHarness(tmp_path)
    harness._popens = []
    try:
        harness.state.mkdir(mode=0o700)
        outside = tmp_path / "outside"
        outside.mkdir()
        if what == "controller_log":
            (harness.state / "logs").mkdir(mode=0o700)
            (outside / "precious").write_text("precious\n")
            os.symlink(outside / "precious", harness.state / "logs" / "controller.log")
        else:
            os.symlink(outside, harness.state / "logs")
        harness.write_manifest({"alpha": None})
        result = harness.apply(expect=None)
        assert clean(result), harness.explain(result)
        if what == "controller_log":
            assert (outside / "precious").read_text() == "precious\n"
        else:
            assert os.listdir(outside) == [], os.listdir(outside)
    finally:
        harness.cleanup()


def symlinked_store(tmp_path: Path) -> tuple[Path, Path]:
    """A state directory whose fleet.db is a symlink to another fleet's store."""
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    from fleet.store.db import Store
    store = Store(other / "fleet.db")
    store.journal("foreign", "an entry of another fleet")
    store.close()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.symlink(other / "fleet.db", state / "fleet.db")
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\nprofiles:\n  alpha: {driver: process, command: [sleep, '100']}\n")
    return state, manifest


def test_symlinked_store_is_refused_by_writers(tmp_path):
    state, manifest = symlinked_store(tmp_path)
    try:
        for args in (["apply", "-f", str(manifest), "--no-wait"], ["restart", "alpha", "--no-wait"],
                     ["maintenance", "restart", "alpha", "--reason", "x"]):
            result = run_cli(state, *args, cwd=tmp_path)
            assert result.returncode == 2 and clean(result), explain(result)
            assert "fleet.db" in result.stderr + result.stdout and "symlink" in (result.stderr + result.stdout).lower(), \
                explain(result)
    finally:
        sweep(state)  # in case apply started a controller after all


def test_symlinked_store_is_refused_by_readers(tmp_path):
    state, _ = symlinked_store(tmp_path)
    problems = []
    for args in (["status"], ["events"]):
        result = run_cli(state, *args, cwd=tmp_path)
        if result.returncode != 2 or not clean(result) or "symlink" not in result.stderr.lower():
            problems.append(explain(result))
    assert not problems, "\n".join(problems)


def test_controller_refuses_symlinked_store_with_a_message(tmp_path, swept):
    other = tmp_path / "other.db"
    other.write_bytes(b"")
    state = tmp_path / "state"
    swept.append(state)
    state.mkdir(mode=0o700)
    os.symlink(other, state / "fleet.db")
    ctl = controller_run(state, tmp_path)
    assert ctl.returncode == 2 and clean(ctl) and "fleet.db" in ctl.stderr, explain(ctl)
    assert other.read_bytes() == b""


# -- permissions and ownership ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_state_directory_writable_by_others_is_refused_with_the_chmod_hint(tmp_path, swept, mode):
    state = tmp_path / "state"
    swept.append(state)
    state.mkdir()
    os.chmod(state, mode)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\nprofiles:\n  alpha: {driver: process, command: [sleep, '100']}\n")
    for args in (["apply", "-f", str(manifest), "--no-wait"], ["status"],
                 ["maintenance", "restart", "alpha", "--reason", "x"]):
        result = run_cli(state, *args, cwd=tmp_path)
        assert result.returncode == 2 and clean(result), explain(result)
        assert f"chmod 700 {state}" in result.stderr + result.stdout, explain(result)
    ctl = controller_run(state, tmp_path)
    assert ctl.returncode == 2 and f"chmod 700 {state}" in ctl.stderr, explain(ctl)
    assert os.listdir(state) == [], "nothing may be created in a refused state directory"


@pytest.mark.skipif(not IS_ROOT, reason="needs root to hand the directory to another user")
def test_state_directory_owned_by_another_user_is_refused(tmp_path, swept):
    state = tmp_path / "state"
    swept.append(state)
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)  # nobody
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\nprofiles:\n  alpha: {driver: process, command: [sleep, '100']}\n")
    for args in (["apply", "-f", str(manifest), "--no-wait"], ["status"],
                 ["maintenance", "restart", "alpha", "--reason", "x"]):
        result = run_cli(state, *args, cwd=tmp_path)
        assert result.returncode == 2 and clean(result), explain(result)
        assert "owned by uid 65534" in result.stderr + result.stdout, explain(result)
    ctl = controller_run(state, tmp_path)
    assert ctl.returncode == 2 and "owned by uid 65534" in ctl.stderr, explain(ctl)


# -- a full disk ------------------------------------------------------------------------------------------------------
def test_atomic_writes_on_a_full_disk_keep_the_old_file(tmp_path, monkeypatch):
    """In-process: ENOSPC at write, at fsync or at rename leaves the old record intact and no temp file behind."""
    from fleet.store import files
    from fleet.store.records import PidRecord, read_record, write_record

    path = tmp_path / "alpha.pid"
    old = PidRecord(profile="alpha", pid=1234, start_ticks=5, create_time=1.0, spec_hash="v1:a", started_at=2.0,
                    controller_pid=1, epoch=1)
    write_record(path, old)
    before = path.read_bytes()
    new = PidRecord(profile="alpha", pid=5678, start_ticks=6, create_time=3.0, spec_hash="v1:b", started_at=4.0,
                    controller_pid=1, epoch=2)

    def enospc(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_fdopen = os.fdopen

    class FullFile:  # a file whose writes hit a full disk
        def __init__(self, fd, *args, **kwargs):
            self.fh = real_fdopen(fd, *args, **kwargs)

        def write(self, _data):
            enospc()

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()
            return False

    cases = [("write", "fdopen", FullFile, lambda: write_record(path, new)),
             ("fsync", "fsync", enospc, lambda: files.write_atomic(path, b"{}", durable=True)),
             ("rename", "replace", enospc, lambda: write_record(path, new))]
    for label, attr, fake, action in cases:
        with monkeypatch.context() as m:
            m.setattr(files.os, attr, fake)
            with pytest.raises(OSError) as info:
                action()
            assert info.value.errno == errno.ENOSPC, label
        assert path.read_bytes() == before, label
        assert read_record(path).record == old, label
        assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.pid"], f"{label}: temp file left behind"


def test_a_record_is_written_into_its_spare_when_the_disk_is_full(tmp_path, monkeypatch):
    """In-process: a reclaimed record is kept as the spare; with no free block, the next record (a respawn's or
    an adoption's) goes into the spare's blocks, atomically, and the record it replaces becomes the spare."""
    from fleet.store import records
    from fleet.store.records import PidRecord, read_record, remove_record, spare_of, write_record

    path = tmp_path / "alpha.pid"

    def rec(pid: int) -> PidRecord:
        return PidRecord(profile="alpha", pid=pid, start_ticks=pid, create_time=1.0, spec_hash="v1:a",
                         started_at=2.0, controller_pid=1, epoch=1)

    write_record(path, rec(100))
    inode = path.stat().st_ino
    assert remove_record(path) and not path.exists()
    assert os.stat(spare_of(path)).st_ino == inode

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(records, "write_atomic", full)
    write_record(path, rec(200))  # the respawn: into the spare
    assert read_record(path).record == rec(200) and path.stat().st_ino == inode
    assert not os.path.exists(spare_of(path))
    remove_record(path)
    monkeypatch.undo()  # space back for a while: a respawn written the usual way, beside the spare
    write_record(path, rec(300))
    monkeypatch.setattr(records, "write_atomic", full)
    write_record(path, rec(4000000))  # a rewrite over a live record (an adoption): the old one is the spare
    assert read_record(path).record == rec(4000000) and os.path.exists(spare_of(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".alpha.pid.spare", "alpha.pid"]
    path.unlink()
    os.unlink(spare_of(path))
    with pytest.raises(OSError) as info:  # no spare: the full disk is reported, nothing is pretended
        write_record(path, rec(500))
    assert info.value.errno == errno.ENOSPC and not path.exists()


def test_store_full_keeps_every_acknowledged_request(tmp_path):
    """In-process: SQLite's 'database or disk is full' fails the write that hits it (nothing acknowledged) and
    keeps every write acknowledged before it."""
    from fleet.store.db import Store

    db = tmp_path / "fleet.db"
    store = Store(db)
    acked = [store.add_request(f"p{i}", "restart") for i in range(20)]
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count={pages}")
    refused = 0
    for i in range(20, 2000):
        try:
            acked.append(store.add_request(f"p{i}-" + "x" * 200, "restart"))
        except sqlite3.OperationalError:  # "database or disk is full" (or, see the report, a masking ROLLBACK error)
            refused += 1
            break
    store.close()
    assert refused, "the page limit was never reached"
    reopened = Store(db, readonly=True)
    try:
        present = {r.id for r in reopened.pending_requests()}
    finally:
        reopened.close()
    assert set(acked) <= present


def can_mount_tmpfs(where: Path) -> bool:
    if not IS_ROOT or shutil.which("mount") is None:
        return False
    where.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def full_disk_fleet(tmp_path):
    """A fleet whose state directory lives on a 4 MiB tmpfs (root and mount needed), and a filler."""
    mnt = tmp_path / "small"
    if not can_mount_tmpfs(mnt):
        pytest.skip("needs root and a working `mount -t tmpfs`")
    harness = FleetHarness(tmp_path)
    harness._popens = []
    harness.state = mnt / "state"
    filler = mnt / "filler"
    try:
        yield harness, filler
    finally:
        filler.unlink(missing_ok=True)
        harness.cleanup()
        for _ in range(50):
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


def checkpoint(db: Path) -> None:
    """Fold the WAL into fleet.db and remove it, so that the next write needs new disk space."""
    conn = sqlite3.connect(str(db), timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    assert not (db.parent / "fleet.db-wal").exists() or (db.parent / "fleet.db-wal").stat().st_size == 0


def test_full_disk_loses_nothing_acknowledged_and_recovers(full_disk_fleet):
    fleet, filler = full_disk_fleet
    quiet = {"env": {"FAKE_HERMES_HEARTBEAT_S": "3600"}}  # the gateways write nothing into the state dir
    fleet.write_manifest({"alpha": quiet, "beta": quiet})
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in ("alpha", "beta")}
    result = fleet.cli("maintenance", "restart", "alpha", "--reason", "before the disk filled", "--idle-seconds",
                       "3600", "-o", "json")
    assert result.returncode == 0, explain(result)
    acked = [json.loads(result.stdout)["request"]["id"]]
    records = {n: (fleet.state / f"{n}.pid").read_bytes() for n in pids}
    assert fleet.cli("controller", "stop").returncode == 0
    checkpoint(fleet.state / "fleet.db")
    fill(filler)
    attempts = {}
    for args in (["maintenance", "restart", "beta", "--reason", "while full", "--idle-seconds", "3600", "-o", "json"],
                 ["restart", "beta", "--no-wait"], ["apply", "--no-wait"], ["status"]):
        result = fleet.cli(*args)
        attempts[args[0]] = result.returncode
        if args[0] == "maintenance" and result.returncode == 0:
            acked.append(json.loads(result.stdout)["request"]["id"])
    for name, data in records.items():
        assert (fleet.state / f"{name}.pid").read_bytes() == data, f"{name}'s record changed on a full disk"
        assert alive(pids[name])
    filler.unlink()
    fleet.apply(expect=None)
    fleet.apply(expect=None)
    wait_until(lambda: fleet.controller_pid(), 20, what="a controller after the disk was freed")
    for name, pid in pids.items():
        assert fleet.pid(name) == pid and alive(pid), f"{name} was restarted or lost: {fleet.record(name)}"
    result = fleet.cli("maintenance", "status", "--all", "-o", "json")
    assert result.returncode == 0, explain(result)
    listed = {r["id"] for r in json.loads(result.stdout)["requests"]}
    assert set(acked) <= listed, (acked, listed, attempts)


@pytest.mark.parametrize("wal", ["absent", "in_use"])
def test_full_disk_writers_fail_with_a_clear_message(full_disk_fleet, wal):
    fleet, filler = full_disk_fleet
    quiet = {"env": {"FAKE_HERMES_HEARTBEAT_S": "3600"}}
    fleet.write_manifest({"alpha": quiet})
    fleet.apply()
    fleet.wait_running("alpha")
    assert fleet.cli("controller", "stop").returncode == 0
    db = fleet.state / "fleet.db"
    checkpoint(db)
    reader = None
    if wal == "in_use":  # a write into the WAL, and a reader whose snapshot keeps the WAL from being reset
        writer = sqlite3.connect(str(db), timeout=30)
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA user_version=1")
        reader = sqlite3.connect(str(db), timeout=30, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM journal").fetchone()
        writer.close()
    try:
        fill(filler)
        problems = []
        runs = [fleet.cli(*args) for args in (["maintenance", "restart", "alpha", "--reason", "while full"],
                                              ["restart", "alpha", "--no-wait"], ["apply", "--no-wait"])]
        runs.append(controller_run(fleet.state, fleet.tmp))
        for result in runs:
            text = (result.stdout + result.stderr).lower()
            if not clean(result) or result.returncode == 0 or "move it aside" in text or \
                    not any(word in text for word in ("full", "space")):
                problems.append(explain(result))
        assert not problems, "\n\n".join(problems)
    finally:
        if reader is not None:
            reader.close()
