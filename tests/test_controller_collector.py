"""The resident controller keeps what its imports made out of the garbage collector's walks (gc.freeze) and
collects young objects less often than the interpreter's default: in a cold start of 100 gateways the
collector's walks were a fifth of the controller's CPU."""

from __future__ import annotations

import gc

import pytest

from fleet.controller import __main__ as entry
from fleet.controller import loop


@pytest.fixture
def collector():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_controller_runs_with_its_imports_frozen_and_a_higher_threshold(collector, monkeypatch, tmp_path):
    seen = {}

    def run(self) -> int:
        seen["frozen"], seen["threshold"] = gc.get_freeze_count(), gc.get_threshold()
        return 0

    monkeypatch.setattr(loop.Controller, "run", run)
    gc.unfreeze()
    assert entry.main(["--state-dir", str(tmp_path / "state")]) == 0
    assert seen["frozen"] > 10_000  # every module's objects, not a handful
    assert seen["threshold"][0] == entry.COLLECT_AFTER_ALLOCATIONS > 700
