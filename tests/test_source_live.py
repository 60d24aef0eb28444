"""A real controller following a real git branch (tests/fleet_harness.py): a commit and `sync` converge within
2 s, a broken commit changes nothing and says where, the fix converges, a rewind converges back with an event,
a local `apply` is refused until `--force` suspends the source; and a controller killed with -9 during a fetch
leaves no git behind, no duplicate and no lost generation."""

from __future__ import annotations

import os
import time

import psutil
import pytest
from fleet_harness import fleet  # noqa: F401
from gitsource import manifest, origin  # noqa: F401
from helpers import wait_until
from typer.testing import CliRunner

from fleet.cli.main import app
from fleet.store.db import Store
from fleet.store.sources import get_source

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the harness drives POSIX processes")


def _read(fleet, what):
    """From the store directly: polling through the CLI would cost half a second a look."""
    store = Store(fleet.state / "fleet.db", readonly=True)
    try:
        return what(store)
    finally:
        store.close()


def row(fleet):
    return _read(fleet, get_source)


def applied(fleet) -> str | None:
    return row(fleet).applied_commit


def revisions(fleet) -> list[dict]:
    return _read(fleet, lambda store: store.revisions(50))


def inproc(fleet, *args: str):
    """A command in this process (python's start-up costs more than the command): for those that start no
    process, the controller being up."""
    return CliRunner().invoke(app, [*args, "--state-dir", str(fleet.state)], catch_exceptions=False,
                              env={"HERMES_FLEET_STATE_DIR": None})


def sync_wait(fleet) -> int:
    return inproc(fleet, "sync", "--wait", "--timeout", "10s").exit_code


def test_the_controller_follows_the_branch(fleet, origin):
    first = origin.fleet(rev="1")
    result = fleet.cli("source", "set", "git", str(origin.bare), "--interval", "1h", with_file=False)
    assert result.returncode == 0, fleet.explain(result)
    pid = fleet.wait_pid("alpha", timeout=10)
    assert applied(fleet) == first

    second = origin.fleet(rev="2")
    started = time.monotonic()
    assert fleet.cli("sync", with_file=False).returncode == 0
    wait_until(lambda: applied(fleet) == second, 2.0, what="the synced commit applied")
    pid = fleet.wait_pid("alpha", other_than=pid, timeout=max(0.1, 2.0 - (time.monotonic() - started)))
    latest = revisions(fleet)[0]
    assert (latest["revision"], latest["applied_by"]) == (f"main@sha1:{second}", "source default")

    broken = origin.commit(manifest(origin.home, rev="3") + "  beta:\n    restart: {policy: sometimes}\n")
    assert sync_wait(fleet) == 1
    result = inproc(fleet, "source", "show")
    assert result.exit_code == 1 and "fleet.yaml:11:23: profiles.beta.restart.policy" in result.output, result.output
    src = row(fleet)
    assert (src.attempted_commit, src.applied_commit, fleet.pid("alpha")) == (broken, second, pid)

    fixed = origin.fleet(rev="4")
    assert sync_wait(fleet) == 0
    pid = fleet.wait_pid("alpha", other_than=pid, timeout=5)
    origin.rewind(first)
    assert sync_wait(fleet) == 0
    fleet.wait_pid("alpha", other_than=pid, timeout=5)
    kinds = [e.kind for e in fleet.journal()]
    assert "source_rewound" in kinds and "source_rejected" in kinds
    assert [r["revision"].split(":")[1] for r in revisions(fleet)[:3]] == [first, fixed, second]
    status = fleet.status()
    assert status["source"]["sync"] == "Synced" and status["source"]["applied"]["commit"] == first

    # On its own interval, nobody asking: converged within the interval + 2 s, and status shows the commit.
    assert inproc(fleet, "source", "set", "git", str(origin.bare), "--interval", "1s", "--no-start").exit_code == 0
    wait_until(lambda: row(fleet).attempted_commit == first and row(fleet).fetch_pid is None, 5,
               what="the changed source fetched")
    timed = origin.fleet(rev="5")
    wait_until(lambda: applied(fleet) == timed, 1.0 + 2.0, what="the next commit applied on the interval")
    assert fleet.status()["source"]["applied"]["commit"] == timed

    fleet.manifest.write_text(manifest(origin.home, rev="local"))
    refused = inproc(fleet, "apply", "-f", str(fleet.manifest), "--no-wait")
    assert refused.exit_code == 3 and "follows source default" in refused.output and "apply --force" in refused.output
    forced = inproc(fleet, "apply", "-f", str(fleet.manifest), "--force", "--no-wait")
    assert forced.exit_code == 0 and "source default suspended" in forced.output, forced.output
    assert row(fleet).suspended and row(fleet).suspend_reason.startswith("apply --force")
    assert revisions(fleet)[0]["applied_by"] != "source default"


def test_a_controller_killed_during_a_fetch_loses_and_duplicates_nothing(fleet, origin, monkeypatch):
    slow = origin.tmp / "slow-fetch"
    # git runs this as its ssh: it serves the repository locally, after 10 s while the marker file exists.
    monkeypatch.setenv("GIT_SSH_VARIANT", "simple")
    monkeypatch.setenv("GIT_SSH_COMMAND", f"sh -c 'test -e {slow} && sleep 10; eval \"$2\"' ssh")
    first = origin.fleet(rev="1")
    result = fleet.cli("source", "set", "git", f"ssh://127.0.0.1{origin.bare}", "--interval", "1h",
                       with_file=False)
    assert result.returncode == 0, fleet.explain(result)
    wait_until(lambda: applied(fleet) == first, 10, what="the first commit applied")
    gateway = fleet.wait_pid("alpha", timeout=10)

    second = origin.fleet(rev="2")
    touched = time.time()
    slow.touch()
    assert fleet.cli("sync", with_file=False).returncode == 0

    def slow_fetch():
        """The fetch `sync` started, which the marker holds up; not one `source set` left wanted that started
        before the marker (it ends at once, maybe before a look at it)."""
        pid = row(fleet).fetch_pid
        if pid is None:
            return None
        try:
            proc = psutil.Process(pid)
            return proc if proc.create_time() > touched else None
        except psutil.NoSuchProcess:
            return None

    fetch = wait_until(slow_fetch, 10, what="the synced fetch in flight")
    controller = fleet.controller_pid()
    fleet.kill9(controller)
    assert fetch.is_running() and fetch.status() != psutil.STATUS_ZOMBIE  # the killed controller left it behind
    slow.unlink()

    fleet.start_controller()
    wait_until(lambda: applied(fleet) == second, 10, what="the second commit applied by the next controller")
    wait_until(lambda: not fetch.is_running() or fetch.status() == psutil.STATUS_ZOMBIE, 5,
               what="the orphaned fetch ended")
    fleet.wait_pid("alpha", other_than=gateway, timeout=10)
    history = revisions(fleet)
    assert [(r["generation"], r["revision"]) for r in history if r["result"] != "NoChange"] == \
        [(2, f"main@sha1:{second}"), (1, f"main@sha1:{first}")]
    assert len(fleet.marked_pids("alpha")) == 1

