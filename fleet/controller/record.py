"""Recording a manifest as the desired state. `apply`, `rollback` (an earlier generation's stored spec) and
`controller run -f` (what every service unit runs at each start) all record through here, so all leave the
same generation, prune setting, revision row and journal entry behind, each with its origin.

They differ in one deliberate way, `lift_down`: `apply` is a person asking for the manifest, so it
lifts a `down` (as `docker compose up` brings back what `docker compose down` removed). A controller
start is a restart (a reboot, a service manager's restart, a crash), so it leaves a `down` in force: the
fleet stays down until `apply` or `start` brings it back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleet.spec.codec import fleet_to_dict
from fleet.spec.hashing import canonical_json
from fleet.store.db import ProfileHistory, Store

if TYPE_CHECKING:  # the manifest loader (PyYAML, the schema) stays out of a controller that follows no source
    from fleet.spec.load import Manifest

DOWN = "down"  # the override verb of a profile held stopped by `hermes-fleet down`


@dataclass(frozen=True)
class Recorded:
    """The generation a manifest was recorded as, and what became of the profiles `down` held stopped."""
    generation: int
    created: bool  # False: the manifest's digest was already the newest generation
    lifted: tuple[str, ...]  # profiles this record brought back from `down`
    held_down: tuple[ProfileHistory, ...]  # profiles `down` still holds stopped


def record_manifest(store: Store, manifest: Manifest, revision: dict, *, prune: bool, source: str,
                    lift_down: bool, origin: str | None = None, rollback_of: int | None = None) -> Recorded:
    """One transaction: the generation (with the inventory and the applied-revision row), the prune
    setting the planner reads, the `down` overrides, and the journal entry.

    `source` is the command that records ("apply", "controller run", "rollback"); `origin` is the writer as
    `history` shows it with the generation ("apply", "controller run -f", "rollback of 5"), `source` when not
    given; `rollback_of` the generation whose stored spec a rollback re-applies."""
    origin = origin or source
    with store.tx():
        generation, created = store.record_generation(
            manifest.digest, canonical_json(fleet_to_dict(manifest.spec)),
            {p.name: p.prune for p in manifest.spec.profiles}, revision, prune=prune, origin=origin,
            rollback_of=rollback_of)
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
        message = f"generation {generation} from {revision.get('revision') or 'unknown'} ({origin})"
        if not created:
            message += " (no change)"
        if lifted:
            message += f"; `down` lifted for {len(lifted)} profile(s)"
        if held:
            message += f"; {len(held)} profile(s) stay down until `apply` or `start`"
        store.journal("applied", message, data={"generation": generation, "source": source, "origin": origin,
                                                "changed": created, "lifted_down": lifted,
                                                "held_down": [h.name for h in held],
                                                **({"rollback_of": rollback_of} if rollback_of is not None else {})})
    return Recorded(generation, created, tuple(lifted), tuple(held))
