"""`rollback`: an earlier generation's stored spec, re-applied as a new generation. Nothing is read from
fleet.yaml or git: generations are immutable rows, so the spec a generation ran is the spec it gets back."""

from __future__ import annotations

import json
from dataclasses import dataclass

from fleet.spec.codec import fleet_digest, fleet_from_dict
from fleet.spec.load import Manifest
from fleet.store.db import GENERATIONS_KEPT, Generation, Store


class RollbackError(Exception):
    """There is no generation to roll back to: none recorded, an unknown number, or one the store no longer
    keeps."""


@dataclass(frozen=True)
class RollbackTarget:
    """A rollback to make: the generation it goes back to, the one it leaves, and the target's spec."""
    target: Generation  # the generation rolled back to
    current: Generation  # the generation rolled back from
    manifest: Manifest  # the target's spec, as the plan preview and `record_manifest` take a manifest
    revision: dict  # the applied-revision row the rollback records: the target's revision, when still known

    @property
    def origin(self) -> str:
        return f"rollback of {self.target.generation}"

    @property
    def unchanged(self) -> bool:
        """The target's spec is the current one: a rollback would change nothing."""
        return self.manifest.digest == self.current.digest


def rollback_target(store: Store, requested: int | None) -> RollbackTarget:
    """The generation to roll back to: `requested`, else the newest one before the current generation."""
    current = store.current_generation()
    if current is None:
        raise RollbackError("no generation has been recorded yet; nothing to roll back")
    kept = store.generation_numbers()
    if requested is None:
        older = [n for n in kept if n < current.generation]
        if not older:
            raise RollbackError(f"generation {current.generation} is the only generation; nothing to roll back to")
        requested = older[-1]
    if requested < 1 or requested > current.generation:
        raise RollbackError(f"no generation {requested}: generations run from 1 to {current.generation}")
    target = store.generation(requested)
    if target is None:
        raise RollbackError(f"generation {requested} is no longer kept: the store keeps the newest "
                            f"{GENERATIONS_KEPT} generations (the oldest kept is {kept[0]})")
    return RollbackTarget(target=target, current=current, manifest=stored_manifest(target),
                          revision=_revision_of(store, target))


def stored_manifest(gen: Generation) -> Manifest:
    """A generation's stored spec as a manifest: the same spec, the digest this release gives it."""
    try:
        spec = fleet_from_dict(json.loads(gen.spec_json))
    except (ValueError, KeyError, TypeError) as exc:
        raise RollbackError(f"generation {gen.generation}'s stored spec cannot be read: {exc!r}") from None
    return Manifest(path=f"generation {gen.generation}'s spec", text=gen.spec_json, spec=spec, digest=fleet_digest(spec))


def _revision_of(store: Store, gen: Generation) -> dict:
    """What the rollback's applied-revision row says: the revision (git commit, branch, dirty flag, path) the
    target was applied from, while its row is still kept, so `history` shows which commit's spec runs again."""
    rows = [r for r in store.revisions(50) if r["generation"] == gen.generation and r["result"] != "NoChange"]
    message = f"rollback of {gen.generation}"
    if not rows:
        return {"revision": gen.digest, "message": message}
    row = rows[-1]  # the row that made it (the oldest of its rows)
    return {"revision": row["revision"], "commit": row["git_commit"], "branch": row["git_branch"],
            "dirty": None if row["git_dirty"] is None else bool(row["git_dirty"]), "path": row["manifest_path"],
            "message": message}
