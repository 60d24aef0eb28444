"""The controller's source step (`SourceFollower.step(now)`) against real git repositories in tmp_path, driven
with a fake clock and no controller: a fetch is a real `git` child, everything else is decided by `now`.

What it holds to: a new commit becomes one generation whose revision is `<ref>@sha1:<commit>` and whose writer
is `source default`; a commit that does not validate or would be refused changes nothing, says why with
file:line:col, and is not looked at again until a new commit, a config change or a `sync`; a failing fetch
backs off 2x up to min(8 x interval, 10 min); a rewound ref is applied and journaled; a hanging fetch is
killed with its whole process group at the timeout; signatures are checked when asked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import psutil
import pytest
from fakes import FakePlatform, state, store  # noqa: F401
from gitsource import manifest, origin  # noqa: F401

from fleet.controller.record import record_manifest
from fleet.controller.rollback import rollback_target
from fleet.controller.source_follow import (
    FAST_POLL, SourceFollower, backoff,
)
from fleet.controller.writers import followed_source_refusal, hold_rolled_back_commit
from fleet.platform import current_platform
from fleet.store.sources import (
    APPLIED, HELD, INVALID, MISSING, REFUSED, UNVERIFIED, SourceConfig, get_source, request_sync, resume_source,
    set_source, suspend_source,
)

T0 = 1_000_000.0
INTERVAL = 60.0


def configure(store, origin, **kw) -> None:
    fields = {"name": "default", "kind": "git", "url": str(origin.bare), "ref": "main", "path": "fleet.yaml",
              "interval_s": INTERVAL, "timeout_s": 30.0, **kw}
    set_source(store, SourceConfig(**fields), by="test", at=T0)


def follower(state, store, origin, platform=None) -> SourceFollower:
    return SourceFollower(state, store, platform or FakePlatform(), epoch=1, environ=origin.env, jitter=lambda: 0.0)


def settle(f: SourceFollower, now: float) -> float | None:
    """One step at `now`, then (the clock standing still) until a fetch it started has been handled."""
    nxt = f.step(now)
    while f.fetch is not None:
        f.fetch.proc.wait(timeout=30)
        nxt = f.step(now)
    return nxt


def journal(store, kind: str) -> list:
    return [e for e in store.events(limit=1000) if e.kind == kind]


def generations(store) -> int:
    gen = store.current_generation()
    return gen.generation if gen else 0


def test_a_commit_becomes_one_generation_named_by_its_ref_and_commit(state, store, origin):
    commit = origin.fleet(rev="1")
    configure(store, origin)
    f = follower(state, store, origin)
    assert f.step(T0) == T0 + FAST_POLL  # a fetch runs: the controller looks again soon
    nxt = settle(f, T0)
    assert nxt == T0 + INTERVAL
    row = store.revisions(1)[0]
    assert (row["generation"], row["revision"], row["applied_by"]) == (1, f"main@sha1:{commit}", "source default")
    src = get_source(store)
    assert (src.fetched_commit, src.applied_commit, src.applied_generation, src.attempted_result) == \
        (commit, commit, 1, APPLIED)
    assert src.fetch_pid is None and src.failures == 0

    # Until the interval has passed nothing is fetched; after it, the unchanged ref records nothing.
    assert f.step(T0 + 10) == T0 + INTERVAL and f.fetch is None
    assert settle(f, T0 + INTERVAL) == T0 + 2 * INTERVAL
    assert generations(store) == 1 and len(store.revisions(10)) == 1

    second = origin.fleet(rev="2")
    settle(f, T0 + 2 * INTERVAL)
    assert generations(store) == 2
    assert store.revisions(1)[0]["revision"] == f"main@sha1:{second}"
    assert [e.data["commit"] for e in journal(store, "source_fetched")] == [commit, second]


def test_a_broken_commit_changes_nothing_says_where_and_is_not_retried_until_asked(state, store, origin):
    good = origin.fleet(rev="1")
    configure(store, origin)
    f = follower(state, store, origin)
    settle(f, T0)
    broken = origin.commit(manifest(origin.home) + "  beta:\n    restart: {policy: sometimes}\n")
    settle(f, T0 + INTERVAL)
    src = get_source(store)
    assert generations(store) == 1 and src.applied_commit == good
    assert (src.attempted_commit, src.attempted_result) == (broken, INVALID)
    assert src.attempted_error.startswith("fleet.yaml:11:23: profiles.beta.restart.policy: "), src.attempted_error
    (rejected,) = journal(store, "source_rejected")
    assert broken[:12] in rejected.message and "generation 1 keeps running" in rejected.message

    settle(f, T0 + 2 * INTERVAL)  # the same commit again: not looked at again
    assert len(journal(store, "source_rejected")) == 1
    request_sync(store, "default", "token-1", T0)
    assert f.step(T0 + 2 * INTERVAL + 1) == T0 + 2 * INTERVAL + 1 + FAST_POLL  # a sync fetches at once ...
    settle(f, T0 + 2 * INTERVAL + 1)
    assert len(journal(store, "source_rejected")) == 2  # ... and tries the failed commit again
    assert get_source(store).handled_token == "token-1"

    fixed = origin.fleet(rev="3")
    settle(f, T0 + 4 * INTERVAL)
    src = get_source(store)
    assert generations(store) == 2 and src.applied_commit == fixed and not src.failing


@pytest.mark.parametrize("change, result, words", [
    ("empty", REFUSED, "no profiles"), ("moved", MISSING, "does not exist"), ("binary", INVALID, "not UTF-8"),
])
def test_a_commit_apply_would_refuse_is_not_applied(state, store, origin, change, result, words):
    origin.fleet()
    configure(store, origin)
    f = follower(state, store, origin)
    settle(f, T0)
    if change == "empty":
        origin.commit(manifest(origin.home, names=()))
    elif change == "moved":
        origin.git("mv", "fleet.yaml", "other.yaml")
        origin.commit("moved\n", path="other.yaml")
    else:
        origin.commit(b"version: 1\nname: caf\xe9\n")
    settle(f, T0 + INTERVAL)
    src = get_source(store)
    assert generations(store) == 1
    assert src.attempted_result == result and words in src.attempted_error, src.attempted_error


def test_an_empty_fleet_is_applied_when_the_source_allows_it(state, store, origin):
    origin.fleet()
    configure(store, origin)
    f = follower(state, store, origin)
    settle(f, T0)
    origin.commit(manifest(origin.home, names=()))
    configure(store, origin, allow_empty=True)  # a changed configuration is due at once
    settle(f, T0 + 1)
    assert generations(store) == 2 and get_source(store).attempted_result == APPLIED


def test_a_rewound_ref_is_applied_and_journaled(state, store, origin):
    first = origin.fleet(rev="1")
    configure(store, origin)
    f = follower(state, store, origin)
    settle(f, T0)
    origin.fleet(rev="2")
    settle(f, T0 + INTERVAL)
    assert generations(store) == 2
    origin.rewind(first)
    settle(f, T0 + 2 * INTERVAL)
    src = get_source(store)
    assert src.applied_commit == first and generations(store) == 3
    (rewound,) = journal(store, "source_rewound")
    assert rewound.data["to"] == first and "rewound" in rewound.message


def test_a_failing_fetch_backs_off_and_a_config_change_retries_at_once(state, store, origin):
    origin.fleet()
    configure(store, origin, url=str(origin.tmp / "nowhere.git"))
    f = follower(state, store, origin)
    now, waits = T0, []
    for _ in range(5):
        nxt = settle(f, now)
        waits.append(nxt - now)
        now = nxt
    assert waits == [2 * INTERVAL, 4 * INTERVAL, 8 * INTERVAL, 8 * INTERVAL, 8 * INTERVAL]
    assert backoff(3600, 1) == 600  # never longer than 10 minutes
    src = get_source(store)
    assert src.failures == 5 and "nowhere.git" in src.last_error and src.failing
    assert len(journal(store, "source_fetch_failed")) == 3  # the first three, then every 20th
    assert generations(store) == 0

    configure(store, origin)  # fixed: fetched at once, the failures forgotten
    settle(f, now - 1)
    src = get_source(store)
    assert src.failures == 0 and src.applied_generation == 1 and not src.failing


def test_suspend_stops_fetching_and_resume_applies_the_current_commit(state, store, origin):
    origin.fleet(rev="1")
    configure(store, origin)
    f = follower(state, store, origin)
    settle(f, T0)
    suspend_source(store, "default", reason="incident", by="test", at=T0)
    latest = origin.fleet(rev="2")
    assert settle(f, T0 + 5 * INTERVAL) is None
    assert generations(store) == 1
    resume_source(store, "default")
    settle(f, T0 + 5 * INTERVAL)
    assert get_source(store).applied_commit == latest and generations(store) == 2


def _group_alive(pgid: int) -> bool:
    """A live (not zombie) process is in the group: killed members that were reparented stay zombies until
    their new parent reaps them, which in a container may be never."""
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def _group_ends(pgid: int, within: float = 10.0) -> bool:
    """The group's members were killed: each is gone once the kernel has ended it, which a loaded host may not have
    done by the time the killer returns."""
    deadline = time.monotonic() + within
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")
def test_a_hanging_fetch_is_killed_with_its_group_at_the_timeout(state, store, origin):
    origin.env["GIT_SSH_COMMAND"] = "sh -c 'sleep 30' --"
    configure(store, origin, url="ssh://127.0.0.1/x.git", timeout_s=1.0)
    f = follower(state, store, origin)
    f.step(T0)
    proc = f.fetch.proc
    assert psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE
    deadline = time.monotonic() + 10  # the ssh stand-in has started under git
    while time.monotonic() < deadline and not psutil.Process(proc.pid).children(recursive=True):
        time.sleep(0.02)
    assert f.step(T0 + 0.5) == T0 + 0.5 + FAST_POLL
    assert f.step(T0 + 3.0) == T0 + 3.0 + 2 * 60.0  # past the timeout: killed, and backing off
    assert f.fetch is None and proc.returncode is not None
    assert _group_ends(proc.pid)
    src = get_source(store)
    assert "timed out after 1s" in src.last_error and src.fetch_pid is None


@pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")
def test_a_fetch_left_by_a_killed_controller_is_ended_by_the_next(state, store, origin):
    origin.env["GIT_SSH_COMMAND"] = "sh -c 'sleep 30' --"
    configure(store, origin, url="ssh://127.0.0.1/x.git", timeout_s=60.0)
    real = current_platform()
    crashed = follower(state, store, origin, platform=real)
    crashed.step(T0)
    orphan = crashed.fetch.proc
    started = [orphan]
    try:
        assert get_source(store).fetch_pid == orphan.pid
        successor = follower(state, store, origin, platform=real)  # `crashed` never ends its fetch
        successor.step(T0 + 1)
        if successor.fetch is not None:
            started.append(successor.fetch.proc)  # it fetches at once, in a fresh group ...
        orphan.wait(timeout=10)
        assert _group_ends(orphan.pid)
        assert len(started) == 2
        successor.close()  # ... which ends with it, as with the controller
        assert started[-1].returncode is not None and _group_ends(started[-1].pid)
        assert get_source(store).fetch_pid is None
    finally:
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)


@pytest.fixture
def ssh_keys(tmp_path):
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed: ssh signatures cannot be made here")
    keys = {}
    for name in ("trusted", "stranger"):
        key = tmp_path / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True,
                       timeout=30)
        keys[name] = key
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"author@example.com {(tmp_path / 'trusted.pub').read_text()}")
    return keys, signers


def test_with_verify_ssh_only_commits_signed_by_an_allowed_key_apply(state, store, origin, ssh_keys):
    keys, signers = ssh_keys
    signed = origin.fleet(rev="1", sign_with=keys["trusted"])
    configure(store, origin, verify_mode="ssh", allowed_signers=str(signers))
    f = follower(state, store, origin)
    settle(f, T0)
    assert get_source(store).applied_commit == signed

    for rev, key in (("2", None), ("3", keys["stranger"])):
        commit = origin.fleet(rev=rev, sign_with=key)
        settle(f, T0 + int(rev) * INTERVAL)
        src = get_source(store)
        assert (src.attempted_commit, src.attempted_result) == (commit, UNVERIFIED)
        assert "not signed by a key the source trusts" in src.attempted_error
        assert generations(store) == 1


def _roll_back(store) -> str | None:
    """What `hermes-fleet rollback` records (its CLI is tested in test_cli_rollback.py): the generation before
    the current one as a new generation, and the source's commit held, in one transaction."""
    target = rollback_target(store, None)
    with store.tx():
        record_manifest(store, target.manifest, target.revision, prune=True, source="rollback",
                        origin=target.origin, rollback_of=target.target.generation, lift_down=True)
        return hold_rolled_back_commit(store)


@pytest.mark.parametrize("accept_current", [False, True])
def test_resume_after_a_rollback_never_silently_applies_the_commit_rolled_back_from(state, store, origin,
                                                                                    accept_current):
    origin.fleet(rev="1")
    configure(store, origin)
    f = follower(state, store, origin)
    settle(f, T0)
    rolled_from = origin.fleet(rev="2")
    settle(f, T0 + INTERVAL)
    assert generations(store) == 2
    assert "suspend it first" in (followed_source_refusal(store) or "").lower()
    suspend_source(store, "default", reason="bad deploy", by="test", at=T0 + INTERVAL)
    assert followed_source_refusal(store) is None
    assert _roll_back(store) == rolled_from and generations(store) == 3

    resume_source(store, "default", accept_current=accept_current)
    settle(f, T0 + 2 * INTERVAL)
    src = get_source(store)
    if accept_current:
        assert generations(store) == 4 and src.applied_commit == rolled_from and src.held_commit is None
        return
    assert generations(store) == 3, "resume applied again the commit the rollback rolled back from"
    assert (src.held_commit, src.attempted_result) == (rolled_from, HELD) and journal(store, "source_held")
    settle(f, T0 + 3 * INTERVAL)
    assert len(journal(store, "source_held")) == 1, "a held commit is said once, not at every interval"
    newer = origin.fleet(rev="3")
    settle(f, T0 + 4 * INTERVAL)
    src = get_source(store)
    assert generations(store) == 4 and src.applied_commit == newer and src.held_commit is None


def test_a_controller_killed_while_it_records_a_commit_loses_and_duplicates_nothing(state, store, origin,
                                                                                    monkeypatch):
    """The record of a commit is one transaction: a controller that dies inside it leaves no generation and no
    applied commit, and the next controller applies that commit once."""
    import fleet.controller.source_follow as source_follow

    commit = origin.fleet(rev="1")
    configure(store, origin)

    def killed(*args, **kwargs):
        raise SystemExit("killed while recording")

    monkeypatch.setattr(source_follow, "record_manifest", killed)
    with pytest.raises(SystemExit):
        settle(follower(state, store, origin), T0)
    assert generations(store) == 0 and get_source(store).applied_commit is None
    monkeypatch.undo()

    restarted = follower(state, store, origin)
    settle(restarted, T0 + 1)
    assert generations(store) == 1 and get_source(store).applied_commit == commit
    settle(restarted, T0 + 1 + INTERVAL)
    assert generations(store) == 1
