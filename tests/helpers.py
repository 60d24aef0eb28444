"""Shared helpers for tests that start real processes.

- `wait_until(predicate, timeout)`: poll a condition against a deadline instead of sleeping.
- `ProcessReaper`: remembers every process a test starts (or learns about) and, at
  teardown, SIGKILLs those still alive together with their process group. Use it through
  the `reaper` fixture: `from helpers import reaper  # noqa: F401` in the test module.
- `read_json(path)`: a JSON file's content, or None while it is missing or half-written.
- `SIGNAL_LOGGER`: a program (for `python -c`) that logs the signals it is sent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

T = TypeVar("T")

# A program that writes the name of every catchable signal it gets to argv[1], one per line, and
# creates argv[1] + ".ready" once its handlers are in place.
SIGNAL_LOGGER = r"""
import os, signal, sys, time
log = sys.argv[1]
def note(signum, frame):
    with open(log, "a") as fh:
        fh.write(signal.Signals(signum).name + "\n")
for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT"):
    signal.signal(getattr(signal, name), note)
open(log + ".ready", "w").close()
while True:
    time.sleep(3600)
"""


def read_json(path: str | os.PathLike) -> object | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def poll_until(predicate: Callable[[], T], timeout: float, interval: float = 0.02) -> T | None:
    """The first truthy value of `predicate()` within `timeout` seconds, else the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
               what: str | None = None) -> T:
    """Return the first truthy value of `predicate()`; fail the test at the deadline."""
    value = poll_until(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
    return value


@dataclass
class _Tracked:
    pid: int
    create_time: float | None  # guards against signalling a reused PID
    popen: subprocess.Popen | None
    own_group: bool  # started as the leader of its own session / process group


class ProcessReaper:
    """Records processes and kills the survivors (and their groups) in `reap()`."""

    def __init__(self) -> None:
        self._tracked: list[_Tracked] = []

    def spawn(self, argv: Sequence[str], **popen_kwargs) -> subprocess.Popen:
        """Popen in a new session (POSIX) or process group (Windows), tracked for teardown."""
        if os.name == "posix":
            popen_kwargs.setdefault("start_new_session", True)
        else:
            popen_kwargs.setdefault("creationflags", subprocess.CREATE_NEW_PROCESS_GROUP)
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(list(argv), **popen_kwargs)
        self._tracked.append(_Tracked(proc.pid, _create_time(proc.pid), proc,
                                      own_group=bool(popen_kwargs.get("start_new_session"))))
        return proc

    def track(self, pid_or_popen: int | subprocess.Popen) -> None:
        """Also reap a process this test caused to exist (e.g. one a supervisor spawned)."""
        if isinstance(pid_or_popen, subprocess.Popen):
            popen, pid = pid_or_popen, pid_or_popen.pid
        else:
            popen, pid = None, int(pid_or_popen)
        create_time = _create_time(pid)
        own_group = os.name == "posix" and create_time is not None and _pgid(pid) == pid
        self._tracked.append(_Tracked(pid, create_time, popen, own_group))

    @property
    def pids(self) -> list[int]:
        return [t.pid for t in self._tracked]

    def reap(self) -> None:
        for t in reversed(self._tracked):
            # A Popen not yet waited for still owns its PID (alive or zombie), so its
            # group id cannot have been reused; anything else is checked by create time.
            unreaped = t.popen is not None and t.popen.returncode is None
            same = unreaped or (t.create_time is not None and _create_time(t.pid) == t.create_time)
            if same and t.own_group and hasattr(os, "killpg"):
                try:
                    os.killpg(t.pid, signal.SIGKILL)
                except OSError:
                    pass
            if same:
                try:
                    if t.popen is not None:
                        t.popen.kill()
                    else:
                        os.kill(t.pid, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
                except OSError:
                    pass
            if t.popen is not None:
                try:
                    t.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        self._tracked.clear()


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):
        return None


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (OSError, AttributeError):
        return None


@pytest.fixture
def reaper():
    r = ProcessReaper()
    try:
        yield r
    finally:
        r.reap()


def python_argv(script: str | os.PathLike, *args: str) -> list[str]:
    """Run a script with the interpreter running the tests."""
    return [sys.executable, str(script), *args]


def short_in_ci(cases: dict, keep: tuple[str, ...]) -> dict:
    """`cases`, or with CI=true only those named in `keep`: a matrix whose every case runs a whole fleet has a
    short version in CI (as the soak does), where each kept case stands for its kind; run without CI for all."""
    if os.environ.get("CI") != "true":
        return cases
    missing = [k for k in keep if k not in cases]
    assert not missing, f"short_in_ci keeps cases that do not exist: {missing}"
    return {k: v for k, v in cases.items() if k in keep}



def recorded_idle_fleet(tmp_path: Path, name: str, extra: str = "") -> Path:
    """A state directory (returned) whose store holds one recorded generation of fleet `name`: profile alpha,
    suspended, so a pass over it starts nothing. `extra`: more top-level manifest lines."""
    from fleet.controller.record import record_manifest
    from fleet.spec.load import load_manifest
    from fleet.store.db import Store
    from fleet.store.layout import StateDir, ensure_state_dir

    state = StateDir(tmp_path / "state")
    ensure_state_dir(state)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(f"""version: 1
name: {name}
hermes: {{home: {tmp_path / 'home'}}}
{extra}profiles:
  alpha:
    driver: process
    command: ["{sys.executable}", "-c", "pass"]
    suspend: true
""")
    store = Store(state.db)
    try:
        record_manifest(store, load_manifest(str(manifest)), {"revision": "1"}, prune=True, source="test",
                        lift_down=False)
    finally:
        store.close()
    return state.root
