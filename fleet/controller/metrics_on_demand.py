"""The controller's metrics (fleet/controller/telemetry.py), loaded the first time a manifest asks for them.

Until then only the pass counters run: the snapshot, `status`'s rows and the metric catalog it needs are tens of
milliseconds of imports at every start and resident memory ever after, for a feature most fleets leave off.
Once loaded telemetry stays: it reconciles its endpoint and textfile away itself when the manifest drops them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fleet.controller.pass_counters import PassCounters
from fleet.controller.reconcile import PassResult
from fleet.spec.model import MetricsSpec
from fleet.store.db import Store
from fleet.store.layout import StateDir

if TYPE_CHECKING:
    from fleet.controller.telemetry import Telemetry

NO_METRICS = MetricsSpec()  # what telemetry starts from: a manifest that asks for this changes nothing


class MetricsOnDemand:
    """The pass counters from the start; telemetry from the first pass whose manifest asks for metrics."""

    def __init__(self, state: StateDir, store: Store, epoch: int, clock: Callable[[], float] = time.time):
        self.state = state
        self.store = store
        self.epoch = epoch
        self.clock = clock
        self.counters = PassCounters()
        self.telemetry: Telemetry | None = None
        try:
            os.unlink(state.metrics_status)  # a killed predecessor's word on its own listener
        except OSError:
            pass

    def after_pass(self, result: PassResult, started: float, ended: float, wait: float) -> None:
        if self.telemetry is None:
            if result.desired is None or result.desired.spec.metrics == NO_METRICS:
                self.counters.count(result, max(0.0, ended - started))
                return
            from fleet.controller.telemetry import Telemetry
            self.telemetry = Telemetry(self.state, self.store, self.epoch, self.clock, counters=self.counters)
        self.telemetry.after_pass(result, started, ended, wait)

    def bound(self, timeout: float, now: float) -> float:
        return timeout if self.telemetry is None else self.telemetry.bound(timeout, now)

    def close(self) -> None:
        if self.telemetry is not None:
            self.telemetry.close()
