"""The lowest OS calls of Windows and macOS, made of Linux ones, so the real platform code above them runs
here: kernel32's process handles and events (pidfds and eventfds), a kqueue's EVFILT_PROC filters (an epoll
of pidfds), CreateProcess's flags (recorded, then a plain detached Popen), taskkill (SIGKILL), and
msvcrt.locking (flock on the same descriptor). Nothing above these is replaced.

Also command lines that run hermes-fleet on the Windows platform built from them:
    python tests/platform_fakes.py windows-controller --state-dir DIR
    python tests/platform_fakes.py windows-cli ARGS...     (a controller it starts is the one above)
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fleet.platform.macos import MacPlatform  # noqa: E402
from fleet.platform.windows import (  # noqa: E402
    CREATE_BREAKAWAY_FROM_JOB,
    ERROR_ACCESS_DENIED,
    LK_NBLCK,
    LK_UNLCK,
    TASKKILL_NOT_FOUND,
    WindowsPlatform,
)


# ---------------------------------------------------------------------------------------------- kernel32

class FakeKernel32:
    """Handles are descriptors: a process handle is a pidfd (readable once the process exits, like a
    signalled process object), an event an eventfd (readable once set)."""

    def __init__(self) -> None:
        self.opened: list[int] = []
        self.waits = 0
        self.max_handles_per_wait = 0
        self.denied: set[int] = set()  # PIDs whose OpenProcess fails with access denied
        self._lock = threading.Lock()

    def open_process(self, pid: int) -> int | None:
        if pid in self.denied:
            raise OSError(errno.EACCES, "OpenProcess: access denied")
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        self.opened.append(pid)
        return fd

    def create_event(self) -> int:
        return os.eventfd(0)

    def set_event(self, handle: int) -> None:
        os.eventfd_write(handle, 1)

    def wait_any(self, handles: Sequence[int], timeout_ms: int) -> int | None:
        assert len(handles) <= 64, f"WaitForMultipleObjects takes at most 64 handles, got {len(handles)}"
        with self._lock:
            self.waits += 1
            self.max_handles_per_wait = max(self.max_handles_per_wait, len(handles))
        poller = select.poll()
        for handle in handles:
            poller.register(handle, select.POLLIN)
        ready = poller.poll(None if timeout_ms == 0xFFFFFFFF else timeout_ms)
        if not ready:
            return None
        fds = {fd for fd, _ in ready}
        return min(i for i, h in enumerate(handles) if h in fds)  # the lowest index, as Windows returns

    def close_handle(self, handle: int) -> None:
        os.close(handle)


# ---------------------------------------------------------------------------------------------- kqueue

@dataclass
class FakeKevent:
    ident: int
    filter: int = 0
    flags: int = 0
    fflags: int = 0


class FakeKqueue:
    def __init__(self, module: FakeKqueueModule):
        self._module = module
        self._epoll = select.epoll()
        self._fds: dict[int, int] = {}  # pid -> pidfd

    def fileno(self) -> int:
        return self._epoll.fileno()

    def control(self, changes: list[FakeKevent] | None, max_events: int, timeout: float | None = None) -> list:
        m = self._module
        for change in changes or []:
            assert change.filter == m.KQ_FILTER_PROC and change.fflags & m.KQ_NOTE_EXIT
            if change.flags & m.KQ_EV_ADD:
                fd = os.pidfd_open(change.ident)  # ESRCH for a gone PID, as kevent() says on macOS
                self._fds[change.ident] = fd
                self._epoll.register(fd, select.EPOLLIN)
                m.added.append(change.ident)
            elif change.flags & m.KQ_EV_DELETE:
                fd = self._fds.pop(change.ident, None)
                if fd is None:
                    raise FileNotFoundError(errno.ENOENT, "kevent: no such filter")
                self._epoll.unregister(fd)
                os.close(fd)
        if max_events <= 0:
            return []
        by_fd = {fd: pid for pid, fd in self._fds.items()}
        events = []
        for fd, _ in self._epoll.poll(timeout if timeout is not None else -1, max_events):
            pid = by_fd[fd]
            events.append(FakeKevent(pid, m.KQ_FILTER_PROC, 0, m.KQ_NOTE_EXIT))
            self._epoll.unregister(fd)  # one-shot
            os.close(self._fds.pop(pid))
        return events

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._epoll.close()


class FakeKqueueModule:
    """What MacPlatform takes from the select module."""
    KQ_FILTER_PROC = -5
    KQ_EV_ADD = 0x0001
    KQ_EV_DELETE = 0x0002
    KQ_EV_ONESHOT = 0x0010
    KQ_NOTE_EXIT = 0x80000000

    def __init__(self) -> None:
        self.added: list[int] = []

    def kqueue(self) -> FakeKqueue:
        return FakeKqueue(self)

    def kevent(self, ident: int, filter: int = 0, flags: int = 0, fflags: int = 0) -> FakeKevent:
        return FakeKevent(ident, filter, flags, fflags)


# ---------------------------------------------------------------------------------------------- CreateProcess

@dataclass
class FakeCreateProcess:
    """subprocess.Popen as on Windows: records the creation flags, refuses breakaway when asked to (as a job
    without JOB_OBJECT_LIMIT_BREAKAWAY_OK does), then starts the process detached the POSIX way."""
    refuse_breakaway: bool = False
    flags: list[int] = field(default_factory=list)

    def __call__(self, argv: list[str], *, creationflags: int = 0, **kwargs: Any) -> subprocess.Popen:
        self.flags.append(creationflags)
        if self.refuse_breakaway and creationflags & CREATE_BREAKAWAY_FROM_JOB:
            error = PermissionError(errno.EACCES, "CreateProcess: access denied")
            error.winerror = ERROR_ACCESS_DENIED  # type: ignore[attr-defined]
            raise error
        return subprocess.Popen(argv, start_new_session=True, **kwargs)


class FakeTaskkill:
    """`taskkill /F /PID n`: SIGKILL, and taskkill's exit 128 for a PID no process has."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess:
        argv = list(argv)
        self.calls.append(argv)
        assert argv[:2] == ["taskkill", "/F"] and argv[2] == "/PID", argv
        try:
            os.kill(int(argv[3]), signal.SIGKILL)
        except ProcessLookupError:
            return subprocess.CompletedProcess(argv, TASKKILL_NOT_FOUND, "", "not found")
        return subprocess.CompletedProcess(argv, 0, "SUCCESS", "")


def fake_locking(fd: int, mode: int, nbytes: int) -> None:
    """msvcrt.locking over flock: Hermes' byte lock and the demo gateway's flock exclude each other."""
    import fcntl

    if mode == LK_NBLCK:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OSError(errno.EACCES, "locking: the region is locked") from None
    elif mode == LK_UNLCK:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        raise AssertionError(f"locking mode {mode} is not used by the platform")


class FakeSignals:
    """The signal module of Windows: SIGINT and SIGBREAK, handlers recorded (a test calls them)."""
    SIGINT = 2
    SIGBREAK = 21

    def __init__(self) -> None:
        self.handlers: dict[int, Any] = {}

    def signal(self, signum: int, handler: Any) -> Any:
        previous, self.handlers[signum] = self.handlers.get(signum), handler
        return previous

    def getsignal(self, signum: int) -> Any:
        return self.handlers.get(signum)


# ---------------------------------------------------------------------------------------------- platforms

@dataclass
class WindowsFakes:
    kernel32: FakeKernel32 = field(default_factory=FakeKernel32)
    popen: FakeCreateProcess = field(default_factory=FakeCreateProcess)
    taskkill: FakeTaskkill = field(default_factory=FakeTaskkill)
    signals: Any = field(default_factory=FakeSignals)
    warnings: list[str] = field(default_factory=list)


def windows_platform(fakes: WindowsFakes | None = None) -> tuple[WindowsPlatform, WindowsFakes]:
    fakes = fakes or WindowsFakes()
    platform = WindowsPlatform(runner=fakes.taskkill, popen=fakes.popen, warn=fakes.warnings.append,
                               locking=fake_locking, kernel32=fakes.kernel32, signals=fakes.signals)
    return platform, fakes


def mac_platform() -> tuple[MacPlatform, FakeKqueueModule]:
    kq = FakeKqueueModule()
    return MacPlatform(kq=kq), kq


def _windows_controller(argv: list[str]) -> int:
    """A controller on the Windows platform. SIGTERM is ignored, so only the Windows ways stop it: a `stop`
    message on its wake channel (or Ctrl+C), then TerminateProcess."""
    from fleet.controller.loop import Controller
    from fleet.store.layout import resolve_state_dir

    assert argv[0] == "--state-dir"
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    platform, _ = windows_platform(WindowsFakes(signals=signal))
    return Controller(resolve_state_dir(argv[1], None), platform).run()


def _windows_cli(argv: list[str]) -> int:
    import fleet.platform

    fleet.platform.current_platform = lambda: windows_platform(WindowsFakes(signals=signal))[0]
    import fleet.cli.controller_client as client

    client.controller_command = lambda state: [sys.executable, __file__, "windows-controller", "--state-dir",
                                               str(state.root)]
    import fleet.cli.early_controller as early

    early.start_for = lambda args: None  # the stand-in controller above starts only the usual way, never held
    from fleet.cli.main import main

    main(argv)
    return 0


if __name__ == "__main__":
    entry = {"windows-controller": _windows_controller, "windows-cli": _windows_cli}[sys.argv[1]]
    sys.exit(entry(sys.argv[2:]))
