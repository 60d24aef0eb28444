"""Who may change the desired state. One writer at a time: once the fleet follows a git source, a local
change made beside it (an `apply -f`, a `rollback`) would be overwritten by the source's next commit, so such
a change is refused while the source is followed and not suspended (Argo CD refuses a rollback while
auto-sync is on, for the same reason)."""

from __future__ import annotations

from fleet.store.db import Store


def followed_source_refusal(store: Store) -> str | None:
    """Why a local change of the desired state must be refused because the fleet follows a source that is not
    suspended, or None to allow it. `rollback` asks this before it shows or records anything, and refuses
    (exit 3) with the message.

    The source feature fills this in: while a followed source is not suspended, return a message that names
    the source (its URL without credentials, and its ref) and the ways out (`source suspend`, or the
    command's own flag that suspends it). No source can be followed yet, so today it always allows."""
    del store  # read by the source feature
    return None
