"""Windows implementation of the Platform interface (fleet.platform.base).

- Spawn: detached, in a new process group, without a console, and broken away from the
  job object of whatever started the controller (a GUI updater, an IDE terminal, a CI
  runner) so closing that job does not take the gateway with it. When the parent's job
  forbids breakaway, CreateProcess fails with ERROR_ACCESS_DENIED; the spawn is then
  retried once without it, with a visible warning.
- Graceful stop: Windows has no SIGTERM handlers for a detached child, so the graceful
  stop is Hermes' drain request and planned-stop marker, which the executor writes before
  it calls `request_stop`; `request_stop` therefore sends nothing. `kill_tree` is the hard
  stop after the drain deadline, with the root's identity checked first: the root by
  `taskkill /F`, then only those descendants that carry the profile's markers. Not
  `taskkill /T`: it walks parent PIDs, and a PID that a dead parent left behind can be
  reused by a process that is not the gateway's (Windows has no session or group that a
  gateway leads).
- Exits: process handles waited on by threads (fleet.platform.windows_exits).
- The controller: its wake channel is a loopback socket with a token (fleet.platform.wake);
  it stops on Ctrl+C/Ctrl+Break in a console and on a `stop` message on that channel, which
  is how `hermes-fleet controller stop` and the service host ask it; TerminateProcess after
  half the timeout is as safe as a crash (the next controller adopts).
- Identity: psutil; `start_ticks` is create_time in 1/100 s (Windows has no clock-step
  immune start counter exposed the way Linux's /proc/<pid>/stat is).
"""

from __future__ import annotations

import errno
import locale
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import psutil

from fleet.platform.base import ExitWatch, ProcessInfo, ProcessStart, WakeChannel, refuse_protected, still_runs
from fleet.platform.children import SpawnedChildren
from fleet.platform.wake import open_wake_channel, send_wake
from fleet.platform.windows_exits import HandleExitWatch, Kernel32
from fleet.store.layout import StateDir

DETACHED_PROCESS = 0x00000008
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
CREATE_BREAKAWAY_FROM_JOB = 0x01000000
SPAWN_FLAGS = DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW | CREATE_BREAKAWAY_FROM_JOB
ERROR_ACCESS_DENIED = 5
BREAKAWAY_REFUSED = ("started inside the controller's job object, which does not allow breakaway: it ends when "
                     "that job closes (run the controller as a service to avoid this)")
# Hermes' gateway.lock on Windows is `msvcrt.locking` of 1 byte at offset 1 MiB (the JSON
# record lives at the start of the same file), so that is the byte a probe must try.
LOCK_PROBE_OFFSET = 1024 * 1024
TASKKILL_NOT_FOUND = 128  # taskkill: "The process ... not found"
SYSTEM_PIDS = (0, 4)  # System Idle Process, System


class _Runner(Protocol):
    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> Any: ...


class _TaskkillRunner:
    """Minimal default runner (the service layer has the full one; this layer sits below it)."""

    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> Any:
        try:
            proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                                  creationflags=CREATE_NO_WINDOW)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return subprocess.CompletedProcess(list(argv), 1, "", str(exc))
        encoding = locale.getencoding()
        return subprocess.CompletedProcess(list(argv), proc.returncode, proc.stdout.decode(encoding, "replace"),
                                           proc.stderr.decode(encoding, "replace"))


def _warn(message: str) -> None:
    stream = sys.stderr or sys.__stderr__
    if stream is not None:
        print(f"hermes-fleet: warning: {message}", file=stream, flush=True)


class WindowsPlatform:
    name = "windows"

    def __init__(
        self, *, runner: _Runner | None = None, popen: Callable[..., subprocess.Popen] = subprocess.Popen,
        warn: Callable[[str], None] = _warn, locking: Callable[[int, int, int], None] | None = None,
        kernel32: Kernel32 | None = None, signals: Any = signal,
    ):
        self._runner = runner or _TaskkillRunner()
        self._popen = popen
        self._warn = warn
        self._locking = locking
        self._kernel32 = kernel32  # None: the real one, made when first needed
        self._signals = signals
        self.children = SpawnedChildren()
        self._caveats: dict[int, str] = {}  # pid -> what its spawn settled for (status --deep says so)

    # ------------------------------------------------------------ identity

    def process_info(self, pid: int) -> ProcessInfo | None:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                return _info(proc)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.AccessDenied:
            return _partial_info(pid)

    def process_environ(self, pid: int) -> dict[str, str] | None:
        try:
            return psutil.Process(pid).environ()
        except psutil.Error:
            return None

    def process_starts(self) -> Iterator[ProcessStart]:
        """psutil reads a process whole: each start carries its info."""
        return (ProcessStart(info.pid, info.start_ticks, info.create_time, info) for info in self.iter_processes())

    def iter_processes(self) -> Iterator[ProcessInfo]:
        for proc in psutil.process_iter():
            try:
                with proc.oneshot():
                    yield _info(proc)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            except psutil.AccessDenied:
                info = _partial_info(proc.pid)
                if info is not None:
                    yield info

    def current_uid(self) -> int | None:
        return None  # Windows identifies users by name (DOMAIN\user), see ProcessInfo.username

    # ------------------------------------------------------------ spawn and stop

    def spawn_detached(self, argv: list[str], env: dict[str, str], cwd: str, log_path: str) -> int:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        with open(log_path, "ab") as log:
            kwargs = dict(stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                          close_fds=True)
            try:
                proc = self._popen(argv, creationflags=SPAWN_FLAGS, **kwargs)
            except OSError as exc:
                if getattr(exc, "winerror", None) != ERROR_ACCESS_DENIED:
                    raise
                # The parent's job forbids breakaway. Retry once, only around the
                # constructor: no process exists yet, so nothing can be started twice.
                self._warn(
                    "the job object this controller runs in does not allow breakaway; the gateway "
                    f"{argv[0]!r} is started inside it and may be ended when that job closes "
                    "(install the controller as a service to avoid this)"
                )
                proc = self._popen(argv, creationflags=SPAWN_FLAGS & ~CREATE_BREAKAWAY_FROM_JOB, **kwargs)
                self._caveats[proc.pid] = BREAKAWAY_REFUSED
        return self.children.add(proc, env)

    def spawn_daemon(self, argv: list[str], log_fd: int, stdin_fd: int | None = None) -> int:
        """A detached process with no console; Windows keeps no parent chain that could protect a gateway."""
        proc = self._popen(argv, creationflags=SPAWN_FLAGS & ~CREATE_BREAKAWAY_FROM_JOB,
                           stdin=subprocess.DEVNULL if stdin_fd is None else stdin_fd,
                           stdout=log_fd, stderr=log_fd, close_fds=True)
        return proc.pid

    def child_environ(self, pid: int) -> dict[str, str] | None:
        """The environment we gave a child whose handle we still hold (its PID cannot be reused meanwhile)."""
        return self.children.environ(pid)

    def scoped_command(self, unit_name: str, argv: list[str], *, stop_timeout: float) -> list[str]:
        return argv  # no service scopes: a gateway is detached from every job and console instead

    def reap(self, pid: int) -> tuple[bool, int | None]:
        exited, code = self.children.reap(pid)
        if exited:
            self._caveats.pop(pid, None)
        return exited, code

    def spawn_caveat(self, pid: int) -> str | None:
        return self._caveats.get(pid)

    def exit_watch(self) -> ExitWatch:
        return HandleExitWatch(self._kernel32)

    def drain_epoch(self) -> str:
        return ""  # Hermes derives its epoch from Linux's boot id; on Windows it has none and checks none

    def find_executable(self, name: str) -> str | None:
        import shutil  # PATHEXT, and the current directory first, as CreateProcess searches

        return shutil.which(name)

    def never_signal(self, pid: int) -> str | None:
        if pid in SYSTEM_PIDS or pid < 0:
            return f"pid {pid} is a system process"
        me = os.getpid()
        if pid == me:
            return f"pid {pid} is this controller itself"
        try:
            if pid in {p.pid for p in psutil.Process(me).parents()}:
                return f"pid {pid} is an ancestor of this controller"
            proc = psutil.Process(pid)
            if proc.username() != psutil.Process(me).username():
                return f"pid {pid} runs as another user"
            if not proc.cmdline() and not proc.exe():
                return f"pid {pid} is a system process (no command line, no executable)"
        except psutil.NoSuchProcess:
            return None
        except psutil.Error as exc:
            return f"pid {pid} cannot be inspected ({exc})"
        return None

    def request_stop(self, pid: int, *, interrupt: bool = False) -> None:
        """Deliberately nothing: on Windows the stop marker file is the graceful stop.

        A detached, console-less child cannot receive CTRL_BREAK (it shares no console) and
        `os.kill(pid, SIGTERM)` is TerminateProcess, i.e. a kill. The controller has already
        written `<profile>.stop`; a gateway that honours it drains and exits 0, and after the
        drain deadline the controller calls `kill_tree`.
        """
        refuse_protected(self, pid)

    def kill_tree(self, pid: int, markers: Mapping[str, str]) -> None:
        refuse_protected(self, pid)
        try:
            descendants = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        members = [d for d in descendants if not self.never_signal(d.pid) and _carries(d, markers)]
        result = self._runner.run(["taskkill", "/F", "/PID", str(pid)], timeout=30)
        if result.returncode not in (0, TASKKILL_NOT_FOUND) and psutil.pid_exists(pid):
            raise OSError(f"taskkill /F /PID {pid} failed (exit {result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()}")
        for child in members:
            try:
                child.kill()  # psutil refuses a PID reused since `children()` listed it
            except psutil.Error:
                pass

    def kill_process(self, pid: int) -> None:
        refuse_protected(self, pid)
        result = self._runner.run(["taskkill", "/F", "/PID", str(pid)], timeout=30)
        if result.returncode not in (0, TASKKILL_NOT_FOUND) and psutil.pid_exists(pid):
            raise OSError(f"taskkill /F /PID {pid} failed (exit {result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()}")

    def process_group(self, pid: int) -> tuple[int | None, int | None]:
        return None, None  # no sessions or process groups to speak of: the markers decide alone

    # ------------------------------------------------------------ the controller itself

    def open_wake_channel(self, state: StateDir) -> WakeChannel:
        return open_wake_channel(state, unix=False)

    def on_stop_request(self, handler: Callable[[], None]) -> None:
        """Ctrl+C and Ctrl+Break of a console; a service host or the CLI sends `stop` on the wake channel."""
        for name in ("SIGINT", "SIGBREAK"):
            signum = getattr(self._signals, name, None)
            if signum is not None:
                self._signals.signal(signum, lambda _signum, _frame: handler())

    def stop_controller_process(self, state: StateDir, info: ProcessInfo, timeout: float) -> None:
        """A `stop` message on the wake channel; TerminateProcess if it is still there after half the timeout."""
        try:
            proc = psutil.Process(info.pid)  # from here on psutil refuses to end the PID once it is reused
        except psutil.NoSuchProcess:
            return
        if not still_runs(self, info):
            return  # that PID is another process's by now
        if send_wake(state, "stop") and _exits_within(proc, timeout / 2):
            return
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass

    # ------------------------------------------------------------ lock

    def lock_is_held(self, path: str) -> bool:
        """Whether a process holds the lock byte of `path` (a Hermes gateway.lock): try to lock
        it without blocking and release it at once if we got it."""
        locking = self._locking or _msvcrt_locking()
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            return False
        except PermissionError:
            return True  # its holder opened it without sharing
        try:
            os.lseek(fd, LOCK_PROBE_OFFSET, os.SEEK_SET)
            try:
                locking(fd, LK_NBLCK, 1)
            except OSError as exc:
                if exc.errno in _LOCK_CONFLICT_ERRNOS:
                    return True
                raise
            os.lseek(fd, LOCK_PROBE_OFFSET, os.SEEK_SET)
            locking(fd, LK_UNLCK, 1)
            return False
        finally:
            os.close(fd)


# msvcrt.locking modes (sys/locking.h)
LK_UNLCK = 0
LK_NBLCK = 2
_LOCK_CONFLICT_ERRNOS = {errno.EACCES, 36}  # 36 is EDEADLOCK in the Windows CRT


def _exits_within(proc: psutil.Process, timeout: float) -> bool:
    """Polled: psutil's wait() would wait for the reaping of a process that is not our child."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _msvcrt_locking() -> Callable[[int, int, int], None]:
    if sys.platform != "win32":
        raise OSError("msvcrt.locking exists on Windows only")
    import msvcrt

    return msvcrt.locking


def _carries(proc: psutil.Process, markers: Mapping[str, str]) -> bool:
    try:
        env = proc.environ()
    except psutil.Error:
        return False
    return bool(markers) and all(env.get(k) == v for k, v in markers.items())


def _info(proc: psutil.Process) -> ProcessInfo:
    create_time = proc.create_time()
    try:
        username = proc.username()
    except psutil.AccessDenied:
        username = None
    try:
        cmdline = tuple(proc.cmdline())
    except psutil.AccessDenied:
        cmdline = ()
    return ProcessInfo(
        pid=proc.pid, start_ticks=round(create_time * 100), create_time=create_time, uid=None,
        username=username, cmdline=cmdline, status=proc.status(), ppid=proc.ppid(),
    )


def _partial_info(pid: int) -> ProcessInfo | None:
    """What can be read of another user's (or a protected) process: enough to see it is alive."""
    try:
        proc = psutil.Process(pid)
        create_time = proc.create_time()
        return ProcessInfo(pid=pid, start_ticks=round(create_time * 100), create_time=create_time, uid=None,
                           username=None, cmdline=(), status=psutil.STATUS_RUNNING, ppid=None)
    except psutil.Error:
        return None
