"""Linux and macOS: processes, detached spawns, signals, flock probes."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from typing import Iterator

import psutil

from fleet.platform.base import ProcessInfo
from fleet.store.files import open_append

_ATTRS = ["pid", "create_time", "uids", "username", "cmdline", "status", "ppid"]
_PROC_STATES = {"R": "running", "S": "sleeping", "D": "disk-sleep", "Z": "zombie", "T": "stopped",
                "t": "tracing-stop", "X": "dead", "x": "dead", "I": "idle", "W": "waking", "P": "parked"}


def proc_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: the start time in clock ticks since boot, as Hermes records it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    try:
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


class PosixPlatform:
    def __init__(self) -> None:
        self.name = "linux" if sys.platform.startswith("linux") else ("macos" if sys.platform == "darwin" else "posix")
        self._has_proc = os.path.isdir("/proc/self") and self.name == "linux"
        self.children: dict[int, subprocess.Popen] = {}
        if self._has_proc:
            self._boot_time = psutil.boot_time()
            self._clock_ticks = os.sysconf("SC_CLK_TCK")

    def _ticks(self, pid: int, create_time: float) -> int | None:
        if self._has_proc:
            return proc_start_ticks(pid)
        return int(round(create_time * 100))

    def _info(self, d: dict) -> ProcessInfo:
        uids = d.get("uids")
        return ProcessInfo(
            pid=d["pid"], start_ticks=self._ticks(d["pid"], d.get("create_time") or 0.0),
            create_time=d.get("create_time") or 0.0, uid=uids.real if uids else None,
            username=d.get("username"), cmdline=tuple(d.get("cmdline") or ()),
            status=d.get("status") or "unknown", ppid=d.get("ppid"),
        )

    def process_info(self, pid: int) -> ProcessInfo | None:
        if pid <= 0:
            return None
        if self._has_proc:
            return self._proc_info(pid)
        try:
            proc = psutil.Process(pid)
            d = proc.as_dict(attrs=_ATTRS, ad_value=None)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.Error:
            return None
        if d.get("create_time") is None:
            return None
        return self._info(d)

    def _proc_info(self, pid: int) -> ProcessInfo | None:
        """Linux fast path: three reads of /proc instead of psutil's dozen (the controller does this
        for every profile on every pass)."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
            uid = os.stat(f"/proc/{pid}").st_uid
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                raw = fh.read()
        except (FileNotFoundError, ProcessLookupError):
            return None
        except OSError:
            return None
        try:
            fields = stat[stat.rindex(b")") + 2:].split()
            state, ppid, ticks = fields[0].decode(), int(fields[1]), int(fields[19])
        except (ValueError, IndexError):
            return None
        cmdline = tuple(a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")[:-1]) if raw else ()
        return ProcessInfo(pid=pid, start_ticks=ticks, create_time=self._boot_time + ticks / self._clock_ticks,
                           uid=uid, username=None, cmdline=cmdline, status=_PROC_STATES.get(state, "unknown"),
                           ppid=ppid)

    def process_environ(self, pid: int) -> dict[str, str] | None:
        if self._has_proc:
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    raw = fh.read()
            except OSError:
                return None
            env = {}
            for item in raw.split(b"\0"):
                key, sep, value = item.partition(b"=")
                if sep:
                    env[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
            return env
        try:
            return psutil.Process(pid).environ()
        except psutil.Error:
            return None

    def iter_processes(self) -> Iterator[ProcessInfo]:
        uid = self.current_uid()
        if self._has_proc:
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    try:
                        if entry.stat().st_uid != uid:
                            continue
                    except OSError:
                        continue
                    info = self._proc_info(int(entry.name))
                    if info is not None:
                        yield info
            return
        for proc in psutil.process_iter(_ATTRS, ad_value=None):
            d = proc.info
            uids = d.get("uids")
            if uids is None or uids.real != uid or d.get("create_time") is None:
                continue
            yield self._info(d)

    def current_uid(self) -> int | None:
        return os.getuid()

    def spawn_detached(self, argv: list[str], env: dict[str, str], cwd: str, log_path: str) -> int:
        log_fd = open_append(log_path)
        try:
            # Own session: the gateway outlives us, and a terminal hangup never reaches it (Hermes leaves SIGHUP default).
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, cwd=cwd, env=env,
                                    start_new_session=True, close_fds=True)
        finally:
            os.close(log_fd)
        self.children[proc.pid] = proc
        return proc.pid

    def reap(self, pid: int) -> tuple[bool, int | None]:
        """(exited, exit code) for a child we spawned; (False, None) for others or still running.
        Exit codes follow the shell: a death by signal N is -N."""
        proc = self.children.get(pid)
        if proc is None:
            return (False, None)
        code = proc.poll()
        if code is None:
            return (False, None)
        del self.children[pid]
        return (True, code)

    def request_stop(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def kill_tree(self, pid: int) -> None:
        try:
            root = psutil.Process(pid)
            descendants = root.children(recursive=True)
        except psutil.Error:
            descendants = []
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(pid, signal.SIGKILL)
        for child in descendants:  # children that left the group (their own setsid) die too
            try:
                child.kill()
            except psutil.Error:
                pass

    def kill_process(self, pid: int) -> None:
        """SIGKILL one process, nothing else (its group may hold processes that are not ours)."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

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
        return boot_epoch()

    def exit_waiter(self, pid: int) -> int | None:
        """A file descriptor that becomes readable when `pid` exits (Linux pidfd), works for non-children too."""
        if not hasattr(os, "pidfd_open"):
            return None
        try:
            return os.pidfd_open(pid)
        except OSError:
            return None


def boot_epoch() -> str:
    """Hermes' drain-request epoch: `<boot_id>:<start ticks of pid 1>`; empty without /proc (check off)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            boot_id = fh.read().strip()
    except OSError:
        return ""
    ticks = proc_start_ticks(1)
    return f"{boot_id}:{ticks}" if ticks is not None else ""
