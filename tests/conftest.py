"""Command-line options of the test suite, and where the suite's Python subprocesses keep their
bytecode, and a SIGINT the tests can send. No fixtures, so nothing changes for tests that do not ask for these
options."""

from __future__ import annotations

import collections

import os
import shutil
import tempfile

import pytest

_PYCACHE = pytest.StashKey[str]()


def pytest_addoption(parser):
    group = parser.getgroup("reliability", "hermes-fleet reliability suite (tests/reliability)")
    group.addoption("--soak-minutes", action="store", type=float, default=None, metavar="N",
                    help="Run the chaos soak for N minutes (default: 0.5).")
    group.addoption("--soak-seed", action="store", type=int, default=None, metavar="SEED",
                    help="Seed of the chaos schedule (default: random; printed on failure).")


def pytest_configure(config):
    _interruptible()
    _session_pycache(config)


def _interruptible() -> None:
    """Tests end followers (`logs -f`, `status --watch`) with SIGINT, as Ctrl-C would. A run started as a
    background job of a shell inherits SIGINT ignored, and every process it starts would ignore it too (a
    program keeps an ignored SIGINT ignored, as it should): the suite takes SIGINT back in each process."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _session_pycache(config) -> None:
    """The suite starts about a thousand Python processes (CLI, controllers, xdist workers). With
    PYTHONDONTWRITEBYTECODE set, each compiled the package afresh, about 0.1 s of CPU apiece. They
    keep their bytecode in a directory of this session instead (PYTHONPYCACHEPREFIX, removed at the
    end), so still nothing is written beside the sources. Only the main process does this, before
    it starts its workers, which inherit the environment."""
    if hasattr(config, "workerinput") or not os.environ.get("PYTHONDONTWRITEBYTECODE") \
            or os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    cache = tempfile.mkdtemp(prefix="hermes-fleet-pycache-")
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    os.environ["PYTHONPYCACHEPREFIX"] = cache
    config.stash[_PYCACHE] = cache


def pytest_unconfigure(config):
    cache = config.stash.get(_PYCACHE, None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The tests that start real Hermes gateways or a private systemd first: each runs for a minute or more, so
    begun last they would leave the other workers idle at the end of the run."""
    # xdist hands out whole files (--dist loadfile) in the order of their first test here; it would sort them by
    # their number of tests instead, putting these one- and two-test files last, so pyproject.toml turns that
    # off (--no-loadscope-reorder) and the order is this one: the long ones, then the larger files first.
    per_file = collections.Counter(item.nodeid.split("::", 1)[0] for item in items)
    slow = {item.nodeid.split("::", 1)[0] for item in items
            if item.get_closest_marker("hermes") or item.get_closest_marker("systemd")}
    order = {name: i for i, name in enumerate(dict.fromkeys(item.nodeid.split("::", 1)[0] for item in items))}

    def key(item):
        name = item.nodeid.split("::", 1)[0]
        return (name not in slow, -per_file[name], order[name])

    items.sort(key=key)

