"""The injected environment of unit tests of the executor, the observer and a pass: a fake `Platform`
(fleet/platform/base.py) holding a process table in memory, with the children the code under test starts
through it and strangers a test puts there, and fixtures for a temporary state directory and its Store.
Every call that starts, signals or reaps a process is recorded, so a test asserts what was spawned and
signalled instead of looking at the host; nothing on the host is ever touched.

Use the fixtures by importing them: `from fakes import platform, state, store  # noqa: F401`."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from fleet.platform.base import ProcessInfo, ProcessStart, SignalRefused
from fleet.platform.executables import which
from fleet.platform.exits import PollingExitWatch
from fleet.store.db import Store
from fleet.store.layout import StateDir, ensure_state_dir

FIRST_PID = 40_000
OTHER_UID = os.getuid() + 1  # a user that is not us


@dataclass(frozen=True)
class Call:
    """One call to the platform: its method's name and its arguments."""
    name: str
    args: tuple


@dataclass(frozen=True)
class FakeProcess:
    info: ProcessInfo
    env: dict[str, str] | None  # None: unreadable
    child: bool  # started through the platform and not reaped: its environment is known for sure


@dataclass
class FakePlatform:
    """A host with no processes but the ones started through it (held as children) and the ones a test runs."""
    name: str = "posix"
    processes: dict[int, FakeProcess] = field(default_factory=dict)
    exits: dict[int, int | None] = field(default_factory=dict)  # ended children, until reaped: exit code
    protected: dict[int, str] = field(default_factory=dict)  # pid -> why never_signal refuses it
    groups: dict[int, tuple[int | None, int | None]] = field(default_factory=dict)  # pid -> (pgid, sid)
    held_locks: set[str] = field(default_factory=set)
    stubborn: set[int] = field(default_factory=set)  # ignore request_stop
    calls: list[Call] = field(default_factory=list)
    spawn_error: Exception | None = None
    spawn_caveat_text: str | None = None  # what every spawn settles for (a job that forbids breakaway)
    epoch: str = ""
    scans: int = 0
    on_scan: Callable[[], None] = lambda: None  # runs whenever the process table is read
    _pids: itertools.count = field(default_factory=lambda: itertools.count(FIRST_PID))

    # -- what a test sets up ---------------------------------------------------------------------
    def run_stranger(self, pid: int, argv, env: dict[str, str] | None, *, uid: int | None = None,
                     ppid: int = 1, start_ticks: int | None = None, create_time: float | None = None) -> ProcessInfo:
        """A live process this platform did not start (another controller's child, a hand-started gateway)."""
        info = process_info(pid, argv, ppid, uid=uid, start_ticks=start_ticks, create_time=create_time)
        self.processes[pid] = FakeProcess(info, None if env is None else dict(env), child=False)
        return info

    def end(self, pid: int, code: int | None = None) -> None:
        """The process exits with `code`; a child's code waits for `reap`."""
        gone = self.processes.pop(pid)
        if gone.child:
            self.exits[pid] = code

    @property
    def children(self) -> dict[int, FakeProcess]:
        return {pid: p for pid, p in self.processes.items() if p.child}

    def signalled(self) -> list[Call]:
        return [c for c in self.calls if c.name in ("request_stop", "kill_tree", "kill_process")]

    def called(self, name: str) -> list[tuple]:
        return [c.args for c in self.calls if c.name == name]

    # -- the Platform interface ------------------------------------------------------------------
    def process_info(self, pid: int) -> ProcessInfo | None:
        known = self.processes.get(pid)
        return known.info if known else None

    def process_environ(self, pid: int) -> dict[str, str] | None:
        known = self.processes.get(pid)
        return known.env if known else None

    def child_environ(self, pid: int) -> dict[str, str] | None:
        known = self.processes.get(pid)
        return known.env if known and known.child else None

    def iter_processes(self):
        self.scans += 1
        self.on_scan()
        return iter([p.info for p in list(self.processes.values())])

    def process_starts(self):
        return (ProcessStart(i.pid, i.start_ticks, i.create_time, i) for i in self.iter_processes())

    def current_uid(self) -> int | None:
        return os.getuid()

    def scoped_command(self, unit_name: str, argv: list[str], *, stop_timeout: float) -> list[str]:
        return argv

    def spawn_detached(self, argv: list[str], env: dict[str, str], cwd: str, log_path: str) -> int:
        self.calls.append(Call("spawn_detached", (tuple(argv), cwd, log_path)))
        if self.spawn_error is not None:
            raise self.spawn_error
        pid = next(self._pids)
        self.processes[pid] = FakeProcess(process_info(pid, argv, os.getpid()), dict(env), child=True)
        return pid

    def spawn_daemon(self, argv: list[str], log_fd: int, stdin_fd: int | None = None) -> int:
        self.calls.append(Call("spawn_daemon", (tuple(argv),)))
        pid = next(self._pids)
        self.processes[pid] = FakeProcess(process_info(pid, argv, 1), dict(os.environ), child=False)
        return pid

    def never_signal(self, pid: int) -> str | None:
        return self.protected.get(pid)

    def request_stop(self, pid: int, *, interrupt: bool = False) -> None:
        self.calls.append(Call("request_stop", (pid, "interrupt") if interrupt else (pid,)))
        self._refuse_protected(pid)
        if pid not in self.stubborn and pid in self.processes:
            self.end(pid, 0)

    def kill_tree(self, pid: int, markers) -> None:
        self.calls.append(Call("kill_tree", (pid, dict(markers))))
        self._refuse_protected(pid)
        if pid in self.processes:
            self.end(pid, -9)

    def kill_process(self, pid: int) -> None:
        self.calls.append(Call("kill_process", (pid,)))
        self._refuse_protected(pid)
        if pid in self.processes:
            self.end(pid, -9)

    def process_group(self, pid: int) -> tuple[int | None, int | None]:
        return self.groups.get(pid, (None, None))

    def lock_is_held(self, path: str) -> bool:
        return str(path) in self.held_locks

    def spawn_caveat(self, pid: int) -> str | None:
        return self.spawn_caveat_text

    def reap(self, pid: int) -> tuple[bool, int | None]:
        self.calls.append(Call("reap", (pid,)))
        if pid not in self.exits:
            return (False, None)
        return (True, self.exits.pop(pid))

    def exit_watch(self) -> PollingExitWatch:
        return PollingExitWatch()

    def drain_epoch(self) -> str:
        return self.epoch

    def find_executable(self, name: str) -> str | None:
        return which(name)

    def _refuse_protected(self, pid: int) -> None:
        why = self.never_signal(pid)
        if why:
            raise SignalRefused(why)


def process_info(pid: int, argv, ppid: int | None, *, uid: int | None = None, start_ticks: int | None = None,
                 create_time: float | None = None) -> ProcessInfo:
    """A live process's facts; its start ticks follow from its pid unless given (another start: a reused pid)."""
    return ProcessInfo(pid=pid, start_ticks=pid * 10 if start_ticks is None else start_ticks,
                       create_time=time.time() if create_time is None else create_time,
                       uid=os.getuid() if uid is None else uid, username="me",
                       cmdline=tuple(argv), status="sleeping", ppid=ppid)


@pytest.fixture
def state(tmp_path) -> StateDir:
    state = StateDir(tmp_path / "state")
    ensure_state_dir(state)
    return state


@pytest.fixture
def store(state: StateDir):
    store = Store(state.db, durable=False, degradable=True)
    yield store
    store.close()


@pytest.fixture
def platform() -> FakePlatform:
    return FakePlatform()
