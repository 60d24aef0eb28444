"""The metrics endpoint is announced (`.metrics.json`, which `status` and scrapers' tooling read) only once it has a
body to serve: told the address earlier, a scraper's first scrape got 503 (a race a live test hit)."""

from __future__ import annotations

import sys
import time
import urllib.request

from fleet.controller import telemetry
from fleet.controller.bookkeeping import StoreBookkeeping
from fleet.controller.fence_watch import FenceWatch
from fleet.controller.metrics_on_demand import MetricsOnDemand
from fleet.controller.reconcile import Reconciler
from fleet.controller.record import record_manifest
from fleet.platform import current_platform
from fleet.spec.load import load_manifest
from fleet.store.db import Store
from fleet.store.fence import Fence
from fleet.store.health import HealthFile
from fleet.store.layout import StateDir, ensure_state_dir


def test_a_listener_is_announced_only_once_it_has_a_body_to_serve(tmp_path, monkeypatch):
    state = StateDir(tmp_path / "state")
    ensure_state_dir(state)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(f"""version: 1
name: announce
hermes: {{home: {tmp_path / 'home'}}}
metrics: {{listen: "127.0.0.1:0"}}
profiles:
  alpha:
    driver: process
    command: ["{sys.executable}", "-c", "pass"]
    suspend: true
""")
    store = Store(state.db)
    record_manifest(store, load_manifest(str(manifest)), {"revision": "1"}, prune=True, source="test",
                    lift_down=False)
    fence = Fence()
    fence.hold("state directory", state.root)
    epoch = store.bump_epoch()
    reconciler = Reconciler(state, store, current_platform(), epoch=epoch, fence=FenceWatch(fence),
                            bookkeeping=StoreBookkeeping(store, HealthFile(state), time.time), clock=time.time)
    metrics = MetricsOnDemand(state, store, epoch)
    announced: list[tuple[str, bool]] = []
    write = telemetry.write_endpoint_state

    def spy(at, endpoint):
        announced.append((endpoint.listen, metrics.telemetry is not None and metrics.telemetry.published is not None))
        write(at, endpoint)

    monkeypatch.setattr(telemetry, "write_endpoint_state", spy)
    try:
        now = time.time()
        metrics.after_pass(reconciler.reconcile_once(now), now, time.time(), 1.0)
        addresses = [listen for listen, _ in announced if listen]
        assert addresses, announced
        assert all(published for listen, published in announced if listen), announced
        with urllib.request.urlopen(f"http://{addresses[-1]}/metrics", timeout=5) as response:
            assert response.status == 200 and b"hermes_fleet_profile_up" in response.read()
    finally:
        metrics.close()
        store.close()
