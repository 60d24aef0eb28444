"""The pass's optional features, loaded the first time the fleet has work for one.

Most fleets never open a maintenance request, take over one of Hermes' own units or follow a git source, and
the code of each (a service manager's commands, the update runner, git and the manifest recorder) cost every
controller start its imports and stayed in its resident memory. Each stand-in here asks what the pass reads
anyway (the open requests the observer read, the open take-over rows, the source's row) and, until there is
work, does what the feature itself does with none: nothing. Once loaded a feature stays: it may hold an update
thread, a fetch in flight or a row half-way through its steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fleet.observe.model import Observed
from fleet.plan.model import Action, Desired, Plan
from fleet.platform.base import Platform
from fleet.store.db import Store
from fleet.store.layout import StateDir
from fleet.store.sources import get_source
from fleet.store.takeovers import open_takeovers

if TYPE_CHECKING:
    from fleet.controller.maintenance_tick import MaintenanceTick
    from fleet.controller.source_follow import SourceFollower
    from fleet.controller.takeover_tick import TakeoverTick


class MaintenanceOnDemand:
    """The maintenance tick, from the first pass that observes an open request."""

    def __init__(self, store_path: str, store: Store, epoch: int):
        self.store_path = store_path
        self.store = store
        self.epoch = epoch
        self.tick: MaintenanceTick | None = None

    def advance(self, desired: Desired, observed: Observed, current: Plan, now: float) -> None:
        if self.tick is None:
            if not observed.maintenance:
                return  # the tick returns here too: it has no update outcome to record before its first request
            from fleet.controller.maintenance_tick import MaintenanceTick
            self.tick = MaintenanceTick(self.store_path, self.store, self.epoch)
        self.tick.advance(desired, observed, current, now)

    def busy(self) -> bool:
        return self.tick is not None and self.tick.busy()


class TakeoversOnDemand:
    """The take-over tick, from the first pass that finds an open take-over or release row."""

    def __init__(self, state: StateDir, store: Store, platform: Platform, epoch: int):
        self.state = state
        self.store = store
        self.platform = platform
        self.epoch = epoch
        self.tick: TakeoverTick | None = None

    def advance(self, desired: Desired, observed: Observed, attempted: tuple[Action, ...], now: float) -> float | None:
        if self.tick is not None:
            return self.tick.advance(desired, observed, attempted, now)
        # Read where the tick reads them, after the actions: a row the CLI wrote during the pass is stepped in it.
        rows = open_takeovers(self.store)
        if not rows:
            return None
        from fleet.controller.takeover_tick import TakeoverTick
        self.tick = TakeoverTick(self.state, self.store, self.platform, self.epoch)
        return self.tick.advance(desired, observed, attempted, now, rows=rows)


class SourceOnDemand:
    """The git source follower, from the first pass that finds a source set (suspended or not)."""

    def __init__(self, state: StateDir, store: Store, platform: Platform, *, epoch: int, clock: Callable[[], float],
                 fenced: Callable[[], bool]):
        self.state = state
        self.store = store
        self.platform = platform
        self.epoch = epoch
        self.clock = clock
        self.fenced = fenced
        self.follower: SourceFollower | None = None
        self.looked = False  # a step has read the store and found no source
        self.wanted = False  # a `sync` came before there was a source: the follower's first step fetches

    def want_fetch(self) -> None:
        """`hermes-fleet sync` (or a source's change): fetch the followed source in this pass."""
        if self.follower is None:
            self.wanted = True
        else:
            self.follower.wanted = True

    def step(self, now: float) -> float | None:
        follower = self.follower
        if follower is None:
            if self.fenced():
                return None  # as the follower: nothing is read from a store that may be another controller's
            try:
                if get_source(self.store) is None:
                    self.looked = True
                    return None
            except Exception as exc:  # noqa: BLE001 - said and retried as the follower says and retries it
                from fleet.controller.source_follow import SourceFollower
                return SourceFollower.step_failed(exc, now)
            follower = self._load()
        return follower.step(now)

    def close(self) -> None:
        if self.follower is not None:
            self.follower.close()

    def _load(self) -> SourceFollower:
        from fleet.controller.source_follow import SourceFollower
        follower = SourceFollower(self.state, self.store, self.platform, epoch=self.epoch, clock=self.clock,
                                  fenced=self.fenced)
        # The follower ends a fetch its predecessor left only on its first look, and a `sync` asked for while
        # no source was set still stands: as if it had been stepping all along.
        follower.started = self.looked
        follower.wanted = self.wanted
        self.follower = follower
        return follower
