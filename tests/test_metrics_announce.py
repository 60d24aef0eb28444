"""The metrics endpoint is announced (`.metrics.json`, which `status` and scrapers' tooling read) only once it has a
body to serve: told the address earlier, a scraper's first scrape got 503 (a race a live test hit)."""

from __future__ import annotations

import time
import urllib.request

from fleet.controller import telemetry
from fleet.store.layout import StateDir
from helpers import recorded_idle_fleet
from pass_parts import pass_parts


def test_a_listener_is_announced_only_once_it_has_a_body_to_serve(tmp_path, monkeypatch):
    state = StateDir(recorded_idle_fleet(tmp_path, "announce", extra='metrics: {listen: "127.0.0.1:0"}\n'))
    store, reconciler, metrics = pass_parts(state)
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
