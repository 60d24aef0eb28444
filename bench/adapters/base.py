"""The common interface the scenarios drive, and the pieces every adapter shares.

An adapter runs one fleet at a time in its own session directory: it writes the tool's
config for N children (restart delay at the tool's minimum), starts the supervisor,
reports the supervisor's PID(s) and the child PIDs the supervisor believes it runs,
kills the supervisor with -9 and restarts it, applies a one-child config change, stops
the whole fleet gracefully, and finally tears everything down. Timing is measured by
the scenarios from outside; an adapter only acts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.install import ToolInstall
from bench import procs
from bench.procs import Tracker, alive, wait_until

CHILD_SCRIPT = Path(__file__).resolve().parent.parent / "child.py"
COMMAND_TIMEOUT = 180


@dataclass(frozen=True)
class ChildProgram:
    """The same tiny child for every supervisor: an isolated interpreter without site imports."""

    python: str
    script: str = str(CHILD_SCRIPT)

    def argv(self, name: str, log: Path) -> list[str]:
        return [self.python, "-I", "-S", self.script, name, str(log)]


@dataclass(frozen=True)
class Session:
    directory: Path
    names: tuple[str, ...]
    log: Path  # the children's shared started log


class CommandFailed(RuntimeError):
    pass


class Adapter(ABC):
    name: str = ""
    # How long a tool command may take (start, apply, stop, status); the scaling group raises it for large N.
    command_timeout: float = COMMAND_TIMEOUT

    def __init__(self, tool: ToolInstall, child: ChildProgram, tracker: Tracker) -> None:
        self.tool = tool
        self.child = child
        self.tracker = tracker
        self.session: Session | None = None
        self.tokens: dict[str, str] = {}

    # -- session ---------------------------------------------------------------------
    def open_session(self, directory: Path, n: int) -> Session:
        # A fresh directory every time: a reused --workdir must not carry state (restart
        # history, PID records, a PM2 dump) from an earlier run into this one.
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        names = tuple(f"c{i:03d}" for i in range(n))
        self.session = Session(directory, names, directory / "started.log")
        self.tokens = {name: "1" for name in names}
        self.write_config()
        return self.session

    @property
    def s(self) -> Session:
        assert self.session is not None, "open_session first"
        return self.session

    # -- what every tool implements ----------------------------------------------------
    @abstractmethod
    def write_config(self) -> None:
        """Render the tool's config for the session's children and current tokens."""

    @abstractmethod
    def start(self) -> None:
        """Start the supervisor from nothing; returns once the start command has returned."""

    @abstractmethod
    def supervisor_pids(self) -> list[int]:
        """The supervisor's own process(es): what idle overhead and kill -9 are about."""

    @abstractmethod
    def managed_child_pids(self) -> dict[str, int]:
        """Child name -> PID, as the supervisor sees it."""

    @abstractmethod
    def restart_supervisor(self) -> None:
        """Start the supervisor again after it was killed with -9, the way its docs say."""

    @abstractmethod
    def apply_config(self) -> None:
        """Make the running supervisor pick up the rewritten config."""

    @abstractmethod
    def stop_all(self) -> None:
        """Ask for a graceful stop of the whole fleet (and the supervisor)."""

    @abstractmethod
    def status_argv(self) -> list[str]:
        """The tool's own status/list command for the running fleet (what an operator types)."""

    @abstractmethod
    def _env(self) -> dict[str, str]:
        """The environment of the tool's commands (see base_env)."""

    def teardown(self) -> None:
        """Tool-specific polite shutdown before the tracker ends whatever survives."""

    # -- shared behaviour -------------------------------------------------------------
    def change_config(self, name: str, token: str) -> None:
        self.tokens[name] = token
        self.write_config()
        self.apply_config()

    def status(self) -> None:
        """Run the status command to completion (its output goes to the command log)."""
        self.run(self.status_argv(), env=self._env())

    def kill_supervisor(self) -> None:
        pids = self.supervisor_pids()
        for pid in pids:
            self.tracker.add(pid, f"{self.name} supervisor")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.reap_own()
        if not wait_until(lambda: not any(alive(p) for p in pids), 10.0):
            raise RuntimeError(f"{self.name}: supervisor survived SIGKILL")

    def supervisor_down(self) -> bool:
        self.reap_own()
        return not any(alive(p) for p in self.supervisor_pids())

    def reap_own(self) -> None:
        """Collect exit status of supervisors we started in the foreground (subclasses with Popen)."""

    def children_of(self, parent_pid: int) -> dict[str, int]:
        """Child name -> PID for our child program among the descendants of a supervisor."""
        try:
            descendants = psutil.Process(parent_pid).children(recursive=True)
        except psutil.Error:
            return {}
        found: dict[str, int] = {}
        for proc in descendants:
            try:
                argv = proc.cmdline()
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            if self.child.script in argv:
                index = argv.index(self.child.script)
                if index + 1 < len(argv):
                    found[argv[index + 1]] = proc.pid
        return found

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a tool command to completion (within `timeout`, default `command_timeout`); its output goes to
        the session's command log."""
        with open(self.s.directory / "commands.log", "a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            done = procs.run(argv, self.command_timeout if timeout is None else timeout, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            command = " ".join([Path(argv[0]).name, *argv[1:2]])
            raise CommandFailed(f"{self.name}: `{command} ...` exited {done.returncode} (see commands.log)")
        return done

    def spawn_foreground(self, argv: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a supervisor that stays in the foreground as our child, in its own session."""
        out = open(self.s.directory / log_name, "ab")
        try:
            proc = procs.popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()
        self.tracker.add(proc.pid, f"{self.name} supervisor")
        return proc


def base_env(home: Path, *, ours: bool = False) -> dict[str, str]:
    """A small, explicit environment for tool commands, with HOME inside the bench's work
    directory so no tool touches the real home (PATH is kept to find node etc.). For our own
    CLI (`ours`) PYTHONPATH is kept too: `PYTHONPATH=<checkout> python bench/run.py`
    benchmarks that checkout's hermes-fleet, not the one the CLI was installed from."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME") + (("PYTHONPATH",) if ours else ())
    env = {k: os.environ[k] for k in keep if k in os.environ}
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    return env


def python_executable() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


class ForegroundDaemonAdapter(Adapter):
    """A supervisor run as one foreground daemon process whose children are the managed programs
    (supervisord -n, circusd); SIGTERM to it is the graceful stop of the whole fleet."""

    proc: subprocess.Popen | None = None

    def supervisor_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def reap_own(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            procs.forget_child(self.proc)

    def managed_child_pids(self) -> dict[str, int]:
        if self.proc is None or self.proc.poll() is not None:
            return {}
        return self.children_of(self.proc.pid)

    def restart_supervisor(self) -> None:
        self.start()

    def stop_all(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
