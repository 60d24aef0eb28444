"""Generations are immutable: applying an older spec again makes a new generation, each generation keeps who
made it, the newest GENERATIONS_KEPT always stay (how far `rollback` reaches), and a fleet.db of the previous
release opens with its history. Store-level and rollback-target tests: no CLI, no controller."""

from __future__ import annotations

import sqlite3
import sys

import pytest

from fleet.controller.record import record_manifest
from fleet.controller.rollback import RollbackError, rollback_target, stored_manifest
from fleet.spec.codec import fleet_to_dict
from fleet.spec.hashing import canonical_json
from fleet.spec.load import Manifest, parse_manifest
from fleet.store.db import GENERATIONS_KEPT, SCHEMA_VERSION, Store

# The previous release's tables, as it created them (fleet/store/db.py before generations became append-only).
PREVIOUS_RELEASE_DDL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS generations(
  generation INTEGER PRIMARY KEY, digest TEXT NOT NULL UNIQUE, spec_json TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS applied_revisions(
  id INTEGER PRIMARY KEY AUTOINCREMENT, generation INTEGER NOT NULL, revision TEXT NOT NULL,
  git_commit TEXT, git_branch TEXT, git_dirty INTEGER, manifest_path TEXT, manifest_digest TEXT,
  applied_by TEXT, plan_summary TEXT, started_at REAL NOT NULL, finished_at REAL, result TEXT NOT NULL, message TEXT);
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
"""


def manifest(tmp_path, **profiles: str) -> Manifest:
    """A manifest of process-driver profiles, each with one env value (so the digest follows the values)."""
    lines = ["version: 1", f"hermes: {{home: {tmp_path / 'home'}, command: [{sys.executable}]}}", "profiles:"]
    lines += [f"  {name}: {{driver: process, command: [{sys.executable}, -c, pass], env: {{V: '{value}'}}}}"
              for name, value in profiles.items()]
    if not profiles:
        lines[-1] = "profiles: {}"
    return parse_manifest("\n".join(lines) + "\n", str(tmp_path / "fleet.yaml"), str(tmp_path))


def record(store: Store, m: Manifest, origin: str = "apply", rollback_of: int | None = None) -> tuple[int, bool]:
    return store.record_generation(m.digest, canonical_json(fleet_to_dict(m.spec)),
                                   {p.name: p.prune for p in m.spec.profiles}, {"revision": m.digest},
                                   prune=True, origin=origin, rollback_of=rollback_of)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "fleet.db", durable=False)
    yield s
    s.close()


def test_applying_an_older_spec_again_makes_a_new_generation_and_keeps_the_old_one(store, tmp_path):
    a, b = manifest(tmp_path, alpha="1"), manifest(tmp_path, alpha="2")
    assert record(store, a) == (1, True)
    assert record(store, b) == (2, True)
    assert record(store, a) == (3, True)
    assert store.generation_numbers() == [1, 2, 3]
    assert store.generation(1).digest == store.generation(3).digest == a.digest
    assert store.generation(2).digest == b.digest
    # The same spec as the current generation's is no change: no new row.
    assert record(store, a) == (3, False)
    assert store.generation_numbers() == [1, 2, 3]
    assert [r["result"] for r in store.revisions()] == ["NoChange", "Pending", "Pending", "Pending"]


def test_the_current_generations_number_is_the_current_generations(store, tmp_path):
    assert store.current_generation_number() is None and store.current_generation() is None
    for value, expected in (("1", 1), ("2", 2), ("1", 3), ("1", 3)):
        record(store, manifest(tmp_path, alpha=value))
        assert store.current_generation_number() == store.current_generation().generation == expected


def test_the_desired_state_follows_a_new_generation_from_its_cached_spec(store, tmp_path):
    """DesiredSource decodes a generation's spec once; each pass reads only the number, and a new generation
    is read and decoded when it appears."""
    from fleet.controller.desired import DesiredSource

    source = DesiredSource(store)
    record(store, manifest(tmp_path, alpha="1"))
    first, specs = source.current()
    assert first.generation == 1 and specs["alpha"].env_map["V"] == "1"
    again, _ = source.current()
    assert again.spec is first.spec  # the cached decode, not a second one
    record(store, manifest(tmp_path, alpha="2", beta="3"))
    newer, specs = source.current()
    assert newer.generation == 2 and sorted(specs) == ["alpha", "beta"] and specs["alpha"].env_map["V"] == "2"


def test_each_generation_keeps_who_made_it(store, tmp_path):
    a, b = manifest(tmp_path, alpha="1"), manifest(tmp_path, alpha="2")
    record(store, a, "apply")
    record(store, b, "controller run -f")
    record(store, a, "rollback of 1", rollback_of=1)
    record(store, a, "apply --force")  # no change: the generation keeps its origin, the revision row has its own
    assert [(store.generation(n).origin, store.generation(n).rollback_of) for n in (1, 2, 3)] == [
        ("apply", None), ("controller run -f", None), ("rollback of 1", 1)]
    assert [r["origin"] for r in store.revisions()] == ["apply --force", "rollback of 1", "controller run -f", "apply"]
    store.close()
    reopened = Store(store.path, readonly=True)  # durably: another process reads the same
    try:
        assert reopened.generation(3).origin == "rollback of 1"
    finally:
        reopened.close()


def test_record_manifest_records_the_origin_and_journals_it(store, tmp_path):
    record_manifest(store, manifest(tmp_path, alpha="1"), {"revision": "r1"}, prune=True, source="apply",
                    lift_down=True)
    record_manifest(store, manifest(tmp_path, alpha="2"), {"revision": "r2"}, prune=True, source="controller run",
                    origin="controller run -f", lift_down=False)
    recorded = record_manifest(store, manifest(tmp_path, alpha="1"), {"revision": "r1"}, prune=True,
                               source="rollback", origin="rollback of 1", rollback_of=1, lift_down=True)
    assert recorded.generation == 3 and recorded.created
    assert [store.generation(n).origin for n in (1, 2, 3)] == ["apply", "controller run -f", "rollback of 1"]
    applied = [e for e in store.events() if e.kind == "applied"]
    assert [e.data["origin"] for e in applied] == ["apply", "controller run -f", "rollback of 1"]
    assert [e.data["source"] for e in applied] == ["apply", "controller run", "rollback"]
    assert applied[-1].data["rollback_of"] == 1 and "rollback_of" not in applied[0].data
    assert applied[-1].message == "generation 3 from r1 (rollback of 1)"


def test_the_newest_generations_stay_and_so_does_one_the_inventory_still_needs(store, tmp_path):
    # `old` leaves the manifest after generation 1 and is still being drained: its spec must stay readable.
    store.record_generation("d1", "{}", {"old": True, "a": True}, {}, prune=True, origin="apply")
    total = GENERATIONS_KEPT + 10
    for i in range(2, total + 1):
        store.record_generation(f"d{i}", "{}", {"a": True}, {}, prune=True, origin="apply")
    kept = store.generation_numbers()
    assert kept == [1, *range(total - GENERATIONS_KEPT + 1, total + 1)]
    origins = [r[0] for r in store.conn.execute("SELECT generation FROM generation_origins ORDER BY generation")]
    assert origins == kept
    # A digest seen long ago is still a new generation, not a revival of a dropped row.
    assert store.record_generation("d5", "{}", {"a": True}, {}, prune=True) == (total + 1, True)


def test_a_store_of_the_previous_release_opens_with_its_history(tmp_path):
    path = tmp_path / "fleet.db"
    old = sqlite3.connect(path)
    old.executescript(PREVIOUS_RELEASE_DDL)
    a, b = manifest(tmp_path, alpha="1"), manifest(tmp_path, alpha="2")
    spec = {m.digest: canonical_json(fleet_to_dict(m.spec)) for m in (a, b)}
    # The previous release deleted generation 1 when its spec was applied again as 3: a gap.
    old.executemany("INSERT INTO generations VALUES(?,?,?,?)", [(2, b.digest, spec[b.digest], 100.0),
                                                                 (3, a.digest, spec[a.digest], 200.0)])
    old.executemany("INSERT INTO applied_revisions(generation, revision, manifest_digest, applied_by, plan_summary, "
                    "started_at, result) VALUES(?,?,?,?,?,?,?)",
                    [(n, f"main@sha1:{n}", None, "alice@host pid 1", "{}", float(n), "Succeeded") for n in (1, 2, 3)])
    old.executemany("INSERT INTO meta VALUES(?,?)", [("store_id", "the-old-store"), ("epoch", "7"),
                                                     ("observed_generation", "3"), ("schema_version", "1")])
    old.execute("INSERT INTO inventory VALUES('alpha', 1, 3, 'active', 1, NULL)")
    old.commit()
    old.close()

    # Read-only first (`status`, `history` right after an upgrade): nothing is changed, everything reads.
    ro = Store(path, readonly=True)
    try:
        assert ro.generation(2).origin is None and ro.generation(3).digest == a.digest
        assert [r["origin"] for r in ro.revisions()] == [None, None, None]
        assert rollback_target(ro, None).target.generation == 2
    finally:
        ro.close()

    store = Store(path)
    try:
        assert store.meta("schema_version") == str(SCHEMA_VERSION) == "3"
        assert (store.meta("store_id"), store.epoch, store.observed_generation) == ("the-old-store", 7, 3)
        assert store.generation_numbers() == [2, 3]
        assert store.generation(2).spec_json == spec[b.digest] and store.generation(2).created_at == 100.0
        assert [r["revision"] for r in store.revisions()] == ["main@sha1:3", "main@sha1:2", "main@sha1:1"]
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # The columns a controller of the previous release reads are the ones it knows.
        assert [r[1] for r in store.conn.execute("PRAGMA table_info(generations)")] == [
            "generation", "digest", "spec_json", "created_at"]
        # Append-only from now on: b's spec again is a new generation, and generation 2 stays.
        assert record(store, b, "rollback of 2", rollback_of=2) == (4, True)
        assert store.generation_numbers() == [2, 3, 4] and store.generation(4).origin == "rollback of 2"
    finally:
        store.close()
    again = Store(path)  # migrating is done once; opening again changes nothing
    try:
        assert again.generation_numbers() == [2, 3, 4] and again.meta("store_id") == "the-old-store"
    finally:
        again.close()


def test_two_stores_opening_one_old_file_migrate_it_once(tmp_path):
    path = tmp_path / "fleet.db"
    old = sqlite3.connect(path)
    old.executescript(PREVIOUS_RELEASE_DDL)
    old.execute("INSERT INTO generations VALUES(1, 'sha256:x', '{}', 1.0)")
    old.commit()
    old.close()
    first, second = Store(path), Store(path)
    try:
        assert first.generation_numbers() == second.generation_numbers() == [1]
        assert second.record_generation("sha256:y", "{}", {}, {}, prune=False, origin="apply") == (2, True)
        assert first.record_generation("sha256:x", "{}", {}, {}, prune=False, origin="apply") == (3, True)
    finally:
        first.close()
        second.close()


# -- what `rollback` goes back to -------------------------------------------------------------------

def test_rollback_goes_back_to_the_generation_before_the_current_one_by_default(store, tmp_path):
    a, b, c = (manifest(tmp_path, alpha=v) for v in "123")
    for m in (a, b, c):
        record(store, m)
    target = rollback_target(store, None)
    assert (target.target.generation, target.current.generation) == (2, 3)
    assert target.manifest.digest == b.digest and target.manifest.spec == b.spec and not target.unchanged
    assert target.origin == "rollback of 2"
    assert rollback_target(store, 1).manifest.digest == a.digest
    assert rollback_target(store, 3).unchanged


def test_rollback_names_what_it_cannot_go_back_to(store, tmp_path):
    with pytest.raises(RollbackError, match="no generation has been recorded yet"):
        rollback_target(store, None)
    record(store, manifest(tmp_path, alpha="0"))
    with pytest.raises(RollbackError, match="generation 1 is the only generation; nothing to roll back to"):
        rollback_target(store, None)
    for i in range(1, GENERATIONS_KEPT + 2):
        record(store, manifest(tmp_path, alpha=str(i)))
    newest = GENERATIONS_KEPT + 2
    with pytest.raises(RollbackError, match=f"no generation {newest + 1}: generations run from 1 to {newest}"):
        rollback_target(store, newest + 1)
    with pytest.raises(RollbackError, match="no generation 0: "):
        rollback_target(store, 0)
    with pytest.raises(RollbackError, match=f"generation 2 is no longer kept: the store keeps the newest "
                                            f"{GENERATIONS_KEPT} generations \\(the oldest kept is 3\\)"):
        rollback_target(store, 2)
    assert rollback_target(store, 3).target.generation == 3  # the oldest kept is a rollback target


def test_a_stored_spec_comes_back_as_the_same_manifest(tmp_path, store):
    m = manifest(tmp_path, alpha="1", beta="2")
    record(store, m)
    back = stored_manifest(store.generation(1))
    assert back.spec == m.spec and back.digest == m.digest


def test_each_new_store_gets_its_own_version_4_uuid(tmp_path):
    import uuid

    ids = []
    for n in range(20):
        store = Store(str(tmp_path / f"fleet-{n}.db"))
        try:
            ids.append(store.meta("store_id"))
        finally:
            store.close()
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert len(set(ids)) == len(ids)
