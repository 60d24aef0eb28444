"""How often the controller's LogGuard looks at the logs (fleet/execute/logs.py): every second while a log grows or
is past half its cap, every LOG_QUIET_CHECK_SECONDS while none does (an idle controller wakes a fifth as often),
fast while one floods; and the fence is checked at the same wake-ups (fleet/controller/wakeups.py)."""

from __future__ import annotations

from fleet.controller.wakeups import Wakeups
from fleet.execute.logs import LOG_CHECK_SECONDS, LOG_FLOOD_CHECK_SECONDS, LOG_QUIET_CHECK_SECONDS, LogGuard
from fleet.platform import current_platform
from fleet.store.layout import StateDir


class RecordingSelector:
    def __init__(self):
        self.timeouts: list[float] = []

    def select(self, timeout: float):
        self.timeouts.append(timeout)
        return []


def looked(guard: LogGuard) -> float:
    """One check, now: the interval until the next."""
    guard.next_check = 0.0
    assert guard.select(RecordingSelector(), 10.0) == []  # a check returns at once: the caller checks its fence
    return guard.interval(guard.flooding_until)  # the cadence outside a flood


def test_quiet_logs_are_looked_at_every_few_seconds_and_a_growing_one_every_second(tmp_path):
    a, b = tmp_path / "alpha.log", tmp_path / "beta.log"
    a.write_bytes(b"x" * 100)
    b.write_bytes(b"")
    guard = LogGuard(str(tmp_path), max_bytes=10_000)
    try:
        assert looked(guard) == LOG_CHECK_SECONDS  # the first look: every log is new
        assert looked(guard) == LOG_QUIET_CHECK_SECONDS  # nothing grew since
        with open(b, "ab") as out:
            out.write(b"a line\n")
        assert looked(guard) == LOG_CHECK_SECONDS
        assert looked(guard) == LOG_QUIET_CHECK_SECONDS
        (tmp_path / "gamma.log").write_bytes(b"")  # a new gateway's log
        assert looked(guard) == LOG_CHECK_SECONDS
        a.write_bytes(b"x" * 6_000)  # past half its cap: a second apart even while it pauses
        assert looked(guard) == LOG_CHECK_SECONDS
        assert looked(guard) == LOG_CHECK_SECONDS
    finally:
        guard.close()


def test_a_log_over_its_cap_is_cut_and_watched_closely(tmp_path):
    log = tmp_path / "alpha.log"
    log.write_bytes(b"line\n" * 3_000)
    guard = LogGuard(str(tmp_path), max_bytes=10_000)
    try:
        guard.select(RecordingSelector(), 10.0)
        assert log.stat().st_size < 10_000 and (tmp_path / "alpha.log.1").exists()
        assert guard.next_check < guard.flooding_until
        assert guard.interval(guard.flooding_until - 1.0) == LOG_FLOOD_CHECK_SECONDS
    finally:
        guard.close()


def test_between_checks_the_wait_ends_no_later_than_the_next_check(tmp_path):
    (tmp_path / "alpha.log").write_bytes(b"")
    guard = LogGuard(str(tmp_path))
    selector = RecordingSelector()
    try:
        guard.select(selector, 60.0)
        assert selector.timeouts == []  # the check itself: no wait
        guard.select(selector, 60.0)
        assert 0.0 < selector.timeouts[-1] <= LOG_CHECK_SECONDS
        guard.select(selector, 0.25)
        assert selector.timeouts[-1] <= 0.25
    finally:
        guard.close()


def test_the_fence_is_checked_at_the_log_guards_wake_ups(tmp_path):
    class TickingGuard:
        def __init__(self):
            self.calls = 0

        def select(self, selector, timeout):
            self.calls += 1
            return []  # the logs were due: no event

    fences = []

    def breached() -> bool:
        fences.append(True)
        return len(fences) == 3

    wakeups = Wakeups(StateDir(tmp_path), current_platform())
    guard = TickingGuard()
    try:
        assert wakeups.wait(3600.0, breached, guard) == []
    finally:
        wakeups.close()
    assert guard.calls == 3 and len(fences) == 3  # one fence check per wake-up, ended by the breach
