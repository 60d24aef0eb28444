"""The children this controller spawned and still holds: their exit codes and the environment they were
given. While we hold one (unreaped on POSIX, its handle open on Windows) its PID cannot be reused, so what
we know of it needs no check against the process table."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # subprocess loads with the first spawn: `status` and `diff` spawn nothing
    import subprocess


class SpawnedChildren:
    def __init__(self) -> None:
        self._held: dict[int, tuple[subprocess.Popen, dict[str, str]]] = {}

    def add(self, proc: subprocess.Popen, env: dict[str, str]) -> int:
        self._held[proc.pid] = (proc, dict(env))
        return proc.pid

    def environ(self, pid: int) -> dict[str, str] | None:
        """The environment we gave a child that has not been reaped; it holds before the child's exec too,
        when the OS still shows our own environment for it."""
        held = self._held.get(pid)
        if held is None or held[0].returncode is not None:
            return None
        return held[1]

    def reap(self, pid: int) -> tuple[bool, int | None]:
        """(exited, exit code) for a child we spawned; (False, None) for others or one still running. Exit
        codes follow the shell: a death by signal N is -N."""
        held = self._held.get(pid)
        if held is None:
            return (False, None)
        code = held[0].poll()
        if code is None:
            return (False, None)
        del self._held[pid]
        return (True, code)

    def popen(self, pid: int) -> subprocess.Popen | None:
        held = self._held.get(pid)
        return held[0] if held else None

    def __contains__(self, pid: int) -> bool:
        return pid in self._held
