"""POSIX: processes through psutil, detached spawns in their own session, signals, flock probes. Linux
(fleet.platform.linux) and macOS (fleet.platform.macos) refine it; on any other POSIX it runs as is, with
exits polled."""

from __future__ import annotations

import sys

# Never imported on Windows (fleet.platform.current_platform); saying so lets mypy --platform win32 skip
# the rest of the file, imports included.
assert sys.platform != "win32"

import errno
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil
else:
    from fleet.platform.lazy_psutil import psutil

from fleet.platform.base import ExitWatch, ProcessInfo, ProcessStart, WakeChannel, refuse_protected, still_runs
from fleet.platform.children import SpawnedChildren
from fleet.platform.executables import which
from fleet.platform.exits import PollingExitWatch
from fleet.store.files import open_append
from fleet.store.layout import StateDir


_ATTRS = ["pid", "create_time", "uids", "username", "cmdline", "status", "ppid"]
EXITED = "has already exited (zombie)"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class PosixPlatform:
    name = "posix"

    def __init__(self) -> None:
        self.children = SpawnedChildren()

    # ------------------------------------------------------------ identity

    def _info(self, d: dict[str, Any]) -> ProcessInfo:
        uids = d.get("uids")
        create_time = d.get("create_time") or 0.0
        return ProcessInfo(
            pid=d["pid"], start_ticks=round(create_time * 100), create_time=create_time,
            uid=uids.real if uids else None, username=d.get("username"), cmdline=tuple(d.get("cmdline") or ()),
            status=d.get("status") or "unknown", ppid=d.get("ppid"),
        )

    def process_info(self, pid: int) -> ProcessInfo | None:
        if pid <= 0:
            return None
        try:
            d = psutil.Process(pid).as_dict(attrs=_ATTRS, ad_value=None)
        except psutil.Error:
            return None
        if d.get("create_time") is None:
            return None
        return self._info(d)

    def process_environ(self, pid: int) -> dict[str, str] | None:
        try:
            return psutil.Process(pid).environ()
        except psutil.Error:
            return None

    def process_starts(self) -> Iterator[ProcessStart]:
        """psutil reads a process whole: each start carries its info."""
        return (ProcessStart(info.pid, info.start_ticks, info.create_time, info) for info in self.iter_processes())

    def iter_processes(self) -> Iterator[ProcessInfo]:
        uid = self.current_uid()
        for proc in psutil.process_iter(_ATTRS, ad_value=None):
            d = proc.info
            uids = d.get("uids")
            if uids is None or uids.real != uid or d.get("create_time") is None:
                continue
            yield self._info(d)

    def current_uid(self) -> int | None:
        return os.getuid()

    def child_environ(self, pid: int) -> dict[str, str] | None:
        return self.children.environ(pid)

    def process_group(self, pid: int) -> tuple[int | None, int | None]:
        """(process group id, session id) of a live process; (None, None) when gone."""
        try:
            return os.getpgid(pid), os.getsid(pid)
        except OSError:
            return None, None

    def lock_is_held(self, path: str) -> bool:
        import fcntl
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return False
        try:
            # A shared probe: it can only collide with an exclusive holder, which is what we look for.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except OSError as exc:
            return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
        finally:
            os.close(fd)

    def drain_epoch(self) -> str:
        return ""  # Hermes derives its epoch from Linux's boot id; elsewhere it has none and checks none

    def find_executable(self, name: str) -> str | None:
        return which(name)

    # ------------------------------------------------------------ spawn and exits

    def spawn_detached(self, argv: list[str], env: dict[str, str], cwd: str, log_path: str) -> int:
        import subprocess  # not at the top: `status` and `diff` use this platform and spawn nothing

        log_fd = open_append(log_path)
        try:
            # Own session: the gateway outlives us, and a terminal hangup never reaches it (Hermes leaves SIGHUP default).
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, cwd=cwd, env=env,
                                    start_new_session=True, close_fds=True)
        finally:
            os.close(log_fd)
        return self.children.add(proc, env)

    def spawn_daemon(self, argv: list[str], log_fd: int, stdin_fd: int | None = None) -> int:
        """Start `argv` through an intermediate that exits at once, so the new process is re-parented
        to init (or the session's subreaper) from its first instant. A controller started by a CLI
        that runs inside a gateway's process tree thus never has that gateway among its ancestors,
        which the never-signal guard would otherwise protect from it."""
        import subprocess

        read_end, write_end = os.pipe()
        intermediate = os.fork()
        if intermediate == 0:  # pragma: no cover - runs in the forked child, which only spawns and leaves
            code = 1
            try:
                os.close(read_end)
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL if stdin_fd is None else stdin_fd,
                                        stdout=log_fd, stderr=log_fd,
                                        start_new_session=True, close_fds=True)
                os.write(write_end, str(proc.pid).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        try:
            with os.fdopen(read_end, "rb") as pipe:
                written = pipe.read()
        finally:
            os.waitpid(intermediate, 0)
        if not written:
            raise OSError(f"could not start {argv[0]!r}")
        return int(written)

    def scoped_command(self, unit_name: str, argv: list[str], *, stop_timeout: float) -> list[str]:
        return argv

    def reap(self, pid: int) -> tuple[bool, int | None]:
        return self.children.reap(pid)

    def spawn_caveat(self, pid: int) -> str | None:
        return None  # its own session is all a detached gateway needs here

    def exit_watch(self) -> ExitWatch:
        return PollingExitWatch()

    # ------------------------------------------------------------ signals

    def never_signal(self, pid: int) -> str | None:
        if pid <= 1:
            return f"pid {pid} is the init process" if pid == 1 else f"pid {pid} names no single process"
        me = os.getpid()
        if pid == me:
            return f"pid {pid} is this controller itself"
        if pid in _ancestors(me, self._parents):
            return f"pid {pid} is an ancestor of this controller"
        return self._refusal(pid)

    def _refusal(self, pid: int) -> str | None:
        return _psutil_refusal(pid)

    def _parents(self, pid: int) -> frozenset[int]:
        """Every process above `pid`, up to init; none when it is gone."""
        try:
            return frozenset(p.pid for p in psutil.Process(pid).parents())
        except psutil.Error:
            return frozenset()

    def request_stop(self, pid: int, *, interrupt: bool = False) -> None:
        self._signal_one(pid, signal.SIGINT if interrupt else signal.SIGTERM)

    def kill_tree(self, pid: int, markers: Mapping[str, str]) -> None:
        refuse_protected(self, pid)
        try:
            descendants = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        members = [d for d in descendants if self._in_tree(pid, d.pid, markers)]
        try:
            if _leads_group(pid) and not self._protected_in_group(pid):
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:  # a group whose other members we may not signal
            os.kill(pid, signal.SIGKILL)
        for child in members:  # marked children that left the group (their own setsid) die too
            try:
                child.kill()  # psutil refuses a PID reused since `children()` listed it
            except psutil.Error:
                pass

    def kill_process(self, pid: int) -> None:
        """SIGKILL one process, nothing else (its group may hold processes that are not ours)."""
        self._signal_one(pid, signal.SIGKILL)

    def _signal_one(self, pid: int, signum: int) -> None:
        """`signum` to `pid` once `never_signal` allows it; a process already gone needs no signal."""
        refuse_protected(self, pid)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def _protected_in_group(self, pgid: int) -> bool:
        """Whether killing process group `pgid` would reach a process never_signal refuses (this controller,
        an ancestor, another user's setuid program the gateway ran): then its members die one by one."""
        for pid in psutil.pids():
            try:
                if pid == pgid or os.getpgid(pid) != pgid:
                    continue
            except OSError:
                continue
            refusal = self.never_signal(pid)
            if refusal and not refusal.endswith(EXITED):
                return True
        return False

    def _in_tree(self, root: int, pid: int, markers: Mapping[str, str]) -> bool:
        """A descendant belongs to the gateway's tree by its session or group (led by the gateway), its
        service scope (the gateway's own), or the profile's markers; a bare descendant never does."""
        if self.never_signal(pid):
            return False
        try:
            if os.getsid(pid) == root or os.getpgid(pid) == root:
                return True
        except OSError:
            return False
        scope = self._own_scope(root)
        if scope is not None and self._own_scope(pid) == scope:
            return True
        env = self.process_environ(pid)
        return bool(markers) and env is not None and all(env.get(k) == v for k, v in markers.items())

    def _own_scope(self, pid: int) -> str | None:
        """The service scope the controller started `pid` in, where the OS has them."""
        return None

    # ------------------------------------------------------------ the controller itself

    def open_wake_channel(self, state: StateDir) -> WakeChannel:
        from fleet.platform.wake import open_wake_channel  # the controller's, once: no CLI command opens one

        return open_wake_channel(state, unix=True)

    def on_stop_request(self, handler: Callable[[], None]) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda _signum, _frame: handler())

    def stop_controller_process(self, state: StateDir, info: ProcessInfo, timeout: float) -> None:
        """SIGTERM, which the controller handles by releasing the fleet and exiting 0."""
        self._signal_if_still(info, signal.SIGTERM)

    def _signal_if_still(self, info: ProcessInfo, signum: int) -> None:
        """`signum` to the process `info` describes, unless its PID belongs to another process by now (checked just
        before: a PID is reused only after many others were handed out)."""
        if still_runs(self, info):
            try:
                os.kill(info.pid, signum)
            except ProcessLookupError:
                pass


_ANCESTORS_FOR = 1.0  # seconds one walk of this process's ancestors is reused
_ancestors_seen: dict[int, tuple[float, frozenset[int]]] = {}


def _ancestors(pid: int, parents: Callable[[int], frozenset[int]]) -> frozenset[int]:
    """The pids above `pid`, walked at most once a second: asked before every signal, and a controller's
    ancestors only ever shrink (a parent that exits is replaced by init or a subreaper above it)."""
    now = time.monotonic()
    seen = _ancestors_seen.get(pid)
    if seen is not None and now - seen[0] < _ANCESTORS_FOR:
        return seen[1]
    found = parents(pid)
    _ancestors_seen.clear()
    _ancestors_seen[pid] = (now, found)
    return found


def _psutil_refusal(pid: int) -> str | None:
    """macOS and other POSIX: another user, or a kernel task (no command line and no executable)."""
    try:
        proc = psutil.Process(pid)
        uids = proc.uids()
    except psutil.NoSuchProcess:
        return None
    except psutil.Error as exc:
        return f"pid {pid} cannot be inspected ({exc})"
    if any(u != os.getuid() for u in (uids.real, uids.effective, uids.saved)):
        return f"pid {pid} runs as another user (uid {uids.real})"
    try:
        if not proc.cmdline() and not proc.exe():
            return f"pid {pid} is a kernel task (no command line, no executable)"
    except psutil.Error as exc:
        return f"pid {pid} cannot be inspected ({exc})"
    return None


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False
