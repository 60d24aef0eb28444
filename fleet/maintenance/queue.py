"""The durable queue: submit (deduplicated), cancel, list, and the controller's transitions.
Every change is one SQLite transaction, so a kill -9 of anyone loses nothing acknowledged."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fleet.maintenance.model import ALL, CANCELLABLE, MaintenanceRequest
from fleet.store.db import Store, who


class QueueError(Exception):
    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Submitted:
    """What a submission gave back: the request, and whether it joined one already open."""
    request: MaintenanceRequest
    merged: bool  # joined an open request instead of queueing a second one


def get(store: Store, request_id: int) -> MaintenanceRequest | None:
    row = store.maintenance_request(request_id)
    return MaintenanceRequest.from_row(row) if row else None


def _known(store: Store, request_id: int) -> MaintenanceRequest:
    """A request known to exist (just written, or being worked on): only retention racing it could have removed it."""
    req = get(store, request_id)
    if req is None:
        raise QueueError("not_found", f"no maintenance request #{request_id}")
    return req


def open_requests(store: Store) -> list[MaintenanceRequest]:
    return [MaintenanceRequest.from_row(r) for r in store.open_maintenance_requests()]


def recent(store: Store, limit: int = 50) -> list[MaintenanceRequest]:
    return [MaintenanceRequest.from_row(r) for r in reversed(store.newest_maintenance_requests(limit))]


def submit(store: Store, *, profile: str, action: str, reason: str, requested_by: str | None = None,
           idle_seconds: float | None = None, now_flag: bool = False, not_before: float | None = None,
           deadline: float | None = None) -> Submitted:
    if action not in ("restart", "update"):
        raise QueueError("bad_action", f"action must be restart or update, not {action!r}")
    if not reason or not reason.strip():
        raise QueueError("missing_reason", "a reason is required (it is shown to operators and kept in the journal)")
    now = time.time()
    by = requested_by or who()
    with store.tx():
        candidates = [MaintenanceRequest.from_row(r) for r in store.mergeable_maintenance_requests()]
        # An update for everyone already queued (or whose command has not finished) covers any single-profile
        # request; a person's --now never widens to profiles it did not name.
        covering = next((r for r in candidates if r.profile == ALL and r.action == "update" and not now_flag), None) or \
            next((r for r in candidates if r.profile == profile and (r.action == action or r.action == "update")), None)
        if covering is not None and not (covering.action == "restart" and action == "update"):
            _merge(store, covering, reason, now_flag, idle_seconds, now)
            return Submitted(_known(store, covering.id), True)
        # An update subsumes pending restarts of the profiles it covers: it restarts them anyway.
        subsumed = [r for r in candidates if r.action == "restart" and r.state != "draining"
                    and (profile == ALL or r.profile == profile)]
        reasons = [reason]
        for r in subsumed:
            reasons.extend(r.reasons)
            store.cancel_maintenance_request(r.id, "subsumed by an update request", now)
        rid = store.add_maintenance_request(profile=profile, action=action, reasons=_unique(reasons), requested_by=by,
                                            idle_seconds=idle_seconds, now_flag=now_flag, not_before=not_before,
                                            deadline=deadline, at=now)
        for r in subsumed:
            store.set_maintenance_outcome(r.id, f"subsumed by #{rid}")
        store.journal("maintenance_queued", f"#{rid} {action} {profile}: {reason}",
                      profile=None if profile == ALL else profile, data={"id": rid, "by": by})
    return Submitted(_known(store, rid), False)


def _unique(items):
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _merge(store: Store, req: MaintenanceRequest, reason: str, now_flag: bool, idle_seconds, now: float) -> None:
    reasons = _unique(list(req.reasons) + [reason])
    idle = req.idle_seconds
    if idle_seconds is not None:
        idle = idle_seconds if idle is None else min(idle, idle_seconds)
    store.merge_into_maintenance_request(req.id, reasons=reasons, now_flag=req.now or now_flag, idle_seconds=idle,
                                         at=now)
    store.journal("maintenance_merged", f"#{req.id} also: {reason}", profile=None if req.profile == ALL else req.profile)


def cancel(store: Store, request_id: int, *, by: str | None = None) -> MaintenanceRequest:
    now = time.time()
    with store.tx():
        req = get(store, request_id)
        if req is None:
            raise QueueError("not_found", f"no maintenance request #{request_id}")
        if req.state not in CANCELLABLE:
            raise QueueError("not_cancellable", f"#{request_id} is {req.state}; only pending or waiting requests "
                                                f"can be cancelled (draining is the point of no return)")
        store.cancel_maintenance_request(request_id, f"cancelled by {by or who()}", now)
        store.journal("maintenance_cancelled", f"#{request_id} cancelled", profile=None if req.profile == ALL else req.profile)
    return _known(store, request_id)


def absorb_open_duplicates(store: Store, request_id: int, profile: str) -> None:
    """Before a request re-enters `waiting`, fold newer open requests for the same profile into it
    (the queue holds at most one open request per profile)."""
    with store.tx():
        others = [MaintenanceRequest.from_row(r) for r in store.other_waiting_maintenance_requests(profile, request_id)]
        if not others:
            return
        mine = list(_known(store, request_id).reasons)
        now = time.time()
        for other in others:
            mine = _unique(mine + list(other.reasons))
            store.cancel_maintenance_request(other.id, f"merged into #{request_id}", now)
        store.set_maintenance_reasons(request_id, mine)


def transition(store: Store, request_id: int, state: str, *, expect: tuple[str, ...], waiting_on: str | None = None,
               outcome: str | None = None, **fields) -> bool:
    """Compare-and-set on the state, so a cancel racing the controller can never be overwritten."""
    now = time.time()
    sets = {"state": state, "updated_at": now, "waiting_on": waiting_on, **fields}
    if outcome is not None:
        sets["outcome"] = outcome
    if state in ("done", "failed", "cancelled"):
        sets["finished_at"] = now
    if state == "draining":
        sets.setdefault("started_at", now)
    return store.update_maintenance_request_in(request_id, expect, sets)


def set_waiting_on(store: Store, request_id: int, waiting_on: str) -> None:
    store.set_maintenance_waiting_on(request_id, waiting_on, time.time())
