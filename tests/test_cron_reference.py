"""fleet/spec/cron.py and the window gate against a reference cron implementation (cronsim, which follows
Debian's cron: the same DOM/DOW rule and clock-change rules as cronie), on thousands of seeded random
expressions, in zones with and without daylight saving time, and on both of their clock changes.

Two places where the reference is not cronie are left out of the comparison and pinned by tests of their own:
it reads a one-value range with a step (5-5/12) as 5-59/12, and it moves hour by hour in real time, so in a
zone whose clock moves by 30 minutes (Australia/Lord_Howe) it lands on :30 after the change.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

cronsim = pytest.importorskip("cronsim")

from fleet.maintenance.gates import window_gate  # noqa: E402
from fleet.spec.cron import last_fire_at, next_fire_at, parse_cron  # noqa: E402
from fleet.spec.model import MaintenanceWindow  # noqa: E402

ZONES = ("UTC", "Europe/Berlin", "America/New_York")
# (zone, local date of the change, real seconds the clock jumps: + forward, - back)
CHANGES = (
    ("Europe/Berlin", (2024, 3, 31), 3600), ("Europe/Berlin", (2024, 10, 27), -3600),
    ("America/New_York", (2024, 3, 10), 3600), ("America/New_York", (2024, 11, 3), -3600),
)
HALF_HOUR_CHANGES = (("Australia/Lord_Howe", (2024, 10, 6), 1800), ("Australia/Lord_Howe", (2024, 4, 7), -1800))
FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
MONTHS = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()
DAYS = "SUN MON TUE WED THU FRI SAT".split()
YEAR = 365 * 86400.0


def _name(rng: random.Random, field: int, n: int) -> str:
    if field == 3 and rng.random() < 0.3:
        word = MONTHS[n - 1]
    elif field == 4 and n < 7 and rng.random() < 0.3:
        word = DAYS[n]
    else:
        return str(n)
    return rng.choice((word, word.lower(), word.title()))


def _term(rng: random.Random, field: int) -> str:
    lo, hi = FIELDS[field]
    kind = rng.random()
    if kind < 0.25:
        return "*" if rng.random() < 0.5 else f"*/{rng.randint(1, hi - lo + 2)}"
    if kind < 0.6:
        return _name(rng, field, rng.randint(lo, hi))
    a = rng.randint(lo, hi)
    b = rng.randint(a, hi)
    text = f"{_name(rng, field, a)}-{_name(rng, field, b)}"
    return text + (f"/{rng.randint(1, hi - lo + 1)}" if a < b and rng.random() < 0.4 else "")


def _field(rng: random.Random, field: int) -> str:
    if rng.random() < 0.3:
        return "*"
    return ",".join(_term(rng, field) for _ in range(rng.choice((1, 1, 1, 2, 3))))


def random_expression(rng: random.Random) -> str:
    """cronie's grammar where it and the reference agree: numbers, names, lists, ranges, steps after * or a range."""
    return " ".join(_field(rng, i) for i in range(5))


def _expressions(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        expr = random_expression(rng)
        try:
            cronsim.CronSim(expr, datetime(2024, 1, 1, tzinfo=ZoneInfo("UTC")))
        except cronsim.CronSimError:
            # The reference refuses a 30th of February; cronie accepts it and never runs it, and fleet.yaml
            # refuses it (TestNeverFires). Everything else generated here is valid for both.
            assert not parse_cron(expr).can_fire(), expr
            continue
        out.append(expr)
    return out


def _start(rng: random.Random) -> tuple[str, float]:
    """A zone and an instant, half of them within two days before one of that zone's clock changes."""
    if rng.random() < 0.5:
        zone, (y, m, d), _ = rng.choice(CHANGES)
        day = datetime(y, m, d, tzinfo=ZoneInfo(zone)).timestamp()
        return zone, day - rng.uniform(0, 2 * 86400)
    return rng.choice(ZONES), datetime(2020, 1, 1).timestamp() + rng.uniform(0, 10 * YEAR)


def _reference_fires(expr: str, zone: str, after: float, count: int) -> list[float]:
    it = cronsim.CronSim(expr, datetime.fromtimestamp(after, ZoneInfo(zone)))
    return [next(it).timestamp() for _ in range(count)]


def _our_fires(expr: str, zone: str, after: float, count: int) -> list[float]:
    cron, tz, out = parse_cron(expr), ZoneInfo(zone), []
    for _ in range(count):
        after = next_fire_at(cron, tz, after, 30 * YEAR)
        out.append(after)
    return out


def _show(times: list[float], zone: str) -> list[str]:
    return [datetime.fromtimestamp(t, ZoneInfo(zone)).isoformat() if t is not None else "None" for t in times]


class TestAgainstReference:
    def test_next_fires_of_3000_random_expressions(self):
        rng = random.Random(20250506)
        differ = []
        for expr in _expressions(seed=1, count=3000):
            zone, start = _start(rng)
            ref, ours = _reference_fires(expr, zone, start, 4), _our_fires(expr, zone, start, 4)
            if ref != ours:
                differ.append(f"{expr!r} in {zone} after {_show([start], zone)[0]}: "
                              f"reference {_show(ref, zone)}, ours {_show(ours, zone)}")
        assert not differ, f"{len(differ)} of 3000 differ, e.g.\n" + "\n".join(differ[:10])

    def test_window_membership_of_2000_random_windows(self):
        """Inside a window iff the schedule fired within the last `duration` seconds, by the reference's fire times."""
        rng = random.Random(7)
        differ = []
        for expr in _expressions(seed=2, count=2000):
            zone, now = _start(rng)
            now += rng.uniform(0, 2 * 86400)  # lands in the clock changes too
            duration = float(rng.choice((60, 1800, 3600, 3 * 3600, 86400, 3 * 86400)))
            first = _reference_fires(expr, zone, now - duration, 1)[0]  # the first fire after now - duration
            expected = first <= now
            inside = window_gate((MaintenanceWindow("allow", expr, duration, zone),), now).open
            latest = last_fire_at(parse_cron(expr), ZoneInfo(zone), now, duration)
            if inside != expected or (latest is not None) != expected:
                differ.append(f"{expr!r} {duration:g}s in {zone} at {_show([now], zone)[0]}: reference {expected}, "
                              f"ours {inside} (latest fire {_show([latest], zone) if latest else None})")
        assert not differ, f"{len(differ)} of 2000 differ, e.g.\n" + "\n".join(differ[:10])

    def test_latest_fire_is_the_references_last_fire_before_now(self):
        rng = random.Random(11)
        for expr in _expressions(seed=3, count=300):
            zone, now = _start(rng)
            now += rng.uniform(0, 2 * 86400)
            lookback = rng.choice((3600.0, 86400.0, 3 * 86400.0))
            it = cronsim.CronSim(expr, datetime.fromtimestamp(now - lookback, ZoneInfo(zone)))
            ref = []
            while (t := next(it).timestamp()) <= now:
                ref.append(t)
            latest = last_fire_at(parse_cron(expr), ZoneInfo(zone), now, lookback)
            assert latest == (ref[-1] if ref else None), (expr, zone, _show([now], zone))


class TestDayOfMonthAndWeek:
    @pytest.mark.parametrize("expr", ["0 2 1 * */1", "0 2 1 * *", "0 2 1 * */1,3", "0 2 */1 * 1", "0 2 * * 1"])
    def test_a_field_starting_with_star_means_and(self, expr):
        """cronie: if either field starts with '*', a day must match both; '*/1' counts as a star."""
        cron = parse_cron(expr)
        fires = _our_fires(expr, "UTC", datetime(2024, 1, 1).timestamp(), 12)
        assert fires == _reference_fires(expr, "UTC", datetime(2024, 1, 1).timestamp(), 12)
        days = {datetime.utcfromtimestamp(t).date() for t in fires}
        if cron.days == frozenset({1}):
            assert all(d.day == 1 for d in days)  # monthly, not daily
        else:
            assert all(d.isoweekday() == 1 for d in days)

    def test_both_restricted_means_either(self):
        days = {datetime.utcfromtimestamp(t).day for t in _our_fires("0 2 1 * 1", "UTC", 1704067200.0, 10)}
        assert days != {1}  # the Mondays too


class TestCronieSyntax:
    @pytest.mark.parametrize("expr, reason", [
        ("5/15 * * * *", "minute field: '5/15': a step needs '*' or a range before it, such as 5-59/15"),
        ("* * * * mon/2", "day-of-week field: 'mon/2': a step needs '*' or a range before it, such as mon-7/2"),
        ("~ * * * *", "minute field: '~': cronie's random '~' is not supported (a window must open at a known time)"),
        ("0 1~4 * * *", "hour field: '1~4': cronie's random '~' is not supported (a window must open at a known time)"),
        ("0 0 L * *", "day-of-month field: 'L' is not a number"),
        ("0 0 * * 5L", "day-of-week field: '5L' is not a number or a name (sun-sat)"),
        ("0 0 * * 1#2", "day-of-week field: '1#2' is not a number or a name (sun-sat)"),
        ("0 0 * * monday", "day-of-week field: 'monday' is not a number or a name (sun-sat)"),
        ("0 5-0 * * *", "hour field: '5-0': the range runs backwards (5 > 0)"),
        ("0 0 * * 5-0/1", "day-of-week field: '5-0/1': the range runs backwards (5 > 0)"),
        ("0 0 1, * *", "day-of-month field: '' is not a number"),
        ("*5 * * * *", "minute field: '*5' is not a number"),
        ("0 0 0 * *", "day-of-month field: '0' is outside 1-31"),
        ("0 0 * 0 *", "month field: '0' is outside 1-12"),
        ("0 0 * * 8", "day-of-week field: '8' is outside 0-7"),
        ("0 0 * * * *", "expected 5 fields (minute hour day month weekday), found 6"),
        ("@reboot", "'@reboot' names no time of day; a window needs one"),
        ("@fortnightly", "unknown shortcut '@fortnightly': expected one of @yearly, @annually, @monthly, @weekly, "
                         "@daily, @midnight, @hourly"),
    ])
    def test_what_cronie_refuses(self, expr, reason):
        with pytest.raises(ValueError) as info:
            parse_cron(expr)
        assert str(info.value) == reason

    @pytest.mark.parametrize("dow, days", [
        ("7", {0}), ("sun", {0}), ("SUN", {0}), ("Sun", {0}), ("fri-sun", {5, 6, 0}), ("5-0", {5, 6, 0}),
        ("sat-7", {6, 0}), ("*/2", {0, 2, 4, 6}), ("*/7", {0}), ("0-7/3", {0, 3, 6}), ("mon-fri/2", {1, 3, 5}),
    ])
    def test_weekdays(self, dow, days):
        assert parse_cron(f"0 0 * * {dow}").weekdays == frozenset(days)

    def test_a_one_value_range_with_a_step_is_that_value(self):
        """cronie sets low, low+step, ... up to high; the reference reads 5-5/12 as 5-59/12."""
        assert parse_cron("5-5/12 * * * *").minutes == frozenset({5})
        assert parse_cron("0 0 * may-5/6 *").months == frozenset({5})

    def test_steps_larger_than_the_field_keep_the_start(self):
        assert parse_cron("*/100 * * * *").minutes == frozenset({0})  # cronie warns and runs at :00
        assert parse_cron("10-20/50 * * * *").minutes == frozenset({10})

    @pytest.mark.parametrize("shortcut, fields", [
        ("@yearly", "0 0 1 1 *"), ("@annually", "0 0 1 1 *"), ("@monthly", "0 0 1 * *"), ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"), ("@hourly", "0 * * * *"),
    ])
    def test_shortcuts(self, shortcut, fields):
        start = datetime(2024, 3, 30, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
        assert _our_fires(shortcut, "Europe/Berlin", start, 5) == _reference_fires(fields, "Europe/Berlin", start, 5)


class TestNeverFires:
    @pytest.mark.parametrize("expr", ["0 0 30 2 *", "0 0 31 2,4,6 *", "0 0 30,31 feb */1"])
    def test_a_day_no_month_has(self, expr):
        cron = parse_cron(expr)
        assert not cron.can_fire()
        assert next_fire_at(cron, ZoneInfo("UTC"), 0.0, 30 * YEAR) is None

    @pytest.mark.parametrize("expr", ["0 0 29 2 *", "0 0 30 2 mon", "0 0 31 1-3 *"])
    def test_rare_days_still_fire(self, expr):
        assert parse_cron(expr).can_fire()
        assert next_fire_at(parse_cron(expr), ZoneInfo("UTC"), 0.0, 30 * YEAR) is not None


# ---------------------------------------------------------------------------------------------
# Windows on the days the clock changes: open at cronie's fire instant, for `duration` of real time.

def _open_seconds(expr: str, zone: str, duration: float, day: tuple[int, int, int]) -> list[tuple[str, float]]:
    """(opening wall time, real seconds open) of each stretch of one window that opens on `day` (local)."""
    # Scanned every 5 minutes: every opening, closing and clock change here falls on a multiple of 5 minutes.
    tz = ZoneInfo(zone)
    first = datetime(*day, tzinfo=tz).timestamp()
    last = (datetime(*day, tzinfo=tz) + timedelta(days=1)).timestamp()
    windows = (MaintenanceWindow("allow", expr, duration, zone),)
    stretches: list[tuple[str, float]] = []
    opened = None
    t = first - 300
    while t <= last + duration + 3600:
        if window_gate(windows, t).open:
            if opened is None:
                opened = t
        elif opened is not None:
            if first <= opened < last:
                stretches.append((datetime.fromtimestamp(opened, tz).strftime("%H:%M%z"), t - opened))
            opened = None
        t += 300
    return stretches


class TestClockChanges:
    @pytest.mark.parametrize("zone, day, jump", CHANGES + HALF_HOUR_CHANGES)
    @pytest.mark.parametrize("hour", (0, 1, 2, 3, 4, 12, 22, 23))
    def test_a_fixed_time_window_is_open_its_duration_once_that_day(self, zone, day, jump, hour):
        """On main, a 1 h window at a skipped 02:30 was open 30 minutes, and one in a repeated hour up to 2 h."""
        stretches = _open_seconds(f"30 {hour} * * *", zone, 3600.0, day)
        assert [s for _, s in stretches] == [3600.0], stretches

    def test_berlin_spring_forward_opens_right_after_the_jump(self):
        assert _open_seconds("30 2 * * *", "Europe/Berlin", 3600.0, (2024, 3, 31)) == \
            [("03:00+0200", 3600.0)]

    def test_berlin_fall_back_opens_in_the_first_pass_only(self):
        assert _open_seconds("30 2 * * *", "Europe/Berlin", 3600.0, (2024, 10, 27)) == \
            [("02:30+0200", 3600.0)]

    def test_new_york_spring_forward(self):
        assert _open_seconds("15 2 * * *", "America/New_York", 7200.0, (2024, 3, 10)) == \
            [("03:00-0400", 7200.0)]

    def test_a_window_across_the_jump_lasts_real_time(self):
        """Opened 01:30 before the clocks go forward: 2 h later is 04:30 on the wall clock."""
        assert _open_seconds("30 1 * * *", "Europe/Berlin", 7200.0, (2024, 3, 31))[0] == ("01:30+0100", 7200.0)
        assert _open_seconds("30 1 * * *", "Europe/Berlin", 7200.0, (2024, 10, 27))[0] == ("01:30+0200", 7200.0)

    def test_star_hour_schedules_follow_real_hours(self):
        """'0 * * * *' fires at every real hour: 23 on the short day, 25 on the long one (as cronie runs it)."""
        tz = ZoneInfo("Europe/Berlin")
        for day, count in (((2024, 3, 31), 23), ((2024, 10, 27), 25)):
            start = datetime(*day, tzinfo=tz).timestamp() - 1
            end = (datetime(*day, tzinfo=tz) + timedelta(days=1)).timestamp() - 1
            fires, t = [], start
            while (t := next_fire_at(parse_cron("0 * * * *"), tz, t, 86400.0)) is not None and t <= end:
                fires.append(t)
            assert len(fires) == count
            assert fires == [t for t in _reference_fires("0 * * * *", "Europe/Berlin", start, count + 1) if t <= end]

    def test_half_hour_zone_keeps_whole_hours(self):
        """Lord Howe moves 30 minutes: '0 * * * *' still fires on the hour, at every real instant showing :00."""
        tz = ZoneInfo("Australia/Lord_Howe")
        cron = parse_cron("0 * * * *")
        # 23.5 h and 24.5 h long days; the repeated half hour (01:30-02:00) shows no :00
        for day, count in (((2024, 10, 6), 23), ((2024, 4, 7), 24)):
            t = datetime(*day, tzinfo=tz).timestamp() - 1
            end = (datetime(*day, tzinfo=tz) + timedelta(days=1)).timestamp() - 1
            walls = []
            while (t := next_fire_at(cron, tz, t, 86400.0)) is not None and t <= end:
                walls.append(datetime.fromtimestamp(t, tz).strftime("%H:%M"))
            assert len(walls) == count and all(w.endswith(":00") for w in walls), walls

    def test_a_star_minute_window_in_a_skipped_hour_never_opens(self):
        """'*/30 2 * * *' lists wall times that do not exist that night; cronie does not run it then."""
        assert _open_seconds("*/30 2 * * *", "Europe/Berlin", 600.0, (2024, 3, 31)) == []
        assert _open_seconds("*/30 2 * * *", "Europe/Berlin", 600.0, (2024, 4, 1)) == [("02:00+0200", 600.0),
                                                                                       ("02:30+0200", 600.0)]

    def test_a_star_minute_window_in_a_repeated_hour_opens_in_both_passes(self):
        assert _open_seconds("*/30 2 * * *", "Europe/Berlin", 600.0, (2024, 10, 27)) == [
            ("02:00+0200", 600.0), ("02:30+0200", 600.0), ("02:00+0100", 600.0), ("02:30+0100", 600.0)]
