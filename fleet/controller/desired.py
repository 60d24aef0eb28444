"""The desired state as the store holds it: the newest generation, plus the last-applied spec
of every profile that was removed but is still in the inventory (so it can be drained)."""

from __future__ import annotations

import json
from collections.abc import Container, Iterator
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
        # (generation, removed profile) -> the entry last applied for it, None when no kept generation has one:
        # every pass asks, and the answer reads earlier generations' specs whole. Both are immutable facts.
        self._last_applied: dict[tuple[int, str], dict | None] = {}

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
        specs = self.profiles(number, spec)
        prune = self.store.meta("prune", "1") == "1"
        desired = Desired(spec=spec, generation=number, prune=prune, allow_empty=True, previous=dict(specs))
        return desired, specs

    def profiles(self, generation: int, spec: FleetSpec) -> dict[str, ProfileSpec]:
        """Every profile generation `generation` (of `spec`) plans for: its own, then each one it removed that the
        inventory still holds, with the spec last applied for it."""
        specs = {p.name: p for p in spec.profiles}
        removed = list(self._removed(generation, specs))
        specs.update((name, profile_from_dict(entry)) for name, entry in removed)
        return specs

    def names(self) -> list[str]:
        """The profiles `current()` gives a spec for, without decoding their specs (what `down` holds)."""
        gen = self.store.current_generation()
        if gen is None:
            return []
        names = [p["name"] for p in json.loads(gen.spec_json)["profiles"]]
        return names + [name for name, _ in self._removed(gen.generation, set(names))]

    def _removed(self, generation: int, named: Container[str]) -> Iterator[tuple[str, dict]]:
        """The inventory's profiles that `generation` no longer names (`named`), each with the entry last applied
        for it; one applied before no kept generation has none, and is left out."""
        for entry in self.store.inventory():
            if entry.name in named:
                continue
            key = (generation, entry.name)
            if key not in self._last_applied:
                self._last_applied[key] = self._last_entry(generation, entry.name)
            last = self._last_applied[key]
            if last is not None:
                yield entry.name, last

    def _last_entry(self, generation: int, name: str) -> dict | None:
        for spec_json in self.store.specs_before(generation):
            last = next((p for p in json.loads(spec_json)["profiles"] if p["name"] == name), None)
            if last is not None:
                return last
        return None
