"""Short-lived helper processes the controller runs itself (git, for a followed source): started in a process
group of their own, so that when one overruns its time the whole group it started (git's ssh, its remote
helpers, its index-pack) is killed with it and nothing is left behind.

- POSIX: a new session (`start_new_session`), killed by SIGKILL to its process group.
- Windows: a new process group without a console, killed by `taskkill /F /T` (the tree; these are our own
  short-lived children, not gateways whose orphans could carry a reused PID's parent link for long).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.platform.base import Platform

CREATE_TIME_TOLERANCE = 0.05


@dataclass(frozen=True)
class HelperResult:
    """How a helper process ended: its exit code and what it wrote to stdout and stderr."""
    code: int | None  # None when it was killed at its timeout
    stdout: bytes
    stderr: bytes

    @property
    def timed_out(self) -> bool:
        return self.code is None


def _group_kwargs() -> dict:
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def start_helper(argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None, output_path: str) -> subprocess.Popen:
    """Start `argv` in its own process group, stdin from nothing, stdout and stderr appended to
    `output_path` (a file, not a pipe: a chatty helper can never block on a full pipe nobody reads)."""
    fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        return subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=fd,
                                stderr=subprocess.STDOUT, close_fds=True, **_group_kwargs())
    finally:
        os.close(fd)


def end_helper(proc: subprocess.Popen) -> None:
    """Kill a helper started by start_helper, with its whole group, and reap it. While it is unreaped its PID
    (and so the group it leads) cannot have been reused."""
    if proc.poll() is None:
        _kill_group(proc.pid)
        try:
            proc.kill()
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _kill_group(pid: int) -> None:
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, timeout=30,
                       creationflags=subprocess.CREATE_NO_WINDOW)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def run_helper(argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None, timeout: float) -> HelperResult:
    """Run `argv` in its own process group and collect its output; at `timeout` the group is killed."""
    proc = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, close_fds=True, **_group_kwargs())
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_helper(proc)
        out, err = proc.communicate()
        return HelperResult(None, out or b"", err or b"")
    return HelperResult(proc.returncode, out, err)


def end_orphaned_helper(platform: Platform, pid: int, create_time: float, program: str) -> str | None:
    """Kill the group of a helper a previous controller started and could not end (it was killed itself):
    only while `pid` is still that very process (same create time, our user, a command of `program`) and
    leads its group. None when it killed it, else why not."""
    info = platform.process_info(pid)
    if info is None or not info.alive:
        return "it is gone"
    if abs(info.create_time - create_time) >= CREATE_TIME_TOLERANCE:
        return f"the pid runs another process now (started {info.create_time:.2f}, not {create_time:.2f})"
    refusal = platform.never_signal(pid)
    if refusal:
        return refusal
    # An empty command line proves nothing either way: the kernel shows none for a moment while the process
    # forks (git starting ssh); its pid, start time and user are the proof then.
    if info.cmdline and program not in os.path.basename(info.cmdline[0]):
        return f"it runs {info.cmdline[0]}, not {program}"
    if sys.platform != "win32":
        try:
            if os.getpgid(pid) != pid:
                return "it does not lead its process group"
        except OSError:
            return "it is gone"
    _kill_group(pid)
    return None
