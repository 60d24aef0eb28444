"""A small five-field cron (minute hour day-of-month month day-of-week) for maintenance windows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_NAMES = {
    3: {n: i + 1 for i, n in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
    4: {n: i for i, n in enumerate("sun mon tue wed thu fri sat".split())},
}
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_any: bool
    weekday_any: bool

    def matches(self, t: datetime) -> bool:
        if t.minute not in self.minutes or t.hour not in self.hours or t.month not in self.months:
            return False
        dom = t.day in self.days
        dow = (t.isoweekday() % 7) in self.weekdays
        if self.day_any or self.weekday_any:
            return dom and dow
        return dom or dow  # cron's rule when both are restricted


def _value(text: str, field: int) -> int:
    text = text.lower()
    if text in _NAMES.get(field, {}):
        return _NAMES[field][text]
    if not text.isdigit():
        raise ValueError(f"'{text}' is not a number")
    return int(text)


def _field(text: str, field: int) -> frozenset[int]:
    lo, hi = _RANGES[field]
    out: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"bad step '{step_text}'")
            step = int(step_text)
        if part == "*":
            start, end = lo, hi
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _value(a, field), _value(b, field)
        else:
            start = end = _value(part, field)
        if not (lo <= start <= hi and lo <= end <= hi and start <= end):
            raise ValueError(f"'{part}' is outside {lo}-{hi}")
        out.update(range(start, end + 1, step))
    if field == 4 and 7 in out:
        out.discard(7)
        out.add(0)
    return frozenset(out)


def parse_cron(expr: str) -> Cron:
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), found {len(fields)}")
    names = ("minute", "hour", "day-of-month", "month", "day-of-week")
    parsed = []
    for i, text in enumerate(fields):
        try:
            parsed.append(_field(text, i))
        except ValueError as exc:
            raise ValueError(f"{names[i]} field: {exc}") from None
    return Cron(*parsed, day_any=fields[2] == "*", weekday_any=fields[4] == "*")


def last_fire_within(cron: Cron, now: datetime, lookback: timedelta) -> datetime | None:
    """Most recent minute t with now - lookback < t <= now at which the schedule fires."""
    t = now.replace(second=0, microsecond=0)
    limit = now - lookback
    while t > limit:
        if cron.matches(t):
            return t
        t -= timedelta(minutes=1)
    return None


def next_fire(cron: Cron, after: datetime, horizon: timedelta = timedelta(days=366)) -> datetime | None:
    t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    end = after + horizon
    while t <= end:
        if t.month not in cron.months:
            t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
        elif not cron.matches(t.replace(hour=min(cron.hours), minute=min(cron.minutes))):
            t = t.replace(hour=0, minute=0) + timedelta(days=1)
        elif t.hour not in cron.hours:
            t = t.replace(minute=0) + timedelta(hours=1)
        elif cron.matches(t):
            return t
        else:
            t += timedelta(minutes=1)
    return None
