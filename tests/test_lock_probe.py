"""The lock probe `status` uses (fleet.platform.flock_probe) says what filelock's own attempt would: held by a
lock in this process or in another, free before, after and without a lock file, and it never releases the
holder's lock."""

from __future__ import annotations

import subprocess
import sys

import pytest
from filelock import FileLock, Timeout

from fleet.platform.flock_probe import flock_free
from fleet.store.layout import StateDir
from fleet.store.lock import LockHeld, SupervisorLock, lock_is_free

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock: Windows asks filelock (the probe says None)")

HOLD = r"""
import sys
from filelock import FileLock, Timeout
lock = FileLock(sys.argv[1], timeout=0, thread_local=False)
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_the_probe_agrees_with_filelock(tmp_path):
    path = str(tmp_path / "x.lock")
    assert flock_free(path) is True  # no file: nobody holds it
    mine = FileLock(path, timeout=0, thread_local=False)
    mine.acquire()
    assert flock_free(path) is False
    assert flock_free(path) is False  # asking twice released nothing
    other = FileLock(path, timeout=0, thread_local=False)
    with pytest.raises(Timeout):  # still held by `mine`
        other.acquire(timeout=0)
    mine.release(force=True)
    assert flock_free(path) is True

    holder = subprocess.Popen([sys.executable, "-c", HOLD, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert flock_free(path) is False
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert flock_free(path) is True


def test_lock_is_free_through_the_supervisor_lock(tmp_path):
    state = StateDir(tmp_path / "state")
    state.root.mkdir()
    assert lock_is_free(state)
    lock = SupervisorLock(state)
    lock.acquire()
    try:
        assert not lock_is_free(state)
        with pytest.raises(LockHeld):
            SupervisorLock(state).acquire()
    finally:
        lock.release()
    assert lock_is_free(state)
