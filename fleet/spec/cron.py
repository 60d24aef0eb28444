"""A five-field cron (minute hour day-of-month month day-of-week) for maintenance windows, read by cronie's rules.

Fire times are real instants (epoch seconds). On the days a zone's clock jumps they follow cronie:
a schedule whose minute and hour fields are both fixed (neither starts with '*') fires once per wall-clock
match, wall times skipped by a forward jump firing at the first minute after it, a repeated hour firing
only in its first pass; a schedule whose minute or hour field starts with '*' fires at every real instant
whose wall clock matches (none in a skipped hour, both passes of a repeated one).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

_NAMES = {
    3: {n: i + 1 for i, n in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
    4: {n: i for i, n in enumerate("sun mon tue wed thu fri sat".split())},
}
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_FIELD_NAMES = ("minute", "hour", "day-of-month", "month", "day-of-week")
# cronie's @-shortcuts, as the five fields that give the same schedule (@reboot has no time to gate on).
_SHORTCUTS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_DAY = 86400
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # the most each month can have


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression: the values each field allows, and which fields start with '*'."""
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    # cronie's *_STAR flags: the field's text starts with '*' (so '*/1' counts, '1-31' does not).
    day_any: bool
    weekday_any: bool
    minute_any: bool = False
    hour_any: bool = False

    @property
    def wild(self) -> bool:
        """cronie runs such a job only at wall times that exist, as often as they occur."""
        return self.minute_any or self.hour_any

    def matches_date(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.day_any or self.weekday_any:
            return dom and dow
        return dom or dow  # cron's rule when neither field starts with '*'

    def matches(self, t: datetime) -> bool:
        """Whether the wall-clock time t (its fields as written, whatever its zone) is a match."""
        return t.minute in self.minutes and t.hour in self.hours and self.matches_date(t.date())

    def can_fire(self) -> bool:
        """False when day-of-month and month never meet (the 30th of February) and the AND rule applies."""
        if not (self.day_any or self.weekday_any):
            return True
        return any(d <= _MONTH_DAYS[m] for m in self.months for d in self.days)


def _value(text: str, field: int) -> int:
    if text.lower() in _NAMES.get(field, {}):
        return _NAMES[field][text.lower()]
    if not text.isascii() or not text.isdigit():
        if field in _NAMES and text:
            names = "jan-dec" if field == 3 else "sun-sat"
            raise ValueError(f"'{text}' is not a number or a name ({names})")
        raise ValueError(f"'{text}' is not a number")
    return int(text)


def _field(text: str, field: int) -> frozenset[int]:
    lo, hi = _RANGES[field]
    out: set[int] = set()
    for part in text.split(","):
        if "~" in part:
            raise ValueError(f"'{part}': cronie's random '~' is not supported (a window must open at a known time)")
        step = 1
        body = part
        if "/" in part:
            body, step_text = part.split("/", 1)
            if not step_text.isascii() or not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"bad step '{step_text}'")
            step = int(step_text)
            if body != "*" and "-" not in body:
                # cronie rejects N/step; other crons read it as N-max/step or as N alone.
                raise ValueError(f"'{part}': a step needs '*' or a range before it, such as {body}-{hi}/{step}")
        if body == "*":
            start, end = lo, hi
        elif "-" in body:
            a, b = body.split("-", 1)
            start, end = _value(a, field), _value(b, field)
            if field == 4 and end == 0 and start > 0 and "/" not in part:
                end = 7  # cronie: fri-sun is 5-7
        else:
            start = end = _value(body, field)
        if not (lo <= start <= hi and lo <= end <= hi):
            raise ValueError(f"'{part}' is outside {lo}-{hi}")
        if start > end:
            raise ValueError(f"'{part}': the range runs backwards ({start} > {end})")
        out.update(range(start, end + 1, step))
    if field == 4 and 7 in out:
        out.discard(7)
        out.add(0)
    return frozenset(out)


@functools.lru_cache(maxsize=512)
def parse_cron(expr: str) -> Cron:
    stripped = expr.strip()
    if stripped.startswith("@"):
        if stripped == "@reboot":
            raise ValueError("'@reboot' names no time of day; a window needs one")
        if stripped not in _SHORTCUTS:
            raise ValueError(f"unknown shortcut '{stripped}': expected one of {', '.join(_SHORTCUTS)}")
        expr = _SHORTCUTS[stripped]
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), found {len(fields)}")
    parsed = []
    for i, text in enumerate(fields):
        try:
            parsed.append(_field(text, i))
        except ValueError as exc:
            raise ValueError(f"{_FIELD_NAMES[i]} field: {exc}") from None
    minutes, hours, days, months, weekdays = parsed
    return Cron(minutes, hours, days, months, weekdays, day_any=fields[2].startswith("*"),
                weekday_any=fields[4].startswith("*"), minute_any=fields[0].startswith("*"),
                hour_any=fields[1].startswith("*"))


# ---------------------------------------------------------------------------------------------
# Fire times. Wall-clock times are handled as "naive epoch seconds": the wall clock read as if it were UTC.

def _offset(tz: tzinfo, t: int) -> int:
    off = datetime.fromtimestamp(t, tz).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def _segments(tz: tzinfo, a: int, b: int) -> list[tuple[int, int, int]]:
    """[a, b) cut into (start, end, utc offset) pieces of one offset each; at most one change a day is assumed."""
    out = []
    p = a
    while p < b:
        q = min(b, p + _DAY)
        off = _offset(tz, p)
        if _offset(tz, q - 1) == off:
            out.append((p, q, off))
            p = q
            continue
        lo, hi = p, q - 1  # _offset(lo) == off != _offset(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _offset(tz, mid) == off:
                lo = mid
            else:
                hi = mid
        out.append((p, hi, off))
        p = hi
    return out


def _day_matches(cron: Cron, day: int) -> bool:
    return cron.matches_date(date.fromordinal(_EPOCH_ORDINAL + day))


def _wall_matches(cron: Cron, lo: int, hi: int) -> Iterator[int]:
    """Matching wall-clock minutes in [lo, hi), ascending."""
    if hi <= lo:
        return
    hours, minutes = sorted(cron.hours), sorted(cron.minutes)
    for day in range(lo // _DAY, (hi - 1) // _DAY + 1):
        if not _day_matches(cron, day):
            continue
        base = day * _DAY
        for h in hours:
            hour_at = base + h * 3600
            if hour_at + 3600 <= lo:
                continue
            for m in minutes:
                t = hour_at + m * 60
                if t >= hi:
                    return
                if t >= lo:
                    yield t


def _fires(cron: Cron, tz: tzinfo, a: int, b: int) -> list[int]:
    """Fire instants in [a, b), ascending, by cronie's rules for clock changes."""
    # The furthest wall time already reached before a: wall times below it were lived through (or
    # skipped) already, so a fixed-time job does not fire for them again in a repeated hour.
    reached = max(end + off for _, end, off in _segments(tz, a - _DAY, a))
    out: list[int] = []
    for start, end, off in _segments(tz, a, b):
        wall_lo, wall_hi = start + off, end + off
        if cron.wild:
            out.extend(t - off for t in _wall_matches(cron, wall_lo, wall_hi))
        else:
            if wall_lo > reached:
                # Clock jumped forward: matches in the skipped wall times fire at the first minute after the jump.
                first = -(-wall_lo // 60) * 60
                if next(_wall_matches(cron, reached, wall_lo), None) is not None:
                    out.append(first - off)
            out.extend(t - off for t in _wall_matches(cron, max(reached, wall_lo), wall_hi))
        reached = max(reached, wall_hi)
    deduped: list[int] = []
    for t in out:
        if a <= t < b and (not deduped or t != deduped[-1]):
            deduped.append(t)
    return deduped


def _days_in_month(d: date) -> int:
    first_of_next = date(d.year + d.month // 12, d.month % 12 + 1, 1)
    return (first_of_next - timedelta(days=1)).day


def _next_matching_day(cron: Cron, day: int, last_day: int) -> int | None:
    while day <= last_day:
        d = date.fromordinal(_EPOCH_ORDINAL + day)
        if d.month not in cron.months:
            days_left = _days_in_month(d) - d.day + 1
            day += days_left
            continue
        if cron.matches_date(d):
            return day
        day += 1
    return None


def _prev_matching_day(cron: Cron, day: int, first_day: int) -> int | None:
    while day >= first_day:
        d = date.fromordinal(_EPOCH_ORDINAL + day)
        if d.month not in cron.months:
            day -= d.day
            continue
        if cron.matches_date(d):
            return day
        day -= 1
    return None


def next_fire_at(cron: Cron, tz: tzinfo, after: float, horizon: float) -> float | None:
    """The first fire instant strictly after `after` and at most `horizon` seconds later, or None."""
    if not cron.can_fire():
        return None
    p = int(after // 1) + 1
    end = after + horizon
    span = 3600  # grows to a day: a frequent schedule is answered from the first hour
    while p <= end:
        # Offsets stay well within two days, so a chunk with no matching date near it has no fire.
        day = _next_matching_day(cron, p // _DAY - 2, int(end // _DAY) + 2)
        if day is None:
            return None
        if (day - 2) * _DAY > p:
            p = (day - 2) * _DAY
            continue
        q = p + span
        for t in _fires(cron, tz, p, q):
            return float(t) if t <= end else None
        p = q
        span = min(_DAY, span * 4)
    return None


def last_fire_at(cron: Cron, tz: tzinfo, now: float, lookback: float) -> float | None:
    """The latest fire instant t with now - lookback < t <= now, or None."""
    floor_now = int(now // 1)
    lowest = int((now - lookback) // 1) + 1
    q = floor_now + 1
    span = 3600
    while q > lowest:
        day = _prev_matching_day(cron, q // _DAY + 2, lowest // _DAY - 2)
        if day is None:
            return None
        if (day + 3) * _DAY < q:
            q = (day + 3) * _DAY
            continue
        p = max(lowest, q - span)
        fires = _fires(cron, tz, p, q)
        if fires:
            return float(fires[-1])
        q = p
        span = min(_DAY, span * 4)
    return None


def _zone(t: datetime) -> tzinfo:
    if t.tzinfo is None:
        raise ValueError("a time zone-aware datetime is needed")
    return t.tzinfo


def last_fire_within(cron: Cron, now: datetime, lookback: timedelta) -> datetime | None:
    """Most recent fire t with now - lookback < t <= now, in now's zone."""
    tz = _zone(now)
    t = last_fire_at(cron, tz, now.timestamp(), lookback.total_seconds())
    return None if t is None else datetime.fromtimestamp(t, tz)


def next_fire(cron: Cron, after: datetime, horizon: timedelta = timedelta(days=366)) -> datetime | None:
    """First fire strictly after `after`, within `horizon`, in after's zone."""
    tz = _zone(after)
    t = next_fire_at(cron, tz, after.timestamp(), horizon.total_seconds())
    return None if t is None else datetime.fromtimestamp(t, tz)

