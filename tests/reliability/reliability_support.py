"""Shared plumbing of the reliability suite: the CLI and controller as subprocesses, decoy
processes that record every signal they receive, and careful process bookkeeping.

Nothing here signals a process unless the caller proves it is its own: a pid together with the
create time observed when the process was found (the PID-reuse guard), and for fleet processes
an environment that names the test's own state directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fleet.platform.systemd_scope import SERVICE_ENV_TO_STRIP
from fleet_harness import alive, create_time, environ_of, proc_start_ticks  # noqa: F401 - re-exported

from helpers import poll_until

REPO = Path(__file__).resolve().parents[2]
DEMO_HERMES = REPO / "examples" / "demo" / "hermes"
CLI_TIMEOUT = 60.0

# A decoy: an unrelated process that writes every catchable signal it receives into a file.
DECOY_SOURCE = r"""
import os, signal, sys, time
log_path, ready_path = sys.argv[1], sys.argv[2]
if sys.argv[3:] == ["nondumpable"]:  # /proc/<pid>/environ then reads as nothing to other users
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
def record(signum, _frame):
    with open(log_path, "a") as fh:
        fh.write(f"{signum} {time.time():.3f}\n")
for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT", "SIGCONT", "SIGPIPE", "SIGALRM"):
    signal.signal(getattr(signal, name), record)
open(ready_path, "w").close()
while True:
    time.sleep(0.5)
"""


def fleet_env(state: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every CLI/controller process a test runs: its own state dir, nothing inherited
    that could point a process at another fleet or another Hermes root."""
    env = dict(os.environ)
    for key in [k for k in env if k.startswith(("HERMES_FLEET_", "FAKE_HERMES_"))]:
        del env[key]
    for key in ("HERMES_HOME", "LISTEN_FDS", "LISTEN_PID", *SERVICE_ENV_TO_STRIP):
        env.pop(key, None)
    env["HERMES_FLEET_STATE_DIR"] = str(state)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def run_cli(state: Path, *args: str, cwd: Path, timeout: float = CLI_TIMEOUT, stdin: str | None = None,
            env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`hermes-fleet ARGS --state-dir STATE`, as a user runs it; a hang fails the test at `timeout`."""
    argv = [sys.executable, "-m", "fleet.cli.main", *args, "--state-dir", str(state)]
    return subprocess.run(argv, cwd=str(cwd), env=fleet_env(state, env_extra), capture_output=True, text=True,
                          timeout=timeout, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def explain(result: subprocess.CompletedProcess) -> str:
    return f"argv {result.args}\nexit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


def kill_verified(pid: int, created: float, sig: int = signal.SIGKILL) -> bool:
    """Signal `pid` only if it is still the process created at `created` (stopped counts, zombies do not)."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - created) >= 0.01 or proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
    except psutil.Error:
        return False
    try:
        os.kill(pid, sig)
        return True
    except OSError:
        return False


@dataclass
class Decoy:
    """An unrelated process (not a gateway, not ours to signal) that logs every signal it gets."""
    popen: subprocess.Popen
    log: Path
    created: float
    ticks: int | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signals(self) -> list[str]:
        try:
            return [line for line in self.log.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def status(self) -> str:
        try:
            return psutil.Process(self.pid).status()
        except psutil.Error:
            return "gone"


@dataclass
class Decoys:
    folder: Path
    items: list[Decoy] = field(default_factory=list)

    def start(self, n: int, flavour: str = "plain") -> list[Decoy]:
        """`flavour`: "plain" (our environment less the fleet's markers), "envless" (an empty
        environment, as `env -i` gives) or "nondumpable" (PR_SET_DUMPABLE 0)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        started = []
        for _ in range(n):
            i = len(self.items)
            log, ready = self.folder / f"decoy-{i}.signals", self.folder / f"decoy-{i}.ready"
            env = {k: v for k, v in os.environ.items() if not k.startswith(("HERMES_FLEET_", "FAKE_HERMES_"))}
            if flavour == "envless":
                env = {}
            argv = [sys.executable, "-c", DECOY_SOURCE, str(log), str(ready)]
            if flavour == "nondumpable":
                argv.append("nondumpable")
            popen = subprocess.Popen(argv, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
            decoy = Decoy(popen, log, create_time(popen.pid) or 0.0, proc_start_ticks(popen.pid))
            self.items.append(decoy)
            started.append(decoy)
        for decoy in started:
            ready = self.folder / f"decoy-{self.items.index(decoy)}.ready"
            if not poll_until(ready.exists, 20):
                raise AssertionError(f"decoy pid {decoy.pid} did not install its signal handlers")
        return started

    def problems(self) -> list[str]:
        out = []
        for d in self.items:
            if d.popen.poll() is not None:
                out.append(f"decoy pid {d.pid} died (exit {d.popen.returncode})")
            elif d.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
                out.append(f"decoy pid {d.pid} was stopped (SIGSTOP)")
            if d.signals():
                out.append(f"decoy pid {d.pid} received signals: {d.signals()}")
        return out

    def cleanup(self) -> None:
        for d in self.items:
            if d.popen.poll() is None:
                d.popen.kill()
            try:
                d.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def fake_record(profile: str, pid: int, *, start_ticks: int | None, create_time_: float, spec_hash: str | None,
                epoch: int = 1) -> dict:
    """A PID record in the format hermes-fleet writes (fleet/store/records.py)."""
    return {"profile": profile, "pid": pid, "start_ticks": start_ticks, "create_time": create_time_,
            "spec_hash": spec_hash, "started_at": time.time(), "controller_pid": os.getpid(), "epoch": epoch,
            "adopted": False, "managed_by": "hermes-fleet"}


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".test-{os.getpid()}-{time.monotonic_ns()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def symlink_atomic(path: Path, target: Path) -> None:
    tmp = path.with_name(f".test-{os.getpid()}-{time.monotonic_ns()}.lnk")
    os.symlink(target, tmp)
    os.replace(tmp, path)


def write_json(path: Path, value: object) -> None:
    write_atomic(path, (json.dumps(value) + "\n").encode())


def fleet_processes(state: Path) -> list[psutil.Process]:
    """Live processes whose environment names this state directory: ours by construction."""
    out = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == me or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("HERMES_FLEET_STATE_DIR") == str(state):
                out.append(proc)
        except psutil.Error:
            continue
    return out


def sweep(state: Path) -> None:
    """SIGKILL every process of this state directory: controllers first (so none respawns a gateway)."""
    for _ in range(3):
        procs = fleet_processes(state)
        if not procs:
            return
        controllers = [p for p in procs if _is_controller(p)]
        for group in (controllers, [p for p in procs if p not in controllers]):
            for proc in group:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(group, timeout=5)


def _is_controller(proc: psutil.Process) -> bool:
    try:
        return "fleet.controller" in proc.cmdline()
    except psutil.Error:
        return False


def no_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" not in text


def read_only_bind(where: Path) -> bool:
    """`where` remounted read-only through a bind mount of itself (root needed); the processes that already
    write there through the original mount keep doing so."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    if subprocess.run(["mount", "--bind", str(where), str(where)], capture_output=True).returncode != 0:
        return False
    if subprocess.run(["mount", "-o", "remount,bind,ro", str(where)], capture_output=True).returncode != 0:
        unmount(where)
        return False
    return True


def unmount(where: Path) -> None:
    """Unmount `where`; a mount kept busy by a descriptor opened through it is detached lazily (it then
    goes once the descriptor closes), so no test leaves a read-only view over a state directory behind."""
    for _ in range(20):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    done = subprocess.run(["umount", "-l", str(where)], capture_output=True)
    assert done.returncode == 0, f"cannot unmount {where}: {done.stderr.decode(errors='replace')}"


@contextlib.contextmanager
def kept_full(path: Path):
    """Fill the file system, then keep it full the way a runaway writer does: every block freed meanwhile is
    taken at once, so what the code under test frees is gone before its next write."""
    fill(path)
    stop = threading.Event()

    def take_freed_blocks() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            while not stop.is_set():
                try:
                    os.write(fd, b"\0" * 4096)
                except OSError:
                    stop.wait(0.0005)
        finally:
            os.close(fd)

    taker = threading.Thread(target=take_freed_blocks, daemon=True)
    taker.start()
    try:
        yield
    finally:
        stop.set()
        taker.join()
        path.unlink(missing_ok=True)


def fill(path: Path) -> None:
    """Write zeros until the file system is full (down to the last byte)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
