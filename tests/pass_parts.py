"""A controller's passes without its loop: the store, the reconciler and the metrics of a state directory, built as
`fleet.controller.loop` builds them, for tests that drive passes one at a time. It imports fleet's modules only (a
test of what the controller loads runs it in a fresh interpreter)."""

from __future__ import annotations

import time

from fleet.controller.bookkeeping import StoreBookkeeping
from fleet.controller.fence_watch import FenceWatch
from fleet.controller.metrics_on_demand import MetricsOnDemand
from fleet.controller.reconcile import Reconciler
from fleet.platform import current_platform
from fleet.store.db import Store
from fleet.store.fence import Fence
from fleet.store.health import HealthFile
from fleet.store.layout import StateDir


def pass_parts(state: StateDir) -> tuple[Store, Reconciler, MetricsOnDemand]:
    store = Store(state.db)
    fence = Fence()
    fence.hold("state directory", state.root)
    epoch = store.bump_epoch()
    reconciler = Reconciler(state, store, current_platform(), epoch=epoch, fence=FenceWatch(fence),
                            bookkeeping=StoreBookkeeping(store, HealthFile(state), time.time), clock=time.time)
    return store, reconciler, MetricsOnDemand(state, store, epoch)
