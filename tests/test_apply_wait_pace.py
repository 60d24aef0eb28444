"""How often `apply --wait` looks at the fleet: every 0.1 s while a look is cheap, less often once a look takes a
real share of a CPU (a cold start of 100 gateways: the CPUs are theirs), and not at all while the controller's
first pass over the generation runs: its progress then comes from the journal, a few small queries a second."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fakes import state, store  # noqa: F401

from fleet.cli import apply_cmd


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


class FakeProgress:
    """The controller's pass over generation 1 ends at `pass_ends`; generation `recorded` is the newest from
    `recorded_at` on; the controller dies at `dies_at`."""

    def __init__(self, clock: FakeClock, pass_ends: float, recorded: int = 1, recorded_at: float = 0.0,
                 dies_at: float = float("inf")) -> None:
        self.clock, self.pass_ends, self.recorded, self.recorded_at = clock, pass_ends, recorded, recorded_at
        self.dies_at = dies_at
        self.reads: list[float] = []
        self.news_read: list[float] = []

    def worth_a_look(self) -> bool:
        self.reads.append(self.clock.now)
        newest = self.recorded if self.clock.now >= self.recorded_at else 1
        return self.clock.now >= self.pass_ends or newest != 1

    def under_way(self, platform) -> bool:
        return not self.worth_a_look() and self.clock.now < self.dies_at

    def news(self) -> str | None:
        self.news_read.append(self.clock.now)
        return None

    def close(self) -> None:
        pass


def _status(converged: bool, observed: int = 1, generation: int = 1, running: bool = True):
    controller = SimpleNamespace(generation=generation, observed_generation=observed, running=running)
    return SimpleNamespace(controller=controller, converged=converged, failed=(), profiles=(), gated=())


def _follow(monkeypatch, clock: FakeClock, progress: FakeProgress, status_at) -> list[float]:
    """Runs the wait; `status_at(now)` is the status a look at that time shows. Returns when each look began."""
    looks: list[float] = []

    def fleet_status(state, platform, now):
        looks.append(now)
        clock.now += 0.002
        return status_at(now)

    monkeypatch.setattr(apply_cmd, "time", clock)
    monkeypatch.setattr(apply_cmd, "fleet_status", fleet_status)
    monkeypatch.setattr(apply_cmd, "PassProgress", lambda state, generation: progress)
    monkeypatch.setattr(apply_cmd, "_describe_generation", lambda state, generation: f"generation {generation}")
    return looks


@pytest.mark.parametrize(("look", "pause"), [(0.002, apply_cmd.WAIT_POLL), (0.05, 0.05 * apply_cmd.WAIT_LOOKS_PER_CPU)])
def test_the_pause_between_looks_keeps_the_wait_to_a_small_share_of_a_cpu(monkeypatch, look, pause):
    clock = FakeClock()
    looks = []

    def fleet_status(state, platform, now):
        clock.now += look
        looks.append(now)
        return _status(converged=len(looks) == 4)

    monkeypatch.setattr(apply_cmd, "time", clock)
    monkeypatch.setattr(apply_cmd, "fleet_status", fleet_status)
    monkeypatch.setattr(apply_cmd, "PassProgress", lambda state, generation: FakeProgress(clock, pass_ends=0.0))
    code, _ = apply_cmd._wait(None, 1, 60.0, "json")
    assert code == apply_cmd.EXIT_OK
    assert clock.slept == [round(pause, 6)] * 3
    share = look / (look + pause)
    assert share <= 1 / (1 + apply_cmd.WAIT_LOOKS_PER_CPU) + 1e-9


@pytest.mark.parametrize("output", ["text", "json"])
def test_while_the_first_pass_runs_the_wait_reads_its_progress_then_looks_at_once_when_it_ends(monkeypatch, output):
    clock = FakeClock()
    start = clock.now
    ends = start + 2.5  # a long pass: a cold start of 1,000 gateways
    progress = FakeProgress(clock, pass_ends=ends)
    looks = _follow(monkeypatch, clock, progress,
                    lambda now: _status(converged=now >= ends, observed=1 if now >= ends else 0))
    code, _ = apply_cmd._wait(None, 1, 60.0, output)
    assert code == apply_cmd.EXIT_OK
    assert len(looks) == 1  # no look at the fleet while the pass runs
    assert ends <= looks[-1] <= ends + apply_cmd.WAIT_TICK + 1e-9  # the end of the pass is seen within a tick
    # the journal's news once a second, for the text output only
    assert [round(t - start, 1) for t in progress.news_read] == ([1.0, 2.0] if output == "text" else [])


def test_a_controller_that_dies_during_the_pass_is_reported_at_the_next_progress_read(monkeypatch):
    clock = FakeClock()
    start = clock.now
    looks = _follow(monkeypatch, clock, FakeProgress(clock, pass_ends=float("inf"), dies_at=start + 1.5),
                    lambda now: _status(converged=False, observed=0, running=now < start + 1.5))
    code, _ = apply_cmd._wait(None, 1, 60.0, "json")
    assert code == apply_cmd.EXIT_FAILED
    assert [round(t - start, 1) for t in looks] == [2.0]


def test_a_pass_already_over_is_looked_at_without_a_pause(monkeypatch):
    clock = FakeClock()
    looks = _follow(monkeypatch, clock, FakeProgress(clock, pass_ends=0.0), lambda now: _status(converged=True))
    code, _ = apply_cmd._wait(None, 1, 60.0, "json")
    assert code == apply_cmd.EXIT_OK
    assert looks == [1000.0] and clock.slept == []


def test_a_newer_generation_ends_the_wait_for_this_one_without_waiting_for_its_pass(monkeypatch):
    clock = FakeClock()
    start = clock.now
    progress = FakeProgress(clock, pass_ends=start + 30, recorded=2, recorded_at=start + 0.3)
    looks = _follow(monkeypatch, clock, progress,
                    lambda now: _status(converged=False, observed=0, generation=2 if now >= start + 0.3 else 1))
    code, _ = apply_cmd._wait(None, 1, 60.0, "json")
    assert code == apply_cmd.EXIT_SUPERSEDED
    assert start + 0.3 <= looks[-1] <= start + 0.3 + apply_cmd.WAIT_TICK + 1e-9


def test_a_controller_that_never_ends_the_pass_is_looked_at_by_the_deadline(monkeypatch):
    clock = FakeClock()
    start = clock.now
    looks = _follow(monkeypatch, clock, FakeProgress(clock, pass_ends=float("inf")),
                    lambda now: _status(converged=False, observed=0))
    code, _ = apply_cmd._wait(None, 1, 3.5, "json")
    assert code == apply_cmd.EXIT_FAILED  # timed out
    assert [round(t - start, 1) for t in looks] == [3.5]


def _reader(state, generation: int) -> apply_cmd.PassProgress:
    return apply_cmd.PassProgress(state, generation)


def test_the_pass_progress_is_read_from_the_store(state, store):
    first, _ = store.record_generation("d1", "{}", {}, {}, prune=False)
    progress = _reader(state, first)
    assert not progress.worth_a_look()  # recorded, no pass over it yet
    store.set_observed_generation(first)
    assert progress.worth_a_look()  # the controller ended a pass over it
    progress.close()
    second, _ = store.record_generation("d2", "{}", {}, {}, prune=False)
    progress = _reader(state, second)
    assert not progress.worth_a_look()  # the newest, no pass over it yet
    progress.close()


def test_a_newer_generation_is_worth_a_look_before_any_pass(state, store):
    first, _ = store.record_generation("d1", "{}", {}, {}, prune=False)
    store.record_generation("d2", "{}", {}, {}, prune=False)
    progress = _reader(state, first)
    assert progress.worth_a_look()  # superseded: the wait says so at once
    progress.close()


def test_the_news_is_what_the_pass_journaled_for_profiles_after_the_generation_was_recorded(state, store):
    store.journal("spawned", "pid 1 started", profile="old")  # before: another generation's pass
    store.journal("applied", "generation 1", data={"generation": 1})
    store.journal("spawned", "pid 2 started", profile="a")  # a pass that began before the reader did
    progress = _reader(state, 1)
    store.journal("spawned", "pid 3 started", profile="b")
    store.journal("drain_started", "stopping", profile="c")
    store.journal("controller_started", "a fleet-wide entry")
    assert progress.news() == "  in progress: 2 spawned, 1 drain started"
    assert progress.news() is None  # nothing new since
    store.journal("spawn_failed", "no such file", profile="d")
    assert progress.news() == "  in progress: 2 spawned, 1 drain started, 1 spawn failed"
    progress.close()


def test_a_generation_with_no_applied_entry_reports_from_the_newest_entry_on(state, store):
    store.journal("spawned", "pid 1 started", profile="old")
    progress = _reader(state, 7)
    assert progress.news() is None
    store.journal("spawned", "pid 2 started", profile="a")
    assert progress.news() == "  in progress: 1 spawned"
    progress.close()


def test_the_pass_is_under_way_only_while_its_controller_runs(state, store):
    from fleet.platform import current_platform

    first, _ = store.record_generation("d1", "{}", {}, {}, prune=False)
    progress = _reader(state, first)
    assert not progress.under_way(current_platform())  # no controller holds the state directory
    progress.close()
