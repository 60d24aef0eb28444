"""The source the controller follows (`hermes-fleet source set git ...`): one per state directory. Its row holds
the configuration, whether it is suspended (why, by whom, since when), the revisions (the commit last fetched,
the commit last attempted and how that went, the commit last applied and as which generation), and the retry
state (consecutive fetch failures, the next attempt, the token of the last `sync`). All of its SQL is here.

No secret is ever stored: a repository URL that carries credentials is refused before it gets here, and
error texts are masked by the one secrets rule before they are written."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from fleet.spec.hashing import sha256_hex
from fleet.spec.secrets import mask_text

if TYPE_CHECKING:
    from fleet.store.db import Store

DEFAULT_SOURCE = "default"

# Part of the store's schema (fleet/store/db.py runs it on every writable open, so an older fleet.db gains the
# table the first time a command or the controller opens it for writing). A column added later goes into
# _ADDED_COLUMNS, as for profile_state.
SOURCES_DDL = """
CREATE TABLE IF NOT EXISTS sources(
  name TEXT PRIMARY KEY, kind TEXT NOT NULL, url TEXT NOT NULL, ref TEXT NOT NULL, path TEXT NOT NULL,
  interval_s REAL NOT NULL, timeout_s REAL NOT NULL, verify_mode TEXT NOT NULL DEFAULT 'none',
  allowed_signers TEXT, gpg_home TEXT, allow_empty INTEGER NOT NULL DEFAULT 0, config_digest TEXT NOT NULL,
  set_by TEXT, set_at REAL NOT NULL,
  suspended INTEGER NOT NULL DEFAULT 0, suspend_reason TEXT, suspended_by TEXT, suspended_at REAL,
  fetched_commit TEXT, fetched_at REAL,
  attempted_commit TEXT, attempted_config TEXT, attempted_result TEXT, attempted_error TEXT, attempted_at REAL,
  applied_commit TEXT, applied_generation INTEGER, applied_at REAL,
  failures INTEGER NOT NULL DEFAULT 0, last_error TEXT, last_error_at REAL, next_attempt_at REAL,
  requested_token TEXT, requested_at REAL, handled_token TEXT,
  fetch_pid INTEGER, fetch_create_time REAL, held_commit TEXT);
"""
_ADDED_COLUMNS: tuple[tuple[str, str], ...] = ()

# attempted_result: what became of the last commit the controller looked at.
APPLIED = "applied"  # recorded as a generation (or it already was the newest one)
INVALID = "invalid"  # the manifest does not validate: file:line:col in attempted_error
REFUSED = "refused"  # valid, but `apply` would refuse its plan (empty-fleet guard, a native service)
UNVERIFIED = "unverified"  # --verify is set and the commit is not signed by a trusted key
MISSING = "missing"  # the commit has no file at the source's path
HELD = "held"  # the commit a rollback rolled back from: waits for a new commit or `resume --accept-current`
FAILED_RESULTS = (INVALID, REFUSED, UNVERIFIED, MISSING)


@dataclass(frozen=True)
class SourceConfig:
    """What `source set` records; a change of any of it makes the controller fetch and look again at once."""
    name: str
    kind: str  # git
    url: str  # a local path (made absolute) or any URL git fetches, never with credentials
    ref: str  # a branch, a tag or a full ref name
    path: str  # the manifest's path inside the repository
    interval_s: float
    timeout_s: float
    verify_mode: str = "none"  # none | ssh | gpg
    allowed_signers: str | None = None  # ssh: the allowed-signers file
    gpg_home: str | None = None  # gpg: the keyring directory (GNUPGHOME)
    allow_empty: bool = False  # a commit without profiles may drain the fleet

    @property
    def digest(self) -> str:
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        return sha256_hex(json.dumps(body, sort_keys=True))[:16]


@dataclass(frozen=True)
class Source:
    """A `sources` row."""
    name: str
    kind: str
    url: str
    ref: str
    path: str
    interval_s: float
    timeout_s: float
    verify_mode: str
    allowed_signers: str | None
    gpg_home: str | None
    allow_empty: bool
    config_digest: str
    set_by: str | None
    set_at: float
    suspended: bool
    suspend_reason: str | None
    suspended_by: str | None
    suspended_at: float | None
    fetched_commit: str | None
    fetched_at: float | None
    attempted_commit: str | None
    attempted_config: str | None  # the config digest the attempt was made under
    attempted_result: str | None  # APPLIED or one of FAILED_RESULTS
    attempted_error: str | None
    attempted_at: float | None
    applied_commit: str | None
    applied_generation: int | None
    applied_at: float | None
    failures: int  # consecutive failed fetches
    last_error: str | None  # the last fetch's error while failures > 0
    last_error_at: float | None
    next_attempt_at: float | None  # None: at once
    requested_token: str | None  # set by `sync`
    requested_at: float | None
    handled_token: str | None  # the last `sync` token a finished fetch answered
    fetch_pid: int | None  # a fetch in flight: its git process (so a restarted controller can end it)
    fetch_create_time: float | None
    held_commit: str | None  # rolled back from: not applied again until a new commit or `resume --accept-current`

    @property
    def config(self) -> SourceConfig:
        return SourceConfig(self.name, self.kind, self.url, self.ref, self.path, self.interval_s, self.timeout_s,
                            self.verify_mode, self.allowed_signers, self.gpg_home, self.allow_empty)

    @property
    def sync_requested(self) -> bool:
        return self.requested_token is not None and self.requested_token != self.handled_token

    @property
    def attempt_failed(self) -> bool:
        """The last commit looked at was not applied (and nothing applied since)."""
        return self.attempted_result in FAILED_RESULTS

    @property
    def failing(self) -> bool:
        """A failure `source show` reports: the last commit was not applied, or the fetches fail."""
        return self.attempt_failed or self.failures > 0

    def revision(self, commit: str | None) -> str | None:
        """Flux's revision string: `main@sha1:<commit>`."""
        return f"{self.ref}@sha1:{commit}" if commit else None


_COLUMNS = tuple(f.name for f in fields(Source))
# What the controller writes as it follows the source (the CLI writes the configuration and the suspension).
PROGRESS_COLUMNS = frozenset({
    "fetched_commit", "fetched_at", "attempted_commit", "attempted_config", "attempted_result", "attempted_error",
    "attempted_at", "applied_commit", "applied_generation", "applied_at", "failures", "last_error",
    "last_error_at", "next_attempt_at", "handled_token", "fetch_pid", "fetch_create_time", "held_commit",
})


def add_missing_columns(conn) -> None:
    have = {r[1] for r in conn.execute("PRAGMA table_info(sources)")}
    for name, decl in _ADDED_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE sources ADD COLUMN {name} {decl}")


def _source(row) -> Source:
    values = {k: row[k] for k in _COLUMNS}
    values["allow_empty"] = bool(values["allow_empty"])
    values["suspended"] = bool(values["suspended"])
    values["failures"] = int(values["failures"] or 0)
    return Source(**values)


def get_source(store: Store, name: str | None = None) -> Source | None:
    """The source called `name`, or the state directory's one source; None when none is set (or the store
    predates sources and is open read-only)."""
    try:
        if name is None:
            row = store.conn.execute("SELECT * FROM sources ORDER BY name LIMIT 1").fetchone()
        else:
            row = store.conn.execute("SELECT * FROM sources WHERE name=?", (name,)).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return _source(row) if row else None


def set_source(store: Store, config: SourceConfig, *, by: str, at: float) -> tuple[Source | None, Source]:
    """Record the configuration; (the row before, the row now). A changed configuration is due at once: the
    fetch failures and the backoff are forgotten, and the commit last attempted is looked at again."""
    with store.tx():
        before = get_source(store, config.name)
        if before is None:
            store.conn.execute(
                "INSERT INTO sources(name, kind, url, ref, path, interval_s, timeout_s, verify_mode, allowed_signers, "
                "gpg_home, allow_empty, config_digest, set_by, set_at) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (config.name, config.kind, config.url, config.ref, config.path, config.interval_s, config.timeout_s,
                 config.verify_mode, config.allowed_signers, config.gpg_home, int(config.allow_empty),
                 config.digest, by, at))
        else:
            store.conn.execute(
                "UPDATE sources SET kind=?, url=?, ref=?, path=?, interval_s=?, timeout_s=?, verify_mode=?, "
                "allowed_signers=?, gpg_home=?, allow_empty=?, config_digest=?, set_by=?, set_at=?, failures=0, "
                "last_error=NULL, last_error_at=NULL, next_attempt_at=NULL WHERE name=?",
                (config.kind, config.url, config.ref, config.path, config.interval_s, config.timeout_s,
                 config.verify_mode, config.allowed_signers, config.gpg_home, int(config.allow_empty),
                 config.digest, by, at, config.name))
        after = get_source(store, config.name)
    assert after is not None, "just written"
    return before, after


def remove_source(store: Store, name: str) -> bool:
    with store.tx():
        return store.conn.execute("DELETE FROM sources WHERE name=?", (name,)).rowcount == 1


def suspend_source(store: Store, name: str, *, reason: str | None, by: str, at: float) -> bool:
    """Stop following (the fleet keeps its generation); False when there is no such source. Suspending a
    suspended source keeps the first suspension's reason, author and time."""
    with store.tx():
        return store.conn.execute(
            "UPDATE sources SET suspended=1, suspend_reason=?, suspended_by=?, suspended_at=? "
            "WHERE name=? AND suspended=0", (reason, by, at, name)).rowcount == 1


def resume_source(store: Store, name: str, *, accept_current: bool = False) -> bool:
    """Follow again, at once: the branch's commit is looked at again even if it was attempted before, since
    while the source was suspended another writer may have changed the fleet. A commit held after a rollback
    stays held unless `accept_current` (Argo CD's rule: resuming never silently re-applies what was rolled
    back from)."""
    held = "NULL" if accept_current else "held_commit"
    with store.tx():
        return store.conn.execute(
            "UPDATE sources SET suspended=0, suspend_reason=NULL, suspended_by=NULL, suspended_at=NULL, "
            f"attempted_commit=NULL, attempted_config=NULL, failures=0, next_attempt_at=NULL, held_commit={held} "
            "WHERE name=?", (name,)).rowcount == 1


def hold_commit(store: Store, name: str, commit: str | None) -> None:
    """After a rollback: the source's applied commit is not applied again until the branch moves on."""
    with store.tx():
        store.conn.execute("UPDATE sources SET held_commit=? WHERE name=?", (commit, name))


def request_sync(store: Store, name: str, token: str, at: float) -> None:
    with store.tx():
        store.conn.execute("UPDATE sources SET requested_token=?, requested_at=? WHERE name=?", (token, at, name))


def update_progress(store: Store, name: str, **values) -> None:
    """The controller's bookkeeping of one source (PROGRESS_COLUMNS only); error texts are masked."""
    unknown = set(values) - PROGRESS_COLUMNS
    if unknown:
        raise ValueError(f"not progress columns of a source: {sorted(unknown)}")
    for key in ("attempted_error", "last_error"):
        if values.get(key):
            values[key] = mask_text(values[key])
    cols = ", ".join(f"{k}=?" for k in values)
    with store.tx():
        store.conn.execute(f"UPDATE sources SET {cols} WHERE name=?", (*values.values(), name))
