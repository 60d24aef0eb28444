"""How long each gateway has been idle, kept in the store on every pass.

It runs whether or not a maintenance request is open: a request submitted later (and a spec change's idle gate)
asks how long the gateway has been idle already, which only a record kept all along can answer."""

from __future__ import annotations

from fleet.observe.model import Observed, ProfileObservation
from fleet.store.db import Store

IDLE_POLL_SECONDS = 5.0  # while a maintenance is open, activity is looked at this often


def track_idle(store: Store, observed: Observed, now: float) -> None:
    """idle_since: set at the first idle observation, cleared by any sign of work (Hermes has no
    last-activity field, so a rewrite of its status during an idle spell counts as activity)."""
    for name, obs in observed.profiles.items():
        fields = _idle_changes(obs, now)
        if fields:
            store.update_history(name, **fields)


def _idle_changes(obs: ProfileObservation, now: float) -> dict:
    h = obs.history
    activity = obs.status.activity_at if obs.status else None
    moved = activity is not None and h.activity_seen is not None and activity > h.activity_seen
    idle = _looks_idle(obs)
    fields: dict[str, float | None] = {}
    if activity is not None and activity != h.activity_seen:
        fields["activity_seen"] = activity
    if idle and (h.idle_since is None or moved):
        fields["idle_since"] = now
    elif not idle and h.idle_since is not None:
        fields["idle_since"] = None
    return fields


def _looks_idle(obs: ProfileObservation) -> bool:
    st = obs.status
    if obs.process is None or obs.history.drain_intent:
        return False
    if st is None:
        return True  # a process-driver child without the state contract: nothing says busy
    return st.state in ("running", None) and not st.active
