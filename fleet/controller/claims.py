"""This fleet's claims on the Hermes homes it manages (the lease itself is fleet/store/claims.py)."""

from __future__ import annotations

import dataclasses
import os
import time

from fleet.controller.log import log
from fleet.controller.record import DOWN
from fleet.observe.model import ProfileObservation
from fleet.spec.model import DRIVER_HERMES
from fleet.store.claims import CLAIM_RENEW_SECONDS, Claim, own_claim, release_claim, write_claim
from fleet.store.db import Store
from fleet.store.layout import StateDir


class HomeClaims:
    """Written when missing, renewed within the lease, taken over when stale (with a journal entry),
    released when a profile leaves the fleet or `down` holds it. Another fleet's live claim is left
    alone: the planner reports that profile as a conflict."""

    def __init__(self, state: StateDir, store: Store, epoch: int):
        self.state = state
        self.store = store
        self.epoch = epoch
        self.mine = own_claim(state, store.meta("store_id") or "", os.getpid())
        self.homes: dict[str, float] = {}  # Hermes home -> when this process last wrote its claim there
        self.unwritable: set[str] = set()  # homes whose claim could not be written (logged once)

    def update(self, desired, specs: dict, observed) -> None:
        mine = self.mine
        if mine is None:
            return
        now = time.time()
        wanted = _wanted_homes(desired, specs, observed)
        for home in [h for h in self.homes if h not in wanted]:
            release_claim(home, mine)
            del self.homes[home]
        for home, name in wanted.items():
            self._claim(mine, home, name, observed.get(name), now)

    def _claim(self, mine: Claim, home: str, name: str, obs: ProfileObservation, now: float) -> None:
        if obs.other_fleet or obs.claim == "other":
            return
        written = self.homes.get(home)
        if obs.claim == "ours" and written is not None and 0.0 <= now - written < CLAIM_RENEW_SECONDS:
            return
        if not self._write(mine, home, name, now):
            return
        if obs.claim == "stale":
            self.store.journal("claim_taken_over", f"{home}: stale claim of {obs.claim_note} taken over "
                               f"(its controller is gone and its lease lapsed)", profile=name, epoch=self.epoch,
                               data={"home": home, "previous": obs.claim_note})

    def _write(self, mine: Claim, home: str, name: str, now: float) -> bool:
        try:
            write_claim(home, dataclasses.replace(mine, renewed_at=now))
        except OSError as exc:
            if home not in self.unwritable:
                self.unwritable.add(home)
                log(f"{name}: cannot write the claim in {home}: {exc}")
            return False
        self.unwritable.discard(home)
        self.homes[home] = now
        return True


def _wanted_homes(desired, specs: dict, observed) -> dict[str, str]:
    """Hermes home -> the profile that should hold this fleet's claim on it."""
    wanted = {}
    for name in desired.spec.names:
        spec = specs.get(name)
        # A fleet brought `down` gives its homes back: another fleet may take them at once.
        held_down = observed.get(name).history.override_verb == DOWN
        if spec is not None and spec.driver == DRIVER_HERMES and not held_down:
            wanted[spec.hermes_home] = name
    return wanted
