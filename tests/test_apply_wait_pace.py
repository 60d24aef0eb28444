"""How often `apply --wait` looks at the fleet: every 0.1 s while a look is cheap, less often once a look takes a
real share of a CPU (a cold start of 100 gateways: the CPUs are theirs)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

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


def _status(converged: bool):
    controller = SimpleNamespace(generation=1, observed_generation=1, running=True)
    return SimpleNamespace(controller=controller, converged=converged, failed=(), profiles=(), gated=())


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
    code, _ = apply_cmd._wait(None, 1, 60.0, "json")
    assert code == apply_cmd.EXIT_OK
    assert clock.slept == [round(pause, 6)] * 3
    share = look / (look + pause)
    assert share <= 1 / (1 + apply_cmd.WAIT_LOOKS_PER_CPU) + 1e-9
