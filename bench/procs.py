"""Processes the bench starts or causes: tracking, liveness, reaping and the final clean-up.

Every process is remembered as (pid, create_time) so the clean-up never signals a
recycled PID. The harness makes itself a child subreaper (Linux) and reaps what gets
reparented to it, standing in for an init that reaps orphans: without that, children
orphaned by a supervisor killed with -9 would linger as zombies on hosts whose PID 1
does not reap.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import psutil

PR_SET_CHILD_SUBREAPER = 36

# PIDs the bench forked itself: the reaper leaves them to their Popen object.
_own_children: set[int] = set()
_spawn_lock = threading.Lock()


def popen(argv: list[str], **kwargs) -> subprocess.Popen:
    """subprocess.Popen, registered so the orphan reaper never steals its exit status."""
    with _spawn_lock:
        proc = subprocess.Popen(argv, **kwargs)
        _own_children.add(proc.pid)
    return proc


def run(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run through `popen`; a command that overruns its timeout is killed by PID. The command's end is
    taken when it happens: Popen.wait(timeout) polls with sleeps that grow to 50 ms, so a command whose output goes
    to a file (no pipe whose end marks the exit) measured up to 50 ms long."""
    proc = popen(argv, **kwargs)
    piped = subprocess.PIPE in (kwargs.get("stdin"), kwargs.get("stdout"), kwargs.get("stderr"))
    try:
        if not piped:
            wait_exactly(proc, timeout)
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    finally:
        if proc.returncode is not None:
            _own_children.discard(proc.pid)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def wait_exactly(proc: subprocess.Popen, timeout: float) -> None:
    """Until `proc` exits (subprocess.TimeoutExpired after `timeout` seconds), woken by the exit itself."""
    import select

    try:
        watch = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (not Linux, or before 5.3): Popen's own polling
        proc.wait(timeout)
        return
    try:
        if not select.select([watch], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(watch)


def forget_child(proc: subprocess.Popen) -> None:
    if proc.returncode is not None:
        _own_children.discard(proc.pid)


@dataclass(frozen=True)
class TrackedProcess:
    pid: int
    create_time: float
    label: str


def alive(pid: int, create_time: float | None = None) -> bool:
    """A process counts as alive if it exists, is not a zombie, and (if given) is the same incarnation."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.01:
            return False
        return proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return False


def create_time_of(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Tracker:
    """Remembers every process the bench started or saw, and ends the survivors by PID."""

    def __init__(self) -> None:
        self._processes: dict[tuple[int, float], TrackedProcess] = {}
        self._lock = threading.Lock()

    def add(self, pid: int, label: str) -> TrackedProcess | None:
        created = create_time_of(pid)
        if created is None:
            return None
        entry = TrackedProcess(pid, created, label)
        with self._lock:
            self._processes.setdefault((pid, created), entry)
        return entry

    def survivors(self) -> list[TrackedProcess]:
        with self._lock:
            entries = list(self._processes.values())
        return [e for e in entries if alive(e.pid, e.create_time)]

    def end_all(self, grace: float = 3.0) -> list[TrackedProcess]:
        """SIGTERM every tracked survivor, then SIGKILL what is left after `grace`; returns the ones ended."""
        ended = self.survivors()
        for entry in ended:
            _signal(entry, signal.SIGTERM)
        wait_until(lambda: not self.survivors(), grace, 0.05)
        for entry in self.survivors():
            _signal(entry, signal.SIGKILL)
        wait_until(lambda: not self.survivors(), 5.0, 0.05)
        return ended


def _signal(entry: TrackedProcess, signum: int) -> None:
    if not alive(entry.pid, entry.create_time):
        return
    try:
        os.kill(entry.pid, signum)
    except ProcessLookupError:
        pass


class Reaper:
    """Become a subreaper and reap reparented orphans in the background, leaving our own Popen children alone."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.enabled = False

    def start(self) -> None:
        if not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                return
        except (OSError, AttributeError):
            return
        self.enabled = True
        self._thread = threading.Thread(target=self._run, name="bench-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.reap_once()

    def reap_once(self) -> None:
        with _spawn_lock:
            for pid in _direct_children() - _own_children:
                try:
                    if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                        os.waitpid(pid, os.WNOHANG)
                except (psutil.Error, ChildProcessError):
                    continue


def _direct_children() -> set[int]:
    """Our children, cheaply from /proc/self/task/*/children when the kernel has it."""
    pids: set[int] = set()
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as handle:
                pids.update(int(p) for p in handle.read().split())
        return pids
    except OSError:
        return {c.pid for c in psutil.Process().children()}
