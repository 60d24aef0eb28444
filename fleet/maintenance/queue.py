"""The durable queue: submit (deduplicated), cancel, list, and the controller's transitions.
Every change is one SQLite transaction, so a kill -9 of anyone loses nothing acknowledged."""

from __future__ import annotations

import json
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
    request: MaintenanceRequest
    merged: bool  # joined an open request instead of queueing a second one


def get(store: Store, request_id: int) -> MaintenanceRequest | None:
    row = store.conn.execute("SELECT * FROM maintenance_requests WHERE id=?", (request_id,)).fetchone()
    return MaintenanceRequest.from_row(row) if row else None


def open_requests(store: Store) -> list[MaintenanceRequest]:
    rows = store.conn.execute("SELECT * FROM maintenance_requests WHERE state IN ('pending','waiting','draining') "
                              "ORDER BY id").fetchall()
    return [MaintenanceRequest.from_row(r) for r in rows]


def recent(store: Store, limit: int = 50) -> list[MaintenanceRequest]:
    rows = store.conn.execute("SELECT * FROM maintenance_requests ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [MaintenanceRequest.from_row(r) for r in reversed(rows)]


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
        candidates = [MaintenanceRequest.from_row(r) for r in store.conn.execute(
            "SELECT * FROM maintenance_requests WHERE state IN ('pending','waiting') "
            "OR (state='draining' AND action='update' AND update_finished IS NULL) ORDER BY id")]
        # An update for everyone already queued (or whose command has not finished) covers any single-profile
        # request; a person's --now never widens to profiles it did not name.
        covering = next((r for r in candidates if r.profile == ALL and r.action == "update" and not now_flag), None) or \
            next((r for r in candidates if r.profile == profile and (r.action == action or r.action == "update")), None)
        if covering is not None and not (covering.action == "restart" and action == "update"):
            _merge(store, covering, reason, now_flag, idle_seconds, now)
            return Submitted(get(store, covering.id), True)
        # An update subsumes pending restarts of the profiles it covers: it restarts them anyway.
        subsumed = [r for r in candidates if r.action == "restart" and r.state != "draining"
                    and (profile == ALL or r.profile == profile)]
        reasons = [reason]
        for r in subsumed:
            reasons.extend(r.reasons)
            store.conn.execute("UPDATE maintenance_requests SET state='cancelled', outcome=?, updated_at=?, finished_at=? "
                               "WHERE id=?", (f"subsumed by an update request", now, now, r.id))
        cur = store.conn.execute(
            "INSERT INTO maintenance_requests(profile, action, reasons, requested_by, idle_seconds, now, not_before, "
            "deadline, state, created_at, updated_at, epoch) VALUES(?,?,?,?,?,?,?,?, 'pending', ?, ?, ?)",
            (profile, action, json.dumps(_unique(reasons)), by, idle_seconds, int(now_flag), not_before, deadline,
             now, now, store.epoch))
        rid = int(cur.lastrowid)
        for r in subsumed:
            store.conn.execute("UPDATE maintenance_requests SET outcome=? WHERE id=?", (f"subsumed by #{rid}", r.id))
        store.journal("maintenance_queued", f"#{rid} {action} {profile}: {reason}",
                      profile=None if profile == ALL else profile, data={"id": rid, "by": by})
    return Submitted(get(store, rid), False)


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
    store.conn.execute("UPDATE maintenance_requests SET reasons=?, now=?, idle_seconds=?, updated_at=? WHERE id=?",
                       (json.dumps(reasons), int(req.now or now_flag), idle, now, req.id))
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
        store.conn.execute("UPDATE maintenance_requests SET state='cancelled', outcome=?, updated_at=?, finished_at=? "
                           "WHERE id=?", (f"cancelled by {by or who()}", now, now, request_id))
        store.journal("maintenance_cancelled", f"#{request_id} cancelled", profile=None if req.profile == ALL else req.profile)
    return get(store, request_id)


def absorb_open_duplicates(store: Store, request_id: int, profile: str) -> None:
    """Before a request re-enters `waiting`, fold newer open requests for the same profile into it
    (the queue holds at most one open request per profile)."""
    with store.tx():
        rows = store.conn.execute("SELECT id, reasons FROM maintenance_requests WHERE profile=? AND id!=? AND "
                                  "state IN ('pending','waiting')", (profile, request_id)).fetchall()
        if not rows:
            return
        mine = json.loads(store.conn.execute("SELECT reasons FROM maintenance_requests WHERE id=?",
                                             (request_id,)).fetchone()[0])
        now = time.time()
        for row in rows:
            mine = _unique(mine + json.loads(row[1]))
            store.conn.execute("UPDATE maintenance_requests SET state='cancelled', outcome=?, updated_at=?, "
                               "finished_at=? WHERE id=?", (f"merged into #{request_id}", now, now, row[0]))
        store.conn.execute("UPDATE maintenance_requests SET reasons=? WHERE id=?", (json.dumps(mine), request_id))


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
    cols = ", ".join(f"{k}=?" for k in sets)
    with store.tx():
        cur = store.conn.execute(f"UPDATE maintenance_requests SET {cols} WHERE id=? AND state IN "
                                 f"({','.join('?' * len(expect))})", (*sets.values(), request_id, *expect))
        return cur.rowcount == 1


def set_waiting_on(store: Store, request_id: int, waiting_on: str) -> None:
    with store.tx():
        store.conn.execute("UPDATE maintenance_requests SET waiting_on=?, state=CASE WHEN state='pending' THEN 'waiting' "
                           "ELSE state END, updated_at=? WHERE id=? AND state IN ('pending','waiting') AND "
                           "(waiting_on IS NOT ? OR state='pending')", (waiting_on, time.time(), request_id, waiting_on))
