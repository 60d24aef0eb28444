"""Fixtures of the reliability suite. The options themselves (--soak-minutes, --soak-seed) are
registered in tests/conftest.py, which pytest loads at start-up."""

from __future__ import annotations

import random

import pytest

SOAK_OVERHEAD_SECONDS = 240  # set-up, convergence after the chaos and teardown, on a slow machine


def soak_minutes_of(config) -> float:
    value = config.getoption("--soak-minutes", default=None)
    if value is not None:
        return float(value)
    return 0.5


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: the chaos soak; its timeout follows --soak-minutes")


def pytest_collection_modifyitems(config, items):
    """The soak runs as long as asked: its pytest-timeout follows --soak-minutes."""
    budget = int(soak_minutes_of(config) * 60 + SOAK_OVERHEAD_SECONDS)
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(pytest.mark.timeout(budget))


@pytest.fixture
def soak_seconds(request) -> float:
    return soak_minutes_of(request.config) * 60.0


@pytest.fixture
def soak_seed(request) -> int:
    seed = request.config.getoption("--soak-seed", default=None)
    return int(seed) if seed is not None else random.SystemRandom().randrange(1, 2**31)
