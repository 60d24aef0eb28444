"""Who may change the desired state. One writer at a time: once the fleet follows a git source, a local
change made beside it (an `apply -f`, a `rollback`) would be overwritten by the source's next commit, so such
a change is refused while the source is followed and not suspended (Argo CD refuses a rollback while
auto-sync is on, for the same reason)."""

from __future__ import annotations

from fleet.store.db import Store
from fleet.store.sources import get_source, hold_commit


def followed_source_refusal(store: Store) -> str | None:
    """Why a rollback must be refused because the fleet follows a source that is not suspended, or None to
    allow it. `rollback` asks this before it shows or records anything, and refuses (exit 3) with the
    message."""
    source = get_source(store)
    if source is None or source.suspended:
        return None
    return (f"the fleet follows source {source.name} ({source.ref} of {source.url}); a rollback would be "
            f"overwritten by its next commit. Suspend it first (`hermes-fleet source suspend --reason ...`); "
            f"after the rollback, `source resume` follows the branch again but holds the commit rolled back from "
            f"until a new commit (or `source resume --accept-current`)")


def hold_rolled_back_commit(store: Store) -> str | None:
    """After a rollback while a (suspended) source is set: the commit it had applied is held, so resuming the
    source does not silently apply again what was rolled back from. Returns that commit, if any."""
    source = get_source(store)
    if source is None or not source.applied_commit:
        return None
    hold_commit(store, source.name, source.applied_commit)
    return source.applied_commit
