"""The desired state as the store holds it: the newest generation, plus the last-applied spec
of every profile that was removed but is still in the inventory (so it can be drained)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from fleet.spec.codec import fleet_from_dict, profile_from_dict
from fleet.spec.model import FleetSpec, ProfileSpec
from fleet.store.db import Generation, Store

if TYPE_CHECKING:
    from fleet.plan.model import Desired


class DesiredSource:
    def __init__(self, store: Store):
        self.store = store
        self._cache: dict[int, FleetSpec] = {}

    def spec(self, gen: Generation) -> FleetSpec:
        # From the row already read: a second read could find it gone (generations beyond the store's
        # window are dropped when a newer one is recorded).
        if gen.generation not in self._cache:
            self._cache[gen.generation] = fleet_from_dict(json.loads(gen.spec_json))
        return self._cache[gen.generation]

    def current(self) -> tuple[Desired | None, dict[str, ProfileSpec]]:
        # Imported here: `down` reads names() before it wakes the controller, and needs none of the planner then.
        from fleet.plan.model import Desired

        number = self.store.current_generation_number()
        if number is None:
            return None, {}
        if number not in self._cache:  # every pass asks; the spec is read and decoded once per generation
            gen = self.store.current_generation()
            if gen is None:
                return None, {}
            number = gen.generation
            self.spec(gen)
        spec = self._cache[number]
        specs = {p.name: p for p in spec.profiles}
        for entry in self.store.inventory():
            if entry.name not in specs:
                removed = self.last_spec_of(entry.name, number)
                if removed is not None:
                    specs[entry.name] = removed
        prune = self.store.meta("prune", "1") == "1"
        desired = Desired(spec=spec, generation=number, prune=prune, allow_empty=True, previous=dict(specs))
        return desired, specs

    def names(self) -> list[str]:
        """The profiles `current()` gives a spec for, without decoding their specs (what `down` holds)."""
        gen = self.store.current_generation()
        if gen is None:
            return []
        names = [p["name"] for p in json.loads(gen.spec_json)["profiles"]]
        known = set(names)
        names += [entry.name for entry in self.store.inventory()
                  if entry.name not in known and self._last_entry_of(entry.name, gen.generation) is not None]
        return names

    def last_spec_of(self, name: str, before: int) -> ProfileSpec | None:
        entry = self._last_entry_of(name, before)
        return profile_from_dict(entry) if entry is not None else None

    def _last_entry_of(self, name: str, before: int) -> dict | None:
        for spec_json in self.store.specs_before(before):
            for p in json.loads(spec_json)["profiles"]:
                if p["name"] == name:
                    return p
        return None
