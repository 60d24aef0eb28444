"""Linux: the POSIX platform with /proc fast paths (the controller reads every profile's process on every
pass), start ticks that survive clock steps, pidfd exit watches, Hermes' boot epoch, and the transient
service scopes gateways run in under a systemd user manager."""

from __future__ import annotations

import sys

# Never imported on Windows (fleet.platform.current_platform); saying so lets mypy --platform win32 skip
# the rest of the file, imports included.
assert sys.platform != "win32"

import os
import signal
from collections.abc import Iterator


from fleet.platform.base import ExitWatch, ProcessInfo, ProcessStart, still_runs
from fleet.platform.exits import PidfdExitWatch, PollingExitWatch
from fleet.platform.posix import EXITED, PosixPlatform
from fleet.platform.systemd_scope import scope_command


PF_KTHREAD = 0x00200000  # include/linux/sched.h: the task is a kernel thread
KTHREADD = 2  # Linux: parent of every kernel thread
_PROC_STATES = {"R": "running", "S": "sleeping", "D": "disk-sleep", "Z": "zombie", "T": "stopped",
                "t": "tracing-stop", "X": "dead", "x": "dead", "I": "idle", "W": "waking", "P": "parked"}


def _boot_time() -> float:
    """The `btime` line of /proc/stat: what psutil.boot_time() reads, without importing psutil."""
    with open("/proc/stat", "rb") as fh:
        for line in fh:
            if line.startswith(b"btime"):
                return float(line.split()[1])
    raise RuntimeError("no btime line in /proc/stat")


def read_proc(path: str) -> bytes:
    """A whole /proc file, unbuffered: one open, reads to the end, one close. A buffered `open` adds an fstat, a
    terminal check and two seeks to each file, and a scan of the process table reads three files a process."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_stat(pid: int) -> bytes:
    """/proc/<pid>/stat in one read: it is a line of at most a few hundred bytes (the command name in it is cut
    to 15), so the read to the end that `read_proc` adds is a syscall more a process for nothing."""
    fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _stat_field(pid: int, number: int) -> int | None:
    """Field `number` (1-based, as proc(5) counts) of /proc/<pid>/stat, None when the process is gone or the
    file unreadable. The command name, field 2, may hold spaces: fields are counted after its parenthesis."""
    try:
        data = read_stat(pid)
        return int(data[data.rindex(b")") + 2:].split()[number - 3])
    except (OSError, ValueError, IndexError):
        return None


def _parent_of(pid: int) -> int:
    """Field 4 of /proc/<pid>/stat; 0 when the process is gone or unreadable."""
    return _stat_field(pid, 4) or 0


def proc_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: the start time in clock ticks since boot, as Hermes records it."""
    return _stat_field(pid, 22)


class LinuxPlatform(PosixPlatform):
    name = "linux"

    def __init__(self) -> None:
        super().__init__()
        self._boot_time = _boot_time()
        self._clock_ticks = os.sysconf("SC_CLK_TCK")

    def _parents(self, pid: int) -> frozenset[int]:
        """The parent links of /proc/<pid>/stat (field 4), followed up to init, as psutil's parents() does."""
        found: set[int] = set()
        while pid > 0 and len(found) < 65536:
            pid = _parent_of(pid)
            if pid <= 0 or pid in found:
                break
            found.add(pid)
        return frozenset(found)

    def process_info(self, pid: int) -> ProcessInfo | None:
        """Three reads of /proc instead of psutil's dozen."""
        return self._process_info(pid, None)

    def _process_info(self, pid: int, uid: int | None) -> ProcessInfo | None:
        """`uid`: the owner, when the caller has already looked at /proc/<pid> (a scan has)."""
        if pid <= 0:
            return None
        try:
            stat = read_stat(pid)
            if uid is None:
                uid = os.stat(f"/proc/{pid}").st_uid
            raw = read_proc(f"/proc/{pid}/cmdline")
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
        try:
            raw = read_proc(f"/proc/{pid}/environ")
        except OSError:
            return None
        env = {}
        for item in raw.split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep:
                env[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        return env

    def iter_processes(self) -> Iterator[ProcessInfo]:
        uid = self.current_uid()
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if entry.stat().st_uid != uid:
                        continue
                except OSError:
                    continue
                info = self._process_info(int(entry.name), uid)
                if info is not None:
                    yield info

    def process_starts(self) -> Iterator[ProcessStart]:
        """One read of /proc/<pid>/stat a process (every user's): the owner and the command line are read only
        for the few a question needs (`process_info`)."""
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                pid = int(entry.name)
                try:
                    stat = read_stat(pid)
                    ticks = int(stat[stat.rindex(b")") + 2:].split()[19])
                except (OSError, ValueError, IndexError):
                    continue
                yield ProcessStart(pid, ticks, self._boot_time + ticks / self._clock_ticks)

    def drain_epoch(self) -> str:
        return boot_epoch()

    def scoped_command(self, unit_name: str, argv: list[str], *, stop_timeout: float) -> list[str]:
        """In a transient systemd scope when a user manager answers (fleet.platform.systemd_scope)."""
        return scope_command(unit_name, argv, stop_timeout=stop_timeout) or argv

    def _signal_if_still(self, info: ProcessInfo, signum: int) -> None:
        """Through a pidfd: the process is checked and signalled as one, its PID cannot change hands between."""
        if sys.platform != "linux":  # what mypy checks for other platforms; never true here
            super()._signal_if_still(info, signum)
            return
        try:
            handle = os.pidfd_open(info.pid)
        except ProcessLookupError:
            return
        except (AttributeError, OSError):  # no pidfd (before Linux 5.3)
            super()._signal_if_still(info, signum)
            return
        try:
            if still_runs(self, info):
                signal.pidfd_send_signal(handle, signum)
        except ProcessLookupError:
            pass
        finally:
            os.close(handle)

    def exit_watch(self) -> ExitWatch:
        if not hasattr(os, "pidfd_open"):
            return PollingExitWatch()
        return PidfdExitWatch()

    def _refusal(self, pid: int) -> str | None:
        return _proc_refusal(pid)

    def _own_scope(self, pid: int) -> str | None:
        """The transient scope the controller started `pid` in (hermes-fleet-<profile>-<ms>.scope), or None:
        any other cgroup (a login session, a terminal) holds processes that are not the gateway's."""
        path = _cgroup(pid)
        if path:
            leaf = path.rsplit("/", 1)[-1]
            if leaf.startswith("hermes-fleet-") and leaf.endswith(".scope"):
                return path
        return None


def _proc_refusal(pid: int) -> str | None:
    """Linux: another user (any of real, effective, saved uid), a kernel thread, or unreadable."""
    try:
        stat = read_stat(pid)
        status = read_proc(f"/proc/{pid}/status").decode("ascii", "replace")
        cmdline = read_proc(f"/proc/{pid}/cmdline")
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


def boot_epoch() -> str:
    """Hermes' drain-request epoch: `<boot_id>:<start ticks of pid 1>`; empty without /proc (check off)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            boot_id = fh.read().strip()
    except OSError:
        return ""
    ticks = proc_start_ticks(1)
    return f"{boot_id}:{ticks}" if ticks is not None else ""
