"""Command-line options of the test suite. Only option registration lives here: no fixtures,
so nothing changes for tests that do not ask for these options."""

from __future__ import annotations


def pytest_addoption(parser):
    group = parser.getgroup("reliability", "hermes-fleet reliability suite (tests/reliability)")
    group.addoption("--soak-minutes", action="store", type=float, default=None, metavar="N",
                    help="Run the chaos soak for N minutes (default: 1 when CI=true, else 0.5).")
    group.addoption("--soak-seed", action="store", type=int, default=None, metavar="SEED",
                    help="Seed of the chaos schedule (default: random; printed on failure).")
