"""Recording a manifest as the desired state. `apply` and `controller run -f` (what every service unit
runs at each start) both record through here, so both leave the same generation, prune setting,
revision row and journal entry behind.

They differ in one deliberate way, `lift_down`: `apply` is a person asking for the manifest, so it
lifts a `down` (as `docker compose up` brings back what `docker compose down` removed). A controller
start is a restart (a reboot, a service manager's restart, a crash), so it leaves a `down` in force: the
fleet stays down until `apply` or `start` brings it back."""

from __future__ import annotations

from dataclasses import dataclass

from fleet.spec.codec import fleet_to_dict
from fleet.spec.hashing import canonical_json
from fleet.spec.load import Manifest
from fleet.store.db import ProfileHistory, Store

DOWN = "down"  # the override verb of a profile held stopped by `hermes-fleet down`


@dataclass(frozen=True)
class Recorded:
    generation: int
    created: bool  # False: the manifest's digest was already the newest generation
    lifted: tuple[str, ...]  # profiles this record brought back from `down`
    held_down: tuple[ProfileHistory, ...]  # profiles `down` still holds stopped


def record_manifest(store: Store, manifest: Manifest, revision: dict, *, prune: bool, source: str,
                    lift_down: bool) -> Recorded:
    """One transaction: the generation (with the inventory and the applied-revision row), the prune
    setting the planner reads, the `down` overrides, and the journal entry."""
    with store.tx():
        generation, created = store.record_generation(
            manifest.digest, canonical_json(fleet_to_dict(manifest.spec)),
            {p.name: p.prune for p in manifest.spec.profiles}, revision, prune=prune)
        store.set_meta("prune", "1" if prune else "0")
        lifted: list[str] = []
        held: list[ProfileHistory] = []
        for name, h in sorted(store.histories().items()):
            if h.override_verb != DOWN:
                continue
            if lift_down:
                store.update_history(name, override_desired=None, override_by=None, override_at=None)
                lifted.append(name)
            else:
                held.append(h)
        message = f"generation {generation} from {revision.get('revision') or 'unknown'} ({source})"
        if not created:
            message += " (no change)"
        if lifted:
            message += f"; `down` lifted for {len(lifted)} profile(s)"
        if held:
            message += f"; {len(held)} profile(s) stay down until `apply` or `start`"
        store.journal("applied", message, data={"generation": generation, "source": source, "changed": created,
                                                "lifted_down": lifted, "held_down": [h.name for h in held]})
    return Recorded(generation, created, tuple(lifted), tuple(held))
