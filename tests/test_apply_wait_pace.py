"""How often `apply --wait` looks at the fleet: every 0.1 s while a look is cheap, less often once a look takes a
real share of a CPU (a cold start of 100 gateways: the CPUs are theirs), and only for progress while the controller's
first pass over the generation runs."""

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
    `recorded_at` on."""

    def __init__(self, clock: FakeClock, pass_ends: float, recorded: int = 1, recorded_at: float = 0.0) -> None:
        self.clock, self.pass_ends, self.recorded, self.recorded_at = clock, pass_ends, recorded, recorded_at
        self.reads: list[float] = []

    def worth_a_look(self, generation: int) -> bool:
        self.reads.append(self.clock.now)
        newest = self.recorded if self.clock.now >= self.recorded_at else 1
        return self.clock.now >= self.pass_ends or newest != generation

    def close(self) -> None:
        pass


def _status(converged: bool, observed: int = 1, generation: int = 1):
    controller = SimpleNamespace(generation=generation, observed_generation=observed, running=True)
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
    monkeypatch.setattr(apply_cmd, "PassProgress", lambda state: progress)
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
    monkeypatch.setattr(apply_cmd, "PassProgress", lambda state: FakeProgress(clock, pass_ends=0.0))
    code, _ = apply_cmd._wait(None, 1, 60.0, "json")
    assert code == apply_cmd.EXIT_OK
    assert clock.slept == [round(pause, 6)] * 3
    share = look / (look + pause)
    assert share <= 1 / (1 + apply_cmd.WAIT_LOOKS_PER_CPU) + 1e-9


def test_while_the_first_pass_runs_the_wait_looks_only_for_progress_then_at_once_when_it_ends(monkeypatch):
    clock = FakeClock()
    start = clock.now
    ends = start + 2.5  # a long pass: a cold start of 1,000 gateways
    looks = _follow(monkeypatch, clock, FakeProgress(clock, pass_ends=ends),
                    lambda now: _status(converged=now >= ends, observed=1 if now >= ends else 0))
    code, _ = apply_cmd._wait(None, 1, 60.0, "json")
    assert code == apply_cmd.EXIT_OK
    during = [t - start for t in looks if t < ends]
    # one look a second for the phases it shows, none in between
    assert [round(t, 1) for t in during] == [1.0, 2.0]
    assert len(looks) == len(during) + 1
    assert ends <= looks[-1] <= ends + apply_cmd.WAIT_TICK + 1e-9  # the end of the pass is seen within a tick


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


def test_a_controller_that_never_ends_the_pass_is_still_looked_at_until_the_deadline(monkeypatch):
    clock = FakeClock()
    start = clock.now
    looks = _follow(monkeypatch, clock, FakeProgress(clock, pass_ends=float("inf")),
                    lambda now: _status(converged=False, observed=0))
    code, _ = apply_cmd._wait(None, 1, 3.5, "json")
    assert code == apply_cmd.EXIT_FAILED  # timed out
    assert [round(t - start, 1) for t in looks] == [1.0, 2.0, 3.0, 3.5]


@pytest.fixture
def progress(state, store):  # the store first: a reader of no database reads an empty one
    reader = apply_cmd.PassProgress(state)
    yield reader
    reader.close()


def test_the_pass_progress_is_read_from_the_store(store, progress):
    first, _ = store.record_generation("d1", "{}", {}, {}, prune=False)
    assert not progress.worth_a_look(first)  # recorded, no pass over it yet
    store.set_observed_generation(first)
    assert progress.worth_a_look(first)  # the controller ended a pass over it
    second, _ = store.record_generation("d2", "{}", {}, {}, prune=False)
    assert not progress.worth_a_look(second)  # the newest, no pass over it yet


def test_a_newer_generation_is_worth_a_look_before_any_pass(store, progress):
    first, _ = store.record_generation("d1", "{}", {}, {}, prune=False)
    store.record_generation("d2", "{}", {}, {}, prune=False)
    assert progress.worth_a_look(first)  # superseded: the wait says so at once
