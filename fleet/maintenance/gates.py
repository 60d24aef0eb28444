"""The gates a maintenance restart must pass: idle long enough, inside a window. Pure functions."""

from __future__ import annotations

from datetime import datetime, tzinfo

from fleet.maintenance.model import Gate
from fleet.spec.cron import last_fire_at, next_fire_at, parse_cron
from fleet.spec.durations import format_duration
from fleet.spec.model import MaintenanceWindow

_NEXT_OPEN_HORIZON = 31 * 86400.0


def _zone(name: str) -> tzinfo:
    # Imported on first use: only a fleet with maintenance windows needs the time zone database in the controller.
    from zoneinfo import ZoneInfo
    return ZoneInfo(name)


def _inside(window: MaintenanceWindow, now: float) -> bool:
    """Open from each fire instant for `duration` seconds of real time, whatever the wall clock does meanwhile."""
    return last_fire_at(parse_cron(window.schedule), _zone(window.timezone), now, window.duration) is not None


def _next_open(window: MaintenanceWindow, now: float) -> datetime | None:
    tz = _zone(window.timezone)
    t = next_fire_at(parse_cron(window.schedule), tz, now, _NEXT_OPEN_HORIZON)
    return None if t is None else datetime.fromtimestamp(t, tz)


def window_gate(windows: tuple[MaintenanceWindow, ...], now: float) -> Gate:
    """No windows: always open. Any allow window: only inside one. A deny window always wins."""
    if not windows:
        return Gate("window", True, "no windows")
    deny = next((w for w in windows if w.kind == "deny" and _inside(w, now)), None)
    if deny is not None:
        return Gate("window", False, f"deny window ({deny.schedule}, {format_duration(deny.duration)}) is open")
    allows = [w for w in windows if w.kind == "allow"]
    if not allows or any(_inside(w, now) for w in allows):
        return Gate("window", True, "inside an allowed window" if allows else "no deny window open")
    return Gate("window", False, f"window opens {_next_opening(allows, now)}")


def _next_opening(allows: list[MaintenanceWindow], now: float) -> str:
    """When the first of the allow windows opens next, as a person reads it."""
    upcoming = [t for t in (_next_open(w, now) for w in allows) if t is not None]
    return min(upcoming).strftime("%a %H:%M %Z") if upcoming else "not within a month"


def idle_gate(active: int | None, state: str | None, idle_since: float | None, idle_seconds: float, now: float) -> Gate:
    if active:
        return Gate("idle", False, f"{active} active agent{'s' if active != 1 else ''}")
    if state == "draining":
        return Gate("idle", False, "gateway is draining")
    if idle_since is None:
        return Gate("idle", False, f"idle 0s of {format_duration(idle_seconds)}")
    idle_for = max(0.0, now - idle_since)
    if idle_for < idle_seconds:
        return Gate("idle", False, f"idle {format_duration(idle_for)} of {format_duration(idle_seconds)}")
    return Gate("idle", True, f"idle {format_duration(idle_for)}")
