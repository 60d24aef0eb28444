"""Reading the children's shared started log: who started, with which config, and when."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class ChildEvent:
    name: str
    pid: int
    token: str
    monotonic_ns: int
    time_ns: int
    kind: str  # start | stop

    @classmethod
    def parse(cls, line: str) -> "ChildEvent | None":
        parts = line.split()
        if len(parts) != 6:
            return None
        name, pid, token, mono, wall, kind = parts
        try:
            return cls(name, int(pid), token, int(mono), int(wall), kind)
        except ValueError:
            return None


class EventLog:
    """Incremental reader: each refresh parses only the bytes appended since the last one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._pending = b""
        self.events: list[ChildEvent] = []

    def refresh(self) -> list[ChildEvent]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._pending + chunk
        *lines, self._pending = data.split(b"\n")
        fresh = [e for e in (ChildEvent.parse(raw.decode()) for raw in lines) if e is not None]
        self.events.extend(fresh)
        return fresh

    def starts(self, name: str | None = None, since_ns: int = 0) -> list[ChildEvent]:
        return [
            e
            for e in self.events
            if e.kind == "start" and e.monotonic_ns >= since_ns and (name is None or e.name == name)
        ]

    def live_pids(self, name: str | None = None) -> dict[str, list[int]]:
        """Per child name (or only `name`), the started processes that are still alive (more than one = a
        duplicate)."""
        stopped = {e.pid for e in self.events if e.kind == "stop"}
        by_name: dict[str, list[int]] = {}
        for e in self.starts(name):
            if e.pid not in stopped and is_same_live_process(e):
                by_name.setdefault(e.name, []).append(e.pid)
        return by_name

    def all_pids(self) -> set[int]:
        return {e.pid for e in self.events}


def is_same_live_process(event: ChildEvent) -> bool:
    """Alive, not a zombie, and created just before it logged this start (so not a recycled PID)."""
    try:
        proc = psutil.Process(event.pid)
        started = event.time_ns / 1e9
        if not (started - 30.0 <= proc.create_time() <= started + 0.05):
            return False
        return proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
