"""A mistyped duration option is refused before the command changes anything: one `error:` line naming the option,
exit 2, and the fleet as it was (every command with a duration option). `down --timeout 5x` held the fleet down and had the controller drain every
gateway, then failed on the duration with a traceback; `restart --timeout 5x` queued the restart first."""

from __future__ import annotations

import os
import sqlite3
import sys

import pytest

from fleet_harness import alive, fleet  # noqa: F401

pytestmark = [
    pytest.mark.skipif(os.name != "posix" or not sys.platform.startswith("linux"), reason="Linux process model"),
    pytest.mark.timeout(90),
]

# (command line, the duration option it takes, whether it takes a manifest)
COMMANDS = [
    (("down",), "--timeout", True),
    (("restart", "alpha"), "--timeout", True),
    (("apply",), "--timeout", True),
    (("rollback", "1"), "--timeout", True),
    (("takeover", "alpha"), "--timeout", True),
    (("sync",), "--timeout", False),
    (("source", "set", "git", "file:///nowhere"), "--interval", False),
    (("source", "set", "git", "file:///nowhere"), "--timeout", False),
    (("maintenance", "restart", "alpha", "--reason", "test"), "--idle-seconds", True),
]


def _store_rows(fleet) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{fleet.state / 'fleet.db'}?mode=ro", uri=True)
    try:
        return {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("journal", "requests", "generations", "profile_state")} | {
            "held": conn.execute("SELECT COUNT(*) FROM profile_state WHERE override_desired IS NOT NULL").fetchone()[0]}
    finally:
        conn.close()


@pytest.mark.parametrize(("command", "option", "with_file"), COMMANDS,
                         ids=[f"{' '.join(line[:2])} {option}" for line, option, _ in COMMANDS])
def test_a_mistyped_duration_changes_nothing(fleet, command, option, with_file):
    fleet.write_manifest({"alpha": None})
    fleet.apply()
    pid = fleet.wait_running("alpha")
    before = _store_rows(fleet)
    result = fleet.cli(*command, option, "5x", with_file=with_file)
    assert result.returncode == 2, fleet.explain(result)
    assert "Traceback" not in result.stderr
    assert f"error: {option}:" in result.stderr and "5x" in result.stderr
    assert _store_rows(fleet) == before
    assert alive(pid) and fleet.wait_running("alpha") == pid
