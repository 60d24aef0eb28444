"""The controller's counters of passes, actions and failures, kept from its start.

Apart from the metrics snapshot because they count every pass, also before a manifest asks for metrics: a
dashboard turned on later sees the passes since the controller started, not since its endpoint did."""

from __future__ import annotations

import bisect

from fleet.controller.reconcile import PassResult
from fleet.metrics.buckets import DURATION_BUCKETS


class PassCounters:
    """Counted on every pass whether or not metrics are on (a few integer additions); they start at 0
    with each controller, which Prometheus' rate() and increase() expect of counters."""

    def __init__(self) -> None:
        self.reconciles = 0
        self.buckets = [0] * len(DURATION_BUCKETS)
        self.duration_sum = 0.0
        self.actions: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.per_profile: dict[str, dict[str, int]] = {}

    def count(self, result: PassResult, seconds: float) -> None:
        self.reconciles += 1
        self.duration_sum += seconds
        for i in range(bisect.bisect_left(DURATION_BUCKETS, seconds), len(DURATION_BUCKETS)):
            self.buckets[i] += 1
        for action in result.attempted:
            if action.kind in ("wait", "keep", "conflict"):
                continue
            self.actions[action.kind] = self.actions.get(action.kind, 0) + 1
            mine = self.per_profile.setdefault(action.profile, {})
            mine[action.kind] = mine.get(action.kind, 0) + 1
        for action in result.failed:
            self.errors[action.kind] = self.errors.get(action.kind, 0) + 1

    def forget_missing(self, names: set[str]) -> None:
        """A profile gone from the fleet takes its series with it (cardinality stays the fleet's size)."""
        for name in [n for n in self.per_profile if n not in names]:
            del self.per_profile[name]
