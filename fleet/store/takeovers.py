"""Take-overs of Hermes' own gateway units, and their give-backs (`hermes-fleet takeover`, `release`): one row
per request, its state durable, so a controller killed at any step resumes it from there (every step checks
before it acts). All of its SQL is here.

A take-over: requested -> recorded (what the unit is now) -> gated (it can no longer start) -> draining (its
gateway finishes its turns) -> stopping (planned stop) -> spawning (the fleet starts its own gateway and
verifies it) -> done. Any failure: -> giving_back (the fleet's gateway, if it started one, drains and stops;
the gate goes; the unit starts again if it ran) -> unit_starting -> rolled_back; `failed` when even that did
not bring the unit back (a person must look).
A release: requested -> giving_back -> unit_starting -> released (the profile then stays held for its unit)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleet.spec.secrets import mask_text

if TYPE_CHECKING:
    from fleet.store.db import Store

TAKEOVER, RELEASE = "takeover", "release"

REQUESTED = "requested"
RECORDED = "recorded"
GATED = "gated"
DRAINING = "draining"
STOPPING = "stopping"
SPAWNING = "spawning"
GIVING_BACK = "giving_back"
UNIT_STARTING = "unit_starting"
DONE = "done"
RELEASED = "released"
ROLLED_BACK = "rolled_back"
FAILED = "failed"
FINISHED = (DONE, RELEASED, ROLLED_BACK, FAILED)
SUCCEEDED = (DONE, RELEASED)

# What the planner does for a profile while its row is open (fleet/plan/planner.py): hold (never adopt the
# unit's gateway, never spawn beside it), give_back (drain and stop the fleet's own gateway, start nothing),
# fleet (plan it like any profile: the spawn of a take-over).
HOLD, GIVE_BACK, FLEET = "hold", "give_back", "fleet"
PHASES = {REQUESTED: HOLD, RECORDED: HOLD, GATED: HOLD, DRAINING: HOLD, STOPPING: HOLD, UNIT_STARTING: HOLD,
          SPAWNING: FLEET, GIVING_BACK: GIVE_BACK}

# Part of the store's schema (fleet/store/db.py runs it on every writable open). At most one open row per profile.
TAKEOVERS_DDL = """
CREATE TABLE IF NOT EXISTS takeovers(
  id INTEGER PRIMARY KEY AUTOINCREMENT, profile TEXT NOT NULL, kind TEXT NOT NULL, home TEXT NOT NULL,
  state TEXT NOT NULL, requested_by TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL,
  units TEXT, gateway_pid INTEGER, gateway_start INTEGER, deadline REAL, stop_sent REAL, started_units TEXT,
  failures INTEGER NOT NULL DEFAULT 0, detail TEXT, outcome TEXT, error TEXT, epoch INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS open_takeover ON takeovers(profile)
  WHERE state NOT IN ('done', 'released', 'rolled_back', 'failed');
"""


@dataclass(frozen=True)
class Takeover:
    """A `takeovers` row."""
    id: int
    profile: str
    kind: str  # takeover | release
    home: str
    state: str
    requested_by: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    units: tuple[dict, ...]  # per unit: what `record` found (UnitFacts.as_json), the take-over's only memory of it
    gateway_pid: int | None  # the unit's gateway being drained and stopped
    gateway_start: int | None
    deadline: float | None  # of the current step
    stop_sent: float | None
    started_units: tuple[str, ...]  # the give-back: the units it started
    failures: int  # consecutive failed attempts of the current give-back step
    detail: str | None  # what the current step waits for
    outcome: str | None  # why it ended as it did (for a rollback: the reason)
    error: str | None  # why a take-over is being rolled back
    epoch: int | None

    @property
    def open(self) -> bool:
        return self.state not in FINISHED

    @property
    def phase(self) -> str | None:
        return PHASES.get(self.state)

    @property
    def unit_names(self) -> str:
        return ", ".join(str(u.get("name")) for u in self.units) or "its native unit"

    def describe(self) -> str:
        """One line for `status` and `takeover`'s progress: what the row is doing now."""
        verb = {TAKEOVER: "taking over from", RELEASE: "giving back to"}[self.kind]
        if self.kind == TAKEOVER and self.state in (GIVING_BACK, UNIT_STARTING):
            verb = "rolling back to"
        text = f"{verb} {self.unit_names}: {self.state}"
        if self.detail:
            text += f" ({self.detail})"
        return text

    @classmethod
    def from_row(cls, row) -> Takeover:
        data = {k: row[k] for k in row.keys()}  # noqa: SIM118 - iterating a sqlite3.Row yields its values
        data["units"] = tuple(_json_list(data.get("units")))
        data["started_units"] = tuple(str(u) for u in _json_list(data.get("started_units")))
        return cls(**data)


def _json_list(text) -> list:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return value if isinstance(value, list) else []


class TakeoverError(Exception):
    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def has_table(store: Store) -> bool:
    """A read-only open of a store from before take-overs has no table: nothing is under way there."""
    return store.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='takeovers'").fetchone() \
        is not None


def open_takeovers(store: Store) -> list[Takeover]:
    if not has_table(store):
        return []
    rows = store.conn.execute("SELECT * FROM takeovers WHERE state NOT IN ('done','released','rolled_back','failed') "
                              "ORDER BY id").fetchall()
    return [Takeover.from_row(r) for r in rows]


def get(store: Store, takeover_id: int) -> Takeover | None:
    if not has_table(store):
        return None
    row = store.conn.execute("SELECT * FROM takeovers WHERE id=?", (takeover_id,)).fetchone()
    return Takeover.from_row(row) if row else None


def recent(store: Store, profile: str | None = None, limit: int = 20) -> list[Takeover]:
    if not has_table(store):
        return []
    q, args = "SELECT * FROM takeovers", []
    if profile:
        q += " WHERE profile=?"
        args.append(profile)
    rows = store.conn.execute(q + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    return [Takeover.from_row(r) for r in reversed(rows)]


def submit(store: Store, *, profile: str, kind: str, home: str, requested_by: str,
           lift_release: bool = False) -> Takeover:
    """A new request (one transaction with its journal entry); refused while one is open for the profile. A
    take-over lifts the `release` hold of its profile in the same transaction (`lift_release`)."""
    now = time.time()
    with store.tx():
        current = store.conn.execute("SELECT * FROM takeovers WHERE profile=? AND state NOT IN "
                                     "('done','released','rolled_back','failed')", (profile,)).fetchone()
        if current is not None:
            other = Takeover.from_row(current)
            raise TakeoverError("busy", f"{profile}: {other.kind} #{other.id} is under way ({other.describe()})")
        cur = store.conn.execute("INSERT INTO takeovers(profile, kind, home, state, requested_by, created_at, "
                                 "updated_at, epoch) VALUES(?,?,?,?,?,?,?,?)",
                                 (profile, kind, home, REQUESTED, requested_by, now, now, store.epoch))
        rid = int(cur.lastrowid or 0)
        if lift_release and store.history(profile).override_verb == RELEASE:
            store.update_history(profile, override_desired=None, override_by=None, override_at=None)
        store.journal(f"{kind}_requested", f"#{rid} {kind} of {profile} ({home}) requested by {requested_by}",
                      profile=profile, data={"id": rid, "by": requested_by})
    row = get(store, rid)
    assert row is not None, "just written"
    return row


def transition(store: Store, takeover_id: int, state: str, *, expect: tuple[str, ...], **fields) -> bool:
    """Compare-and-set on the state: a second writer (there is none: the controller is the only one past
    `requested`) could never move a row backwards. Finished states set `finished_at`."""
    now = time.time()
    sets = {"state": state, "updated_at": now, **fields}
    if state in FINISHED:
        sets["finished_at"] = now
    for key in ("units", "started_units"):
        if key in sets and not isinstance(sets[key], str):
            sets[key] = json.dumps(list(sets[key]), sort_keys=True)
    for key in ("outcome", "error", "detail"):
        if isinstance(sets.get(key), str):
            sets[key] = mask_text(sets[key])[:2000]
    cols = ", ".join(f"{k}=?" for k in sets)
    with store.tx():
        cur = store.conn.execute(f"UPDATE takeovers SET {cols} WHERE id=? AND state IN ({','.join('?' * len(expect))})",
                                 (*sets.values(), takeover_id, *expect))
        return cur.rowcount == 1


def set_detail(store: Store, takeover_id: int, detail: str | None, **fields) -> None:
    """What the current step waits for, and facts it learnt (no state change)."""
    sets = {"detail": mask_text(detail)[:2000] if detail else None, **fields, "updated_at": time.time()}
    with store.tx():
        store.conn.execute(f"UPDATE takeovers SET {', '.join(f'{k}=?' for k in sets)} WHERE id=?",
                           (*sets.values(), takeover_id))


def trim(store: Store, cutoff: float, keep: int) -> int:
    """Retention: finished rows older than `cutoff` or beyond the newest `keep` finished ones."""
    if not has_table(store):
        return 0
    finished = "state IN ('done','released','rolled_back','failed')"
    gone = store.conn.execute(f"DELETE FROM takeovers WHERE {finished} AND COALESCE(finished_at, updated_at) < ?",
                              (cutoff,)).rowcount
    gone += store.conn.execute(f"DELETE FROM takeovers WHERE {finished} AND id <= (SELECT id FROM takeovers WHERE "
                               f"{finished} ORDER BY id DESC LIMIT 1 OFFSET ?)", (keep,)).rowcount
    return gone
