"""Linux and macOS: processes, detached spawns, signals, flock probes."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from typing import Iterator, Mapping

import psutil

from fleet.platform.base import ProcessInfo, SignalRefused
from fleet.store.files import open_append

_ATTRS = ["pid", "create_time", "uids", "username", "cmdline", "status", "ppid"]
PF_KTHREAD = 0x00200000  # include/linux/sched.h: the task is a kernel thread
KTHREADD = 2  # Linux: parent of every kernel thread
EXITED = "has already exited (zombie)"
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
        self._child_env: dict[int, dict[str, str]] = {}
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
        self._child_env[proc.pid] = dict(env)
        return proc.pid

    def spawn_daemon(self, argv: list[str], log_fd: int) -> int:
        """Start `argv` through an intermediate that exits at once, so the new process is re-parented
        to init (or the session's subreaper) from its first instant. A controller started by a CLI
        that runs inside a gateway's process tree thus never has that gateway among its ancestors,
        which the never-signal guard would otherwise protect from it."""
        read_end, write_end = os.pipe()
        intermediate = os.fork()
        if intermediate == 0:  # pragma: no cover - runs in the forked child, which only spawns and leaves
            code = 1
            try:
                os.close(read_end)
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
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

    def child_environ(self, pid: int) -> dict[str, str] | None:
        """The environment we gave a child we still hold unreaped: its PID cannot have been reused, and
        it holds before the child's exec too, when /proc still shows our own environment."""
        proc = self.children.get(pid)
        if proc is None or proc.returncode is not None:
            return None
        return self._child_env.get(pid)

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
        self._child_env.pop(pid, None)
        return (True, code)

    # -- signals: never_signal is the last line of defence, whatever a record or an observer said -----------
    def never_signal(self, pid: int) -> str | None:
        if pid <= 1:
            return f"pid {pid} is the init process" if pid == 1 else f"pid {pid} names no single process"
        me = os.getpid()
        if pid == me:
            return f"pid {pid} is this controller itself"
        if pid in _ancestors(me):
            return f"pid {pid} is an ancestor of this controller"
        if self._has_proc:
            return _proc_refusal(pid)
        return _psutil_refusal(pid)

    def _guard(self, pid: int) -> None:
        refusal = self.never_signal(pid)
        if refusal:
            raise SignalRefused(f"refused to signal pid {pid}: {refusal}")

    def request_stop(self, pid: int) -> None:
        self._signal_one(pid, signal.SIGTERM)

    def kill_tree(self, pid: int, markers: Mapping[str, str]) -> None:
        self._guard(pid)
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
        self._guard(pid)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def process_group(self, pid: int) -> tuple[int | None, int | None]:
        """(process group id, session id) of a live process; (None, None) when gone."""
        try:
            return os.getpgid(pid), os.getsid(pid)
        except OSError:
            return None, None

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
        scope = _own_scope(root)
        if scope is not None and _cgroup(pid) == scope:
            return True
        env = self.process_environ(pid)
        return bool(markers) and env is not None and all(env.get(k) == v for k, v in markers.items())

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


def _ancestors(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        parents = psutil.Process(pid).parents()
    except psutil.Error:
        return out
    return {p.pid for p in parents}


def _proc_refusal(pid: int) -> str | None:
    """Linux: another user (any of real, effective, saved uid), a kernel thread, or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/status", "rb") as fh:
            status = fh.read().decode("ascii", "replace")
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except FileNotFoundError:
        return None  # gone: a signal reaches nobody
    except OSError as exc:
        return f"pid {pid} cannot be inspected ({exc.strerror or exc})"
    try:
        fields = stat[stat.rindex(b")") + 2:].split()
        state, ppid, flags = fields[0], int(fields[1]), int(fields[6])
    except (ValueError, IndexError):
        return f"pid {pid} cannot be inspected"
    if state in (b"Z", b"X", b"x"):
        return f"pid {pid} {EXITED}"
    if flags & PF_KTHREAD or ppid == KTHREADD or pid == KTHREADD:
        return f"pid {pid} is a kernel thread"
    uids = next((line.split()[1:4] for line in status.splitlines() if line.startswith("Uid:")), None)
    if not uids or any(int(u) != os.getuid() for u in uids):
        return f"pid {pid} runs as another user (uid {'/'.join(uids or ['?'])})"
    if not cmdline and not _has_exe(pid):
        return f"pid {pid} is a kernel thread (no command line, no executable)"
    return None


def _has_exe(pid: int) -> bool:
    try:
        return bool(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False


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


def _cgroup(pid: int) -> str | None:
    """The unified (v2) cgroup path of `pid`, or None."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def _own_scope(pid: int) -> str | None:
    """The transient scope the controller started `pid` in (hermes-fleet-<profile>-<ms>.scope), or None:
    any other cgroup (a login session, a terminal) holds processes that are not the gateway's."""
    path = _cgroup(pid)
    if path:
        leaf = path.rsplit("/", 1)[-1]
        if leaf.startswith("hermes-fleet-") and leaf.endswith(".scope"):
            return path
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
