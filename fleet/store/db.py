"""fleet.db: desired generations, applied revisions, inventory, per-profile history,
operator requests, the journal and the maintenance queue. SQLite in WAL mode: a commit
that returned is on disk, whoever is killed next."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import cast

from fleet.spec.model import ProfileSpec
from fleet.spec.secrets import mask_data, mask_text
from fleet.store.diagnosis import FULL, IO, LOCKED, READONLY, classify, read_only_reason
from fleet.store.diagnosis import diagnose as _diagnose
from fleet.store.sources import SOURCES_DDL
from fleet.store.sources import add_missing_columns as _add_missing_source_columns
from fleet.store.takeovers import TAKEOVERS_DDL
from fleet.store.takeovers import trim as _trim_takeovers

# 1: every release before generations were kept whole. 2: generations are append-only (no UNIQUE digest: applying an older spec again makes a
# new generation instead of moving the old one), each generation's origin is kept in generation_origins, and
# each applied revision row says which writer recorded it (applied_revisions.origin). 3: take-overs of Hermes' own
# units (the takeovers table, fleet/store/takeovers.py; created by the DDL on the first writable open).
SCHEMA_VERSION = 3

# Generations are immutable rows, and the newest GENERATIONS_KEPT of them always stay: that is how far back
# `rollback` reaches. Older ones go when a new generation is recorded, except those the inventory still needs
# (the last spec of a removed profile that is still drained from it).
GENERATIONS_KEPT = 50

_DDL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS generations(
  generation INTEGER PRIMARY KEY, digest TEXT NOT NULL, spec_json TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS generation_origins(
  generation INTEGER PRIMARY KEY, origin TEXT NOT NULL, rollback_of INTEGER);
CREATE TABLE IF NOT EXISTS applied_revisions(
  id INTEGER PRIMARY KEY AUTOINCREMENT, generation INTEGER NOT NULL, revision TEXT NOT NULL,
  git_commit TEXT, git_branch TEXT, git_dirty INTEGER, manifest_path TEXT, manifest_digest TEXT,
  applied_by TEXT, plan_summary TEXT, started_at REAL NOT NULL, finished_at REAL, result TEXT NOT NULL, message TEXT,
  origin TEXT);
CREATE TABLE IF NOT EXISTS inventory(
  name TEXT PRIMARY KEY, first_generation INTEGER NOT NULL, last_generation INTEGER NOT NULL,
  state TEXT NOT NULL, prune INTEGER NOT NULL DEFAULT 1, removing_since REAL);
CREATE TABLE IF NOT EXISTS profile_state(
  name TEXT PRIMARY KEY, restarts INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
  last_start REAL, last_exit_code INTEGER, last_exit_at REAL, last_exit_class TEXT,
  failed_reason TEXT, failed_spec_hash TEXT, idle_since REAL, activity_seen REAL,
  drain_intent TEXT, drain_reason TEXT, drain_started REAL, drain_deadline REAL, drain_signalled REAL,
  drain_pid INTEGER, override_desired TEXT, override_by TEXT, override_at REAL,
  action_error TEXT, action_error_kind TEXT, action_error_at REAL, action_errors INTEGER NOT NULL DEFAULT 0,
  recent_starts TEXT);
CREATE TABLE IF NOT EXISTS requests(
  id INTEGER PRIMARY KEY AUTOINCREMENT, profile TEXT NOT NULL, kind TEXT NOT NULL,
  created_at REAL NOT NULL, requested_by TEXT, state TEXT NOT NULL DEFAULT 'pending', done_at REAL, message TEXT);
CREATE TABLE IF NOT EXISTS journal(
  id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, epoch INTEGER NOT NULL, profile TEXT,
  kind TEXT NOT NULL, message TEXT NOT NULL, data TEXT);
CREATE INDEX IF NOT EXISTS journal_profile ON journal(profile, id);
CREATE TABLE IF NOT EXISTS maintenance_requests(
  id INTEGER PRIMARY KEY AUTOINCREMENT, profile TEXT NOT NULL, action TEXT NOT NULL,
  reasons TEXT NOT NULL, requested_by TEXT, idle_seconds REAL, now INTEGER NOT NULL DEFAULT 0,
  not_before REAL, deadline REAL, state TEXT NOT NULL, waiting_on TEXT, created_at REAL NOT NULL,
  updated_at REAL NOT NULL, started_at REAL, finished_at REAL, outcome TEXT,
  update_started REAL, update_finished REAL, update_exit INTEGER, update_output TEXT, epoch INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS open_maintenance ON maintenance_requests(profile)
  WHERE state IN ('pending', 'waiting');
""" + SOURCES_DDL + TAKEOVERS_DDL

PROFILE_STATE_COLUMNS = (
    "restarts", "failures", "last_start", "last_exit_code", "last_exit_at", "last_exit_class",
    "failed_reason", "failed_spec_hash", "idle_since", "activity_seen", "drain_intent", "drain_reason",
    "drain_started", "drain_deadline", "drain_signalled", "drain_pid", "override_desired", "override_by", "override_at",
    "action_error", "action_error_kind", "action_error_at", "action_errors", "recent_starts",
)
# Columns added after the first release: ALTER TABLE brings an older fleet.db up to date.
_ADDED_COLUMNS = {
    "profile_state": (
        ("action_error", "TEXT"), ("action_error_kind", "TEXT"), ("action_error_at", "REAL"),
        ("action_errors", "INTEGER NOT NULL DEFAULT 0"), ("recent_starts", "TEXT"),
    ),
    "applied_revisions": (("origin", "TEXT"),),
}


class StoreError(Exception):
    pass


class StoreFault(StoreError, sqlite3.OperationalError):
    """A write that failed, with what is wrong with the store (`kind`: full, locked, read-only,
    io, corrupt, other) in its message. Still an sqlite3.OperationalError for callers that catch that."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind

    @classmethod
    def of(cls, path: str, exc: BaseException) -> StoreFault:
        kind, message = _diagnose(path, exc)
        return cls(message, kind)


@dataclass(frozen=True)
class ProfileHistory:
    """What the store remembers of one profile: restarts, failures, last exit, a drain, an override, a failed action."""
    name: str
    restarts: int = 0
    failures: int = 0  # consecutive unexpected exits (drives backoff)
    last_start: float | None = None
    last_exit_code: int | None = None
    last_exit_at: float | None = None
    last_exit_class: str | None = None  # crash | restart_now | fatal_config | startup_failed | clean | killed | unknown
    failed_reason: str | None = None
    failed_spec_hash: str | None = None
    idle_since: float | None = None
    activity_seen: float | None = None
    drain_intent: str | None = None  # replace | stop | prune | kill
    drain_reason: str | None = None
    drain_started: float | None = None
    drain_deadline: float | None = None
    drain_signalled: float | None = None
    drain_pid: int | None = None
    override_desired: str | None = None
    override_by: str | None = None  # "<verb>:<user>" (stop, down), or a bare verb from older releases
    override_at: float | None = None
    action_error: str | None = None  # the last failure of an action on this profile (any exception)
    action_error_kind: str | None = None  # the action kind that failed: spawn | drain | kill | reclaim | ...
    action_error_at: float | None = None
    action_errors: int = 0  # consecutive failures of that action (drives its backoff)
    recent_starts: tuple[float, ...] = ()  # the latest spawn attempts, oldest first (drives the start limit)

    @property
    def override_verb(self) -> str | None:
        return (self.override_by or "").partition(":")[0] or None

    @property
    def override_user(self) -> str | None:
        return (self.override_by or "").partition(":")[2] or None

    def desired_state(self, spec: ProfileSpec | None) -> str:
        """What the profile should be: an operator's `stop`/`start`/`down` over the manifest's word, and
        "removed" once no manifest names it. (`suspend` is not part of it: a suspended profile keeps its
        desired state and is only observed.)"""
        if spec is None:
            return "removed"
        return self.override_desired or spec.desired


def _history(row) -> ProfileHistory:
    fields = {k: row[k] for k in row.keys()}  # noqa: SIM118 - iterating a sqlite3.Row yields its values
    raw = fields.get("recent_starts")
    try:
        starts = tuple(float(t) for t in json.loads(raw)) if raw else ()
    except (ValueError, TypeError):
        starts = ()
    fields["recent_starts"] = starts
    if fields.get("action_errors") is None:
        fields["action_errors"] = 0
    return ProfileHistory(**fields)


@dataclass(frozen=True)
class InventoryEntry:
    """A profile the fleet manages or is removing, with the first and last generations that named it."""
    name: str
    first_generation: int
    last_generation: int
    state: str  # active | removing
    prune: bool


@dataclass(frozen=True)
class OperatorRequest:
    """An operator's request to restart a profile (gracefully or forced), as the store queues it."""
    id: int
    profile: str
    kind: str  # restart | force_restart
    created_at: float
    requested_by: str | None
    state: str


@dataclass(frozen=True)
class JournalEntry:
    """One event of the journal, with the profile it concerns and its data."""
    id: int
    at: float
    epoch: int
    profile: str | None
    kind: str
    message: str
    data: dict | None


@dataclass(frozen=True)
class Generation:
    """One recorded version of the desired spec: its number, digest and spec, and where it came from."""
    generation: int
    digest: str
    spec_json: str
    created_at: float
    # Who made it ("apply", "controller run -f", "rollback of 5", ...); None for a generation recorded before
    # origins were kept, or where the row was not read (current_generation).
    origin: str | None = None
    rollback_of: int | None = None  # the generation whose spec a rollback re-applied


def user_name() -> str:
    try:
        import getpass
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def who() -> str:
    return f"{user_name()}@{os.uname().nodename if hasattr(os, 'uname') else 'localhost'} pid {os.getpid()}"


class Store:
    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, durable: bool = True,
                 degradable: bool = False, busy_timeout: float = 30.0, clock=time.time):
        """durable=False (the controller's own bookkeeping): commits survive a crash of any process but
        are not fsynced one by one; requests that the CLI acknowledges to a person are always durable.
        degradable=True (the controller): a write that fails for a reason that passes (full, locked,
        read-only, I/O) does not fail; see DegradableConnection."""
        self.path = os.fspath(path)
        self.readonly = readonly
        self.conn: sqlite3.Connection | DegradableConnection
        if readonly:
            if os.path.islink(self.path):
                raise StoreError(f"{self.path} is a symlink; refusing to follow it")
            if not os.path.exists(self.path):
                self.conn = sqlite3.connect(":memory:", isolation_level=None)
                self.conn.executescript(_DDL)
            else:
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=10)
        else:
            _create_safely(self.path)
            self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute("PRAGMA busy_timeout=30000")
            if readonly:
                try:
                    self.conn.execute("SELECT key FROM meta LIMIT 1").fetchall()  # a damaged file fails here, clearly
                except sqlite3.OperationalError:
                    if not read_only_reason(self.path):
                        raise
                    # On a read-only file system nobody can change the file, and SQLite cannot create the
                    # WAL index a plain read needs: read it as the immutable file it is.
                    self.conn.close()
                    self.conn = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True,
                                                isolation_level=None)
                    self.conn.row_factory = sqlite3.Row
                    self.conn.execute("SELECT key FROM meta LIMIT 1").fetchall()
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
                self.conn.executescript(_DDL)
                with self.tx():
                    _migrate(self.conn)
                    _add_missing_source_columns(self.conn)
                    if self.conn.execute("SELECT 1 FROM meta WHERE key='store_id'").fetchone() is None:
                        self.conn.execute("INSERT INTO meta VALUES('store_id', ?)", (_random_uuid(),))
                    self.conn.execute("INSERT OR IGNORE INTO meta VALUES('epoch', '0')")
                    self.conn.execute("INSERT OR IGNORE INTO meta VALUES('observed_generation', '0')")
                    self.conn.execute("INSERT OR IGNORE INTO meta VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))
        except StoreFault:
            self.conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise StoreFault.of(self.path, exc) from None
        if degradable and not readonly:
            self.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self.conn = DegradableConnection(self.conn, self.path, clock)

    @property
    def degraded(self) -> StoreProblem | None:
        """Why the controller's writes are kept in memory instead of the store, or None."""
        return self.conn.problem if isinstance(self.conn, DegradableConnection) else None

    def catch_up(self) -> bool:
        """Write what was kept in memory into the store; True once the store holds everything."""
        return self.conn.catch_up() if isinstance(self.conn, DegradableConnection) else True

    def close(self) -> None:
        if isinstance(self.conn, DegradableConnection):
            self.conn.catch_up()
        self.conn.close()

    # -- transactions -------------------------------------------------------------------
    def tx(self):
        return _Tx(self.conn, self.path)

    def data_version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    # -- meta ---------------------------------------------------------------------------
    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    @property
    def epoch(self) -> int:
        return int(self.meta("epoch", "0") or 0)

    def bump_epoch(self) -> int:
        with self.tx():
            epoch = self.epoch + 1
            self.set_meta("epoch", str(epoch))
        return epoch

    @property
    def observed_generation(self) -> int:
        return int(self.meta("observed_generation", "0") or 0)

    # -- generations ----------------------------------------------------------------------
    def current_generation(self) -> Generation | None:
        row = self.conn.execute("SELECT * FROM generations ORDER BY generation DESC LIMIT 1").fetchone()
        return Generation(**dict(row)) if row else None

    def current_generation_number(self) -> int | None:
        """The newest generation's number, without its spec (hundreds of KB at 1,000 profiles): what the check before
        each spawn and every pass need, where reading the whole row made a cold start quadratic."""
        row = self.conn.execute("SELECT MAX(generation) FROM generations").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def record_generation(self, digest: str, spec_json: str, names_prune: dict[str, bool], revision: dict,
                          *, prune: bool, origin: str | None = None, rollback_of: int | None = None) -> tuple[int, bool]:
        """Store a new generation unless its digest is the current one's; update the inventory. Returns
        (generation, created). Generations are append-only: a spec applied before (a rollback, or an older
        fleet.yaml applied again) becomes a new generation, and the older one stays as it was. `origin` says
        which writer made it ("apply", "controller run -f", "rollback of 5"); `rollback_of`, whose spec a
        rollback re-applied. The oldest generations beyond GENERATIONS_KEPT go (see there)."""
        now = time.time()
        with self.tx():
            current = self.current_generation()
            created = current is None or current.digest != digest
            if current is not None and not created:
                gen = current.generation
            else:
                gen = (current.generation if current else 0) + 1
                self.conn.execute("INSERT INTO generations(generation, digest, spec_json, created_at) VALUES(?,?,?,?)",
                                  (gen, digest, spec_json, now))
                if origin is not None:
                    self.conn.execute("INSERT OR REPLACE INTO generation_origins(generation, origin, rollback_of) "
                                      "VALUES(?,?,?)", (gen, origin, rollback_of))
            for name, prune_flag in names_prune.items():
                self.conn.execute(
                    "INSERT INTO inventory(name, first_generation, last_generation, state, prune) VALUES(?,?,?, 'active', ?) "
                    "ON CONFLICT(name) DO UPDATE SET last_generation=excluded.last_generation, state='active', "
                    "prune=excluded.prune, removing_since=NULL", (name, gen, gen, int(prune_flag)))
            if prune:
                self.conn.execute(
                    f"UPDATE inventory SET state='removing', removing_since=COALESCE(removing_since, ?) "
                    f"WHERE name NOT IN ({','.join('?' * len(names_prune))})", (now, *names_prune))
            self.conn.execute(
                "INSERT INTO applied_revisions(generation, revision, git_commit, git_branch, git_dirty, manifest_path, "
                "manifest_digest, applied_by, plan_summary, started_at, result, message, origin) "
                "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (gen, revision.get("revision", ""), revision.get("commit"), revision.get("branch"),
                 None if revision.get("dirty") is None else int(revision["dirty"]), revision.get("path"),
                 digest, revision.get("applied_by") or who(), json.dumps(revision.get("summary", {})), now,
                 "Pending" if created else "NoChange", revision.get("message"), origin))
            self.conn.execute("DELETE FROM applied_revisions WHERE id NOT IN "
                              "(SELECT id FROM applied_revisions ORDER BY id DESC LIMIT 50)")
            if created:
                self._drop_old_generations(gen)
        return gen, created

    def _drop_old_generations(self, newest: int) -> None:
        """Keep the newest GENERATIONS_KEPT generations, and any older one the inventory still needs."""
        self.conn.execute("DELETE FROM generations WHERE generation <= ? "
                          "AND generation NOT IN (SELECT last_generation FROM inventory)", (newest - GENERATIONS_KEPT,))
        self.conn.execute("DELETE FROM generation_origins WHERE generation NOT IN (SELECT generation FROM generations)")

    def generation(self, generation: int) -> Generation | None:
        """One generation with its origin (None where it was not recorded: before origins were kept)."""
        row = self.conn.execute("SELECT * FROM generations WHERE generation=?", (generation,)).fetchone()
        if row is None:
            return None
        origin = rollback_of = None
        if _has_table(self.conn, "generation_origins"):  # not in a store of the previous release opened read-only
            kept = self.conn.execute("SELECT origin, rollback_of FROM generation_origins WHERE generation=?",
                                     (generation,)).fetchone()
            if kept is not None:
                origin, rollback_of = kept
        return Generation(row["generation"], row["digest"], row["spec_json"], row["created_at"], origin, rollback_of)

    def generation_numbers(self) -> list[int]:
        """The numbers of the generations the store keeps, oldest first."""
        return [r[0] for r in self.conn.execute("SELECT generation FROM generations ORDER BY generation")]

    def generation_spec(self, generation: int) -> str | None:
        row = self.conn.execute("SELECT spec_json FROM generations WHERE generation=?", (generation,)).fetchone()
        return row[0] if row else None

    def specs_before(self, generation: int) -> list[str]:
        """The spec JSON of every generation older than `generation`, newest first."""
        rows = self.conn.execute("SELECT spec_json FROM generations WHERE generation<? ORDER BY generation DESC",
                                 (generation,)).fetchall()
        return [row[0] for row in rows]

    def set_observed_generation(self, generation: int) -> None:
        with self.tx():
            if self.observed_generation != generation:
                self.set_meta("observed_generation", str(generation))
                self.conn.execute("UPDATE applied_revisions SET result='Succeeded', finished_at=? "
                                  "WHERE generation<=? AND result='Pending'", (time.time(), generation))

    def revisions(self, limit: int = 20) -> list[dict]:
        """The newest applied revisions, newest first; `origin` is None in a row recorded before origins were
        kept."""
        rows = self.conn.execute("SELECT * FROM applied_revisions ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        out = []
        for r in rows:
            row = dict(r)
            row.setdefault("origin", None)  # a store of the previous release, opened read-only
            out.append(_masked(row))
        return out

    # -- inventory ------------------------------------------------------------------------
    def inventory(self) -> tuple[InventoryEntry, ...]:
        rows = self.conn.execute("SELECT * FROM inventory ORDER BY name").fetchall()
        return tuple(InventoryEntry(r["name"], r["first_generation"], r["last_generation"], r["state"], bool(r["prune"]))
                     for r in rows)

    def forget(self, name: str) -> None:
        with self.tx():
            self.conn.execute("DELETE FROM inventory WHERE name=?", (name,))
            self.conn.execute("DELETE FROM profile_state WHERE name=?", (name,))

    # -- per-profile history ----------------------------------------------------------------
    def histories(self) -> dict[str, ProfileHistory]:
        out = {}
        for row in self.conn.execute("SELECT * FROM profile_state"):
            out[row["name"]] = _history(row)
        return out

    def last_spawn_at(self) -> float | None:
        """When any profile's gateway was last started (the stagger spaces spawns from it)."""
        return self.conn.execute("SELECT max(last_start) FROM profile_state").fetchone()[0]

    def history(self, name: str) -> ProfileHistory:
        row = self.conn.execute("SELECT * FROM profile_state WHERE name=?", (name,)).fetchone()
        return _history(row) if row else ProfileHistory(name)

    def update_history(self, name: str, **fields) -> None:
        unknown = set(fields) - set(PROFILE_STATE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown profile_state columns {unknown}")
        if "recent_starts" in fields:
            fields["recent_starts"] = json.dumps([round(t, 3) for t in fields["recent_starts"] or ()])
        cols = ", ".join(fields)
        marks = ", ".join("?" * len(fields))
        updates = ", ".join(f"{k}=excluded.{k}" for k in fields)
        with self.tx():
            self.conn.execute(f"INSERT INTO profile_state(name, {cols}) VALUES(?, {marks}) "
                              f"ON CONFLICT(name) DO UPDATE SET {updates}", (name, *fields.values()))

    # -- operator requests ------------------------------------------------------------------
    def add_request(self, profile: str, kind: str) -> int:
        with self.tx():
            row = self.conn.execute("SELECT id FROM requests WHERE profile=? AND kind=? AND state='pending'",
                                    (profile, kind)).fetchone()
            if row:
                return int(row[0])
            cur = self.conn.execute("INSERT INTO requests(profile, kind, created_at, requested_by) VALUES(?,?,?,?)",
                                    (profile, kind, time.time(), who()))
            return _rowid(cur)

    def pending_requests(self) -> tuple[OperatorRequest, ...]:
        rows = self.conn.execute("SELECT * FROM requests WHERE state='pending' ORDER BY id").fetchall()
        return tuple(OperatorRequest(r["id"], r["profile"], r["kind"], r["created_at"], r["requested_by"], r["state"])
                     for r in rows)

    def request(self, request_id: int) -> OperatorRequest | None:
        r = self.conn.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
        return OperatorRequest(r["id"], r["profile"], r["kind"], r["created_at"], r["requested_by"], r["state"]) if r else None

    def finish_request(self, request_id: int, state: str = "done", message: str = "") -> None:
        with self.tx():
            self.conn.execute("UPDATE requests SET state=?, done_at=?, message=? WHERE id=? AND state='pending'",
                              (state, time.time(), message, request_id))

    # -- maintenance requests (fleet.maintenance.queue gives them their meaning) -----------------
    def maintenance_request(self, request_id: int) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM maintenance_requests WHERE id=?", (request_id,)).fetchone()

    def maintenance_request_profile(self, request_id: int) -> str:
        row = self.conn.execute("SELECT profile FROM maintenance_requests WHERE id=?", (request_id,)).fetchone()
        if row is None:
            raise KeyError(f"no maintenance request #{request_id}")
        return row[0]

    def open_maintenance_requests(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM maintenance_requests WHERE state IN ('pending','waiting','draining') "
                                 "ORDER BY id").fetchall()

    def newest_maintenance_requests(self, limit: int) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM maintenance_requests ORDER BY id DESC LIMIT ?", (limit,)).fetchall()

    def mergeable_maintenance_requests(self) -> list[sqlite3.Row]:
        """The requests a new one may join or subsume: those not draining yet, and updates whose command
        has not finished."""
        return self.conn.execute("SELECT * FROM maintenance_requests WHERE state IN ('pending','waiting') "
                                 "OR (state='draining' AND action='update' AND update_finished IS NULL) "
                                 "ORDER BY id").fetchall()

    def other_waiting_maintenance_requests(self, profile: str, request_id: int) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM maintenance_requests WHERE profile=? AND id!=? AND "
                                 "state IN ('pending','waiting')", (profile, request_id)).fetchall()

    def add_maintenance_request(self, *, profile: str, action: str, reasons: list[str], requested_by: str,
                                idle_seconds: float | None, now_flag: bool, not_before: float | None,
                                deadline: float | None, at: float) -> int:
        with self.tx():
            cur = self.conn.execute(
                "INSERT INTO maintenance_requests(profile, action, reasons, requested_by, idle_seconds, now, "
                "not_before, deadline, state, created_at, updated_at, epoch) "
                "VALUES(?,?,?,?,?,?,?,?, 'pending', ?, ?, ?)",
                (profile, action, json.dumps(reasons), requested_by, idle_seconds, int(now_flag), not_before, deadline,
                 at, at, self.epoch))
            return _rowid(cur)

    def merge_into_maintenance_request(self, request_id: int, *, reasons: list[str], now_flag: bool,
                                       idle_seconds: float | None, at: float) -> None:
        with self.tx():
            self.conn.execute("UPDATE maintenance_requests SET reasons=?, now=?, idle_seconds=?, updated_at=? "
                              "WHERE id=?", (json.dumps(reasons), int(now_flag), idle_seconds, at, request_id))

    def set_maintenance_reasons(self, request_id: int, reasons: list[str]) -> None:
        with self.tx():
            self.conn.execute("UPDATE maintenance_requests SET reasons=? WHERE id=?",
                              (json.dumps(reasons), request_id))

    def set_maintenance_outcome(self, request_id: int, outcome: str) -> None:
        with self.tx():
            self.conn.execute("UPDATE maintenance_requests SET outcome=? WHERE id=?", (outcome, request_id))

    def cancel_maintenance_request(self, request_id: int, outcome: str, at: float) -> None:
        with self.tx():
            self.conn.execute("UPDATE maintenance_requests SET state='cancelled', outcome=?, updated_at=?, "
                              "finished_at=? WHERE id=?", (outcome, at, at, request_id))

    def update_maintenance_request_in(self, request_id: int, states: tuple[str, ...], fields: dict) -> bool:
        """Set `fields` only while the request is in one of `states` (a compare-and-set); whether it was."""
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.tx():
            cur = self.conn.execute(f"UPDATE maintenance_requests SET {cols} WHERE id=? AND state IN "
                                    f"({','.join('?' * len(states))})", (*fields.values(), request_id, *states))
            return cur.rowcount == 1

    def set_maintenance_waiting_on(self, request_id: int, waiting_on: str, at: float) -> None:
        """Only before draining; a pending request becomes waiting, an unchanged text is not rewritten."""
        with self.tx():
            self.conn.execute("UPDATE maintenance_requests SET waiting_on=?, "
                              "state=CASE WHEN state='pending' THEN 'waiting' ELSE state END, updated_at=? "
                              "WHERE id=? AND state IN ('pending','waiting') "
                              "AND (waiting_on IS NOT ? OR state='pending')",
                              (waiting_on, at, request_id, waiting_on))

    # -- journal ----------------------------------------------------------------------------
    def journal(self, kind: str, message: str, *, profile: str | None = None, epoch: int | None = None,
                data: dict | None = None) -> None:
        # Masked before it is kept: the journal is printed by events, status and the controller's readers.
        message, data = mask_text(message), _masked(data) if data else None
        with self.tx():
            self.conn.execute("INSERT INTO journal(at, epoch, profile, kind, message, data) VALUES(?,?,?,?,?,?)",
                              (time.time(), self.epoch if epoch is None else epoch, profile, kind, message,
                               json.dumps(data, sort_keys=True) if data else None))

    def enforce_retention(self, now: float, *, max_age: float, journal_rows: int, request_rows: int) -> int:
        """Drop journal rows and finished requests (operator, maintenance, take-overs) older than max_age or beyond
        the newest N; open requests always stay. Returns how many rows went."""
        cutoff = now - max_age
        with self.tx():
            gone = self.conn.execute("DELETE FROM journal WHERE at < ?", (cutoff,)).rowcount
            gone += self.conn.execute("DELETE FROM journal WHERE id <= (SELECT id FROM journal ORDER BY id DESC "
                                      "LIMIT 1 OFFSET ?)", (journal_rows,)).rowcount
            gone += self.conn.execute("DELETE FROM requests WHERE state != 'pending' AND COALESCE(done_at, created_at) < ?",
                                      (cutoff,)).rowcount
            gone += self.conn.execute("DELETE FROM requests WHERE state != 'pending' AND id <= (SELECT id FROM requests "
                                      "WHERE state != 'pending' ORDER BY id DESC LIMIT 1 OFFSET ?)",
                                      (request_rows,)).rowcount
            finished = "state IN ('done', 'failed', 'cancelled')"
            gone += self.conn.execute(f"DELETE FROM maintenance_requests WHERE {finished} AND "
                                      "COALESCE(finished_at, updated_at) < ?", (cutoff,)).rowcount
            gone += self.conn.execute(f"DELETE FROM maintenance_requests WHERE {finished} AND id <= (SELECT id FROM "
                                      f"maintenance_requests WHERE {finished} ORDER BY id DESC LIMIT 1 OFFSET ?)",
                                      (request_rows,)).rowcount
            gone += _trim_takeovers(self, cutoff, request_rows)
        return gone

    def applied_entry(self, generation: int) -> int:
        """The id of the newest journal entry that recorded `generation` ("applied"), else of the newest entry: what
        a pass over that generation journals comes after it."""
        for row in self.conn.execute("SELECT id, data FROM journal WHERE kind='applied' ORDER BY id DESC LIMIT 20"):
            if row["data"] and json.loads(row["data"]).get("generation") == generation:
                return int(row["id"])
        return int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM journal").fetchone()[0])

    def profile_entry_counts(self, after_id: int) -> dict[str, int]:
        """How many journal entries of each kind (in the order they first came) name a profile after `after_id`."""
        return {kind: count for kind, count in self.conn.execute(
            "SELECT kind, COUNT(*) FROM journal WHERE id>? AND profile IS NOT NULL GROUP BY kind ORDER BY MIN(id)",
            (after_id,))}

    def events(self, *, after_id: int = 0, profile: str | None = None, limit: int = 200) -> list[JournalEntry]:
        q = "SELECT * FROM journal WHERE id>?"
        args: list = [after_id]
        if profile:
            q += " AND profile=?"
            args.append(profile)
        q += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        rows = list(reversed(self.conn.execute(q, args).fetchall()))
        # Masked again on the way out: entries written before the rule knew a form stay hidden too.
        return [JournalEntry(r["id"], r["at"], r["epoch"], r["profile"], r["kind"], mask_text(r["message"]),
                             _masked(json.loads(r["data"])) if r["data"] else None) for r in rows]


def _masked(data: dict) -> dict:
    # mask_data keeps the shape of what it is given: a mapping comes back a mapping.
    return cast(dict, mask_data(data))


def _random_uuid() -> str:
    """A version 4 UUID, as `str(uuid.uuid4())` writes it, without the `uuid` module (which loads `platform`: ~1.5 ms
    of the first `apply` on a host, whose controller waits for it)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _rowid(cur: sqlite3.Cursor) -> int:
    rowid = cur.lastrowid
    assert rowid is not None, "an INSERT always sets lastrowid"
    return rowid


def _migrate(conn: sqlite3.Connection | DegradableConnection) -> None:
    """Bring a fleet.db of an earlier release up to SCHEMA_VERSION, keeping everything it holds. Runs inside
    the opening transaction (BEGIN IMMEDIATE), so two processes that open an old store at once migrate it once.
    Each step looks at the tables themselves, not only at the stored version, and is done at most once."""
    for table, added in _ADDED_COLUMNS.items():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        for name, decl in added:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
    if _digest_is_unique(conn):
        # SQLite cannot drop a constraint: copy the table without it. The columns stay as they were, so a
        # controller of the previous release that still runs reads (and writes) this table as before.
        conn.execute("CREATE TABLE generations_v2(generation INTEGER PRIMARY KEY, digest TEXT NOT NULL, "
                     "spec_json TEXT NOT NULL, created_at REAL NOT NULL)")
        conn.execute("INSERT INTO generations_v2(generation, digest, spec_json, created_at) "
                     "SELECT generation, digest, spec_json, created_at FROM generations")
        conn.execute("DROP TABLE generations")
        conn.execute("ALTER TABLE generations_v2 RENAME TO generations")
    conn.execute("INSERT INTO meta VALUES('schema_version', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value "
                 "WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)", (str(SCHEMA_VERSION),))


def _digest_is_unique(conn: sqlite3.Connection | DegradableConnection) -> bool:
    """Whether `generations` still has the UNIQUE(digest) of the releases before schema version 2."""
    for index in conn.execute("PRAGMA index_list(generations)").fetchall():
        if index[2] and [r[2] for r in conn.execute(f"PRAGMA index_info('{index[1]}')")] == ["digest"]:
            return True
    return False


def _has_table(conn: sqlite3.Connection | DegradableConnection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _create_safely(path: str) -> None:
    """Refuse a symlinked database and create a missing one 0600. Never open-and-close an existing
    database file: closing any descriptor of it drops this process's SQLite (fcntl) locks."""
    import stat as _stat
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))
        except FileExistsError:
            pass
        return
    if _stat.S_ISLNK(st.st_mode):
        raise StoreError(f"{path} is a symlink; refusing to follow it")


@dataclass(frozen=True)
class StoreProblem:
    """Why the store is not taking writes, since when, and how many writes wait in memory."""
    kind: str  # full | locked | read-only | io
    message: str
    since: float
    pending: int  # writes kept in memory, waiting for the store


PASSING = (FULL, LOCKED, READONLY, IO)  # problems that end without losing the store: wait them out
CATCH_UP_BUSY_MS = 200
MAX_PENDING_JOURNAL = 10000  # beyond this, the oldest journal entries kept in memory are dropped
_TX_VERBS = ("BEGIN", "COMMIT", "END", "ROLLBACK")


def _is_journal(sql: str) -> bool:
    return sql.lstrip().startswith("INSERT INTO journal")


class DegradableConnection:
    """The controller's connection to the store. While the store takes writes it is the store. When
    a write fails for a reason that passes (the disk is full, another process holds the write lock,
    the file system went read-only, an I/O error), the controller must keep supervising: from then
    on it reads and writes an in-memory copy of the store, keeps every write in order, and
    `catch_up()` replays them into the store once it takes writes again. Nothing that has been
    written is lost while the controller runs, except the oldest journal entries beyond
    MAX_PENDING_JOURNAL; a controller killed while degraded loses what it kept in memory."""

    def __init__(self, disk: sqlite3.Connection, path: str, clock=time.time):
        self.disk = disk
        self.path = path
        self.clock = clock
        self.mem: sqlite3.Connection | None = None
        self.tx_log: list[tuple[str, tuple]] = []  # writes of the open transaction
        self.pending: list[tuple[str, tuple]] = []  # committed in memory, not yet in the store
        self.problem: StoreProblem | None = None
        self.dropped = 0
        self.journal_kept = 0

    # -- the sqlite3.Connection surface the store uses --------------------------------------------
    @property
    def row_factory(self):
        return self.disk.row_factory

    @row_factory.setter
    def row_factory(self, value) -> None:
        self.disk.row_factory = value
        if self.mem is not None:
            self.mem.row_factory = value

    @property
    def in_transaction(self) -> bool:
        return (self.mem or self.disk).in_transaction

    def executescript(self, script: str):
        return (self.mem or self.disk).executescript(script)

    def close(self) -> None:
        if self.mem is not None:
            self.mem.close()
        self.disk.close()

    def execute(self, sql: str, params=()):
        params = tuple(params)
        verb = sql.lstrip()[:8].upper()
        write = not verb.startswith(("SELECT", "PRAGMA", "WITH"))
        if self.mem is not None:
            cur = self.mem.execute(sql, params)
            self._log(verb, write, sql, params, self.mem)
            return cur
        try:
            cur = self.disk.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if not write or classify(exc) not in PASSING:
                raise
            return self._degrade(exc, verb, sql, params)
        self._log(verb, write, sql, params, self.disk)
        return cur

    def _log(self, verb: str, write: bool, sql: str, params: tuple, conn) -> None:
        if not write:
            return
        if verb.startswith(("BEGIN", "ROLLBACK")):
            self.tx_log = []
        elif verb.startswith(("COMMIT", "END")):
            if conn is self.mem:
                self._keep(self.tx_log)
            self.tx_log = []
        elif conn.in_transaction:
            self.tx_log.append((sql, params))
        elif conn is self.mem:
            self._keep([(sql, params)])

    def _keep(self, writes: list[tuple[str, tuple]]) -> None:
        self.pending.extend(writes)
        self.journal_kept += sum(1 for sql, _ in writes if _is_journal(sql))
        if self.journal_kept > MAX_PENDING_JOURNAL + MAX_PENDING_JOURNAL // 10:  # amortized: drop in batches
            excess = self.journal_kept - MAX_PENDING_JOURNAL
            kept = []
            for w in self.pending:
                if excess and _is_journal(w[0]):
                    excess -= 1
                    self.dropped += 1
                    continue
                kept.append(w)
            self.pending = kept
            self.journal_kept = MAX_PENDING_JOURNAL
        if self.problem is not None:
            self.problem = StoreProblem(self.problem.kind, self.problem.message, self.problem.since, len(self.pending))

    def _degrade(self, exc: sqlite3.OperationalError, verb: str, sql: str, params: tuple):
        """Continue in memory from the store's last committed state plus the open transaction."""
        kind, message = _diagnose(self.path, exc)
        in_tx = verb.startswith(_TX_VERBS[:3]) or self.disk.in_transaction
        if self.disk.in_transaction:
            try:
                self.disk.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        mem = sqlite3.connect(":memory:", isolation_level=None)
        try:
            self.disk.backup(mem)
        except sqlite3.Error:
            mem.close()
            raise StoreFault(message, kind) from exc
        mem.row_factory = self.disk.row_factory
        self.mem = mem
        self.problem = StoreProblem(kind, message, self.clock(), len(self.pending))
        opened = self.tx_log
        self.tx_log = []
        if in_tx:
            self.execute("BEGIN IMMEDIATE")
            for w_sql, w_params in opened:
                self.execute(w_sql, w_params)
            if verb.startswith("BEGIN"):
                return None
        return self.execute(sql, params)

    def catch_up(self) -> bool:
        """Replay the kept writes into the store in one transaction; back to the store on success."""
        if self.mem is None:
            return True
        if self.mem.in_transaction:
            return False
        busy = self.disk.execute("PRAGMA busy_timeout").fetchone()[0]
        self.disk.execute(f"PRAGMA busy_timeout={CATCH_UP_BUSY_MS}")  # a retry never stalls supervision
        try:
            self.disk.execute("BEGIN IMMEDIATE")
            for sql, params in self.pending:
                self.disk.execute(sql, params)
            if self.dropped:
                self.disk.execute("INSERT INTO journal(at, epoch, kind, message) VALUES(?, "
                                  "(SELECT CAST(value AS INTEGER) FROM meta WHERE key='epoch'), 'warning', ?)",
                                  (self.clock(), f"{self.dropped} journal entries were dropped while the store "
                                                 f"was unavailable"))
            self.disk.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.disk.in_transaction:
                try:
                    self.disk.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            kind, message = _diagnose(self.path, exc)
            assert self.problem is not None, "set whenever self.mem is"
            self.problem = StoreProblem(kind, message, self.problem.since, len(self.pending))
            return False
        finally:
            self.disk.execute(f"PRAGMA busy_timeout={int(busy)}")
        self.mem.close()
        self.mem = None
        self.pending = []
        self.dropped = 0
        self.journal_kept = 0
        self.problem = None
        return True


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, re-entrant: nested uses join the outer transaction. A failure
    leaves as a StoreFault that says what is wrong with the store (full, locked, read-only...)."""

    def __init__(self, conn: sqlite3.Connection | DegradableConnection, path: str = ""):
        self.conn = conn
        self.path = path
        self.outer = False

    def __enter__(self):
        if not self.conn.in_transaction:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreFault.of(self.path, exc) from exc
            self.outer = True
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if not self.outer:
            return False
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as failed:
                self._rollback()
                raise StoreFault.of(self.path, failed) from failed
        else:
            self._rollback()
            if isinstance(exc, sqlite3.OperationalError) and not isinstance(exc, StoreFault):
                raise StoreFault.of(self.path, exc) from exc
        return False

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled back (e.g. disk full); the original error is what matters
