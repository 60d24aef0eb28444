"""fleet.platform.windows on any OS: spawn flags and the breakaway retry, taskkill through
the runner, the lock probe, and psutil-based identity (psutil and Popen replaced)."""

from __future__ import annotations

import errno
import os
import subprocess

import psutil
import pytest

import fleet.platform.windows as win
from fleet.platform.base import SignalRefused
from fleet.platform.windows import (
    CREATE_BREAKAWAY_FROM_JOB, CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, DETACHED_PROCESS, LK_NBLCK, LK_UNLCK,
    LOCK_PROBE_OFFSET, SPAWN_FLAGS, WindowsPlatform,
)

try:
    from test_service_fakes import RecordingRunner, failed, ok
except ImportError:
    from tests.test_service_fakes import RecordingRunner, failed, ok


class FakePopen:
    def __init__(self, fail_with: list[OSError] | None = None):
        self.calls: list[tuple[list[str], dict]] = []
        self.fail_with = list(fail_with or [])

    def __call__(self, argv, **kwargs):
        self.calls.append((argv, kwargs))
        if self.fail_with:
            raise self.fail_with.pop(0)
        return type("P", (), {"pid": 4242})()


def winerror(code: int) -> OSError:
    exc = OSError(errno.EACCES, "Access is denied")
    exc.winerror = code
    return exc


def test_spawn_uses_all_four_detach_flags_and_the_log(tmp_path):
    popen = FakePopen()
    platform = WindowsPlatform(popen=popen, runner=RecordingRunner())
    log = tmp_path / "logs" / "alpha.log"
    pid = platform.spawn_detached(["C:\\py\\pythonw.exe", "-m", "gw"], {"A": "1"}, str(tmp_path), str(log))
    assert pid == 4242
    (argv, kwargs), = popen.calls
    assert kwargs["creationflags"] == DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW | CREATE_BREAKAWAY_FROM_JOB
    assert SPAWN_FLAGS == 0x08 | 0x200 | 0x08000000 | 0x01000000
    assert kwargs["stdin"] is subprocess.DEVNULL and kwargs["stderr"] is subprocess.STDOUT
    assert kwargs["stdout"].name == str(log) and kwargs["stdout"].closed  # opened for the spawn, then closed
    assert kwargs["env"] == {"A": "1"} and kwargs["cwd"] == str(tmp_path) and kwargs["close_fds"] is True
    assert log.exists()


def test_spawn_retries_once_without_breakaway_when_the_job_forbids_it(tmp_path):
    popen = FakePopen(fail_with=[winerror(5)])
    warnings: list[str] = []
    platform = WindowsPlatform(popen=popen, runner=RecordingRunner(), warn=warnings.append)
    assert platform.spawn_detached(["gw.exe"], {}, str(tmp_path), str(tmp_path / "gw.log")) == 4242
    assert [kw["creationflags"] for _, kw in popen.calls] == [SPAWN_FLAGS, SPAWN_FLAGS & ~CREATE_BREAKAWAY_FROM_JOB]
    assert len(warnings) == 1 and "breakaway" in warnings[0]


def test_other_spawn_errors_are_not_retried(tmp_path):
    popen = FakePopen(fail_with=[winerror(2)])
    platform = WindowsPlatform(popen=popen, runner=RecordingRunner())
    with pytest.raises(OSError):
        platform.spawn_detached(["missing.exe"], {}, str(tmp_path), str(tmp_path / "gw.log"))
    assert len(popen.calls) == 1


def test_request_stop_sends_nothing():
    runner, popen = RecordingRunner(), FakePopen()
    assert WindowsPlatform(popen=popen, runner=runner).request_stop(1234) is None
    assert runner.calls == [] and popen.calls == []


MARKERS = {"HERMES_FLEET_PROFILE": "alpha", "HERMES_FLEET_STATE_DIR": "C:\\fleet"}


class FakeTreeProc:
    """A process of a fake tree: its environment and whether kill() reached it."""

    def __init__(self, pid, env=None, children=()):
        self.pid, self.env, self._children, self.killed = pid, env, list(children), False

    def children(self, recursive=False):
        out = []
        for c in self._children:
            out += [c] + (c.children(recursive=True) if recursive else [])
        return out

    def environ(self):
        if self.env is None:
            raise psutil.AccessDenied(self.pid)
        return self.env

    def kill(self):
        self.killed = True


def fake_tree(monkeypatch, root):
    procs = {root.pid: root, **{c.pid: c for c in root.children(recursive=True)}}
    monkeypatch.setattr(win.psutil, "Process", lambda pid: procs[pid])
    monkeypatch.setattr(WindowsPlatform, "never_signal", lambda self, pid: None)
    return procs


def test_kill_tree_kills_the_root_by_taskkill_without_t_and_only_marked_descendants(monkeypatch):
    marked = FakeTreeProc(11, dict(MARKERS))
    other_profile = FakeTreeProc(12, {**MARKERS, "HERMES_FLEET_PROFILE": "beta"})
    unreadable = FakeTreeProc(13, None)
    bare = FakeTreeProc(14, {"PATH": "x"}, children=[FakeTreeProc(15, dict(MARKERS))])
    fake_tree(monkeypatch, FakeTreeProc(1234, dict(MARKERS), [marked, other_profile, unreadable, bare]))
    runner = RecordingRunner(lambda args: ok(args, "SUCCESS"))
    WindowsPlatform(runner=runner).kill_tree(1234, MARKERS)
    assert runner.calls == [("taskkill", "/F", "/PID", "1234")]  # never /T: the whole tree is not ours
    assert marked.killed and bare.children()[0].killed
    assert not other_profile.killed and not unreadable.killed and not bare.killed


def test_kill_tree_of_a_gone_process_is_fine_and_a_real_failure_raises(monkeypatch):
    fake_tree(monkeypatch, FakeTreeProc(1234, dict(MARKERS)))
    gone = RecordingRunner(lambda args: failed(args, 128, 'ERROR: The process "1234" not found.'))
    WindowsPlatform(runner=gone).kill_tree(1234, MARKERS)
    denied = RecordingRunner(lambda args: failed(args, 1, "ERROR: Access is denied."))
    monkeypatch.setattr(psutil, "pid_exists", lambda pid: True)
    with pytest.raises(OSError, match="Access is denied"):
        WindowsPlatform(runner=denied).kill_tree(1234, MARKERS)


@pytest.mark.parametrize("which", ["idle", "system", "itself"])
def test_kill_tree_refuses_system_processes_and_itself_before_any_taskkill(which):
    pid = {"idle": 0, "system": 4, "itself": os.getpid()}[which]  # ids stay stable across xdist workers
    runner = RecordingRunner(lambda args: ok(args, "SUCCESS"))
    with pytest.raises(SignalRefused):
        WindowsPlatform(runner=runner).kill_tree(pid, MARKERS)
    assert runner.calls == []


def test_never_signal_refuses_ancestors_and_other_users(monkeypatch):
    me = os.getpid()

    class P:
        def __init__(self, pid):
            self.pid = pid

        def parents(self):
            return [P(7000)]

        def username(self):
            return "DESKTOP\\zoe" if self.pid in (me, 7000, 7001) else "NT AUTHORITY\\SYSTEM"

        def cmdline(self):
            return ["gw.exe"]

        def exe(self):
            return "C:\\gw.exe"

    monkeypatch.setattr(win.psutil, "Process", P)
    platform = WindowsPlatform(runner=RecordingRunner())
    assert "ancestor" in platform.never_signal(7000)
    assert "another user" in platform.never_signal(7002)
    assert platform.never_signal(7001) is None


def test_lock_probe_says_held_when_the_probe_byte_is_locked(tmp_path):
    lock = tmp_path / ".supervisor.lock"
    lock.write_bytes(b"")
    seen = []

    def locking(fd, mode, nbytes):
        seen.append((os.lseek(fd, 0, os.SEEK_CUR), mode, nbytes))
        raise OSError(errno.EACCES, "locked")

    assert WindowsPlatform(locking=locking).lock_is_held(str(lock)) is True
    assert seen == [(LOCK_PROBE_OFFSET, LK_NBLCK, 1)]


def test_lock_probe_releases_what_it_got_when_free(tmp_path):
    lock = tmp_path / ".supervisor.lock"
    lock.write_bytes(b"")
    seen = []

    def locking(fd, mode, nbytes):
        seen.append((os.lseek(fd, 0, os.SEEK_CUR), mode, nbytes))

    assert WindowsPlatform(locking=locking).lock_is_held(str(lock)) is False
    assert seen == [(LOCK_PROBE_OFFSET, LK_NBLCK, 1), (LOCK_PROBE_OFFSET, LK_UNLCK, 1)]


def test_lock_probe_of_a_missing_file_is_not_held(tmp_path):
    assert WindowsPlatform(locking=lambda *a: None).lock_is_held(str(tmp_path / "none.lock")) is False


class FakeProc:
    def __init__(self, pid):
        self.pid = pid

    def oneshot(self):
        import contextlib

        return contextlib.nullcontext()

    def create_time(self):
        return 1_700_000_000.126

    def username(self):
        return "DESKTOP\\zoe"

    def cmdline(self):
        return ["C:\\py\\pythonw.exe", "-m", "gw"]

    def status(self):
        return "running"

    def ppid(self):
        return 4


def test_process_info_from_psutil(monkeypatch):
    monkeypatch.setattr(win.psutil, "Process", FakeProc)
    info = WindowsPlatform().process_info(77)
    assert info.pid == 77 and info.start_ticks == 170_000_000_013 and info.create_time == 1_700_000_000.126
    assert info.uid is None and info.username == "DESKTOP\\zoe" and info.ppid == 4
    assert info.cmdline == ("C:\\py\\pythonw.exe", "-m", "gw") and info.alive


def test_process_info_of_a_gone_process(monkeypatch):
    def gone(pid):
        raise psutil.NoSuchProcess(pid)

    monkeypatch.setattr(win.psutil, "Process", gone)
    assert WindowsPlatform().process_info(77) is None


def test_windows_has_no_uid():
    assert WindowsPlatform().current_uid() is None
    assert WindowsPlatform.name == "windows"
