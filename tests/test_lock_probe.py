"""The supervisor lock (fleet.platform.exclusive_lock) and the probe `status` uses: they exclude, and see, a lock
taken through the filelock library, as a controller of an earlier release took it, and filelock sees theirs;
held by a lock in this process or in another, free before, after and without a lock file; asking never
releases the holder's lock, and a child never inherits it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from filelock import FileLock, Timeout

from fleet.platform import exclusive_lock
from fleet.platform.exclusive_lock import ExclusiveLock, lock_free
from fleet.store.layout import StateDir
from fleet.store.lock import LockHeld, SupervisorLock, lock_is_free

HOLD = r"""
import sys
from filelock import FileLock, Timeout
lock = FileLock(sys.argv[1], timeout=0, thread_local=False)
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""

TRY = r"""
import sys
from fleet.platform.exclusive_lock import ExclusiveLock
print("held" if ExclusiveLock(sys.argv[1]).try_acquire() is None else "taken", flush=True)
"""


def test_the_probe_agrees_with_filelock(tmp_path):
    path = str(tmp_path / "x.lock")
    assert lock_free(path) is True  # no file: nobody holds it
    assert not os.path.exists(path)  # and asking created none
    mine = FileLock(path, timeout=0, thread_local=False)
    mine.acquire()
    assert lock_free(path) is False
    assert lock_free(path) is False  # asking twice released nothing
    other = FileLock(path, timeout=0, thread_local=False)
    with pytest.raises(Timeout):  # still held by `mine`
        other.acquire(timeout=0)
    mine.release(force=True)
    assert lock_free(path) is True

    holder = subprocess.Popen([sys.executable, "-c", HOLD, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_free(path) is False
        assert ExclusiveLock(path).try_acquire() is None  # an earlier release's controller holds the fleet
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert lock_free(path) is True


def test_the_lock_excludes_filelock_and_every_other_holder(tmp_path):
    path = str(tmp_path / "x.lock")
    lock = ExclusiveLock(path)
    fd = lock.try_acquire()
    assert fd is not None and fd == lock.fd
    assert lock.try_acquire() == fd  # already this object's
    try:
        assert lock_free(path) is False
        assert ExclusiveLock(path).try_acquire() is None  # another descriptor, even in this process
        with pytest.raises(Timeout):
            FileLock(path, timeout=0, thread_local=False).acquire(timeout=0)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        other = subprocess.run([sys.executable, "-c", TRY, path], capture_output=True, text=True, timeout=60, env=env)
        assert other.stdout.strip() == "held", other
        # A child started while the lock is held does not carry it: the lock ends with the holder, not its child.
        assert not os.get_inheritable(fd)
    finally:
        lock.release()
    assert lock_free(path) is True
    lock.release()  # releasing twice is harmless
    assert ExclusiveLock(path).try_acquire() is not None


def test_a_lock_file_unlinked_under_the_lock_is_not_a_lock(tmp_path):
    path = tmp_path / "x.lock"
    first = ExclusiveLock(str(path))
    assert first.try_acquire() is not None
    try:
        path.unlink()  # the state directory's lock file removed by hand: the lock on it guards nothing any more
        second = ExclusiveLock(str(path))
        assert second.try_acquire() is not None and path.exists()
        second.release()
    finally:
        first.release()


def test_a_lock_file_unlinked_between_its_open_and_its_lock_is_opened_again(tmp_path, monkeypatch):
    """The race the loop in try_acquire closes: whoever locks a file that was unlinked meanwhile locks nothing
    another controller can see, so it takes the file that is there now."""
    path = tmp_path / "x.lock"
    real_lock, calls = exclusive_lock._try_lock, []

    def unlinked_first(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            path.unlink()
        real_lock(fd)

    monkeypatch.setattr(exclusive_lock, "_try_lock", unlinked_first)
    lock = ExclusiveLock(str(path))
    fd = lock.try_acquire()
    try:
        assert fd is not None and len(calls) == 2
        assert (os.fstat(fd).st_dev, os.fstat(fd).st_ino) == (path.stat().st_dev, path.stat().st_ino)
        monkeypatch.setattr(exclusive_lock, "_try_lock", real_lock)
        assert lock_free(str(path)) is False
    finally:
        lock.release()


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
