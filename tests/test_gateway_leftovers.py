"""Processes a gateway started that outlive it. Hermes 0.19 answers every stop with a detached
`timeout 5 bash -c 'ps auxf ...'` shutdown diagnostic in its own session: it inherits the gateway's
environment (the fleet's HERMES_FLEET_* markers included) and lives up to 5 s after the gateway.
Such a process is never the profile's gateway; like systemd's KillMode=control-group, it is ended before
the profile's next gateway starts, and `down` is not done while one lives."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from fleet_harness import alive, environ_of, fleet  # noqa: F401
from helpers import reaper, wait_until  # noqa: F401

pytestmark = [
    pytest.mark.skipif(os.name != "posix" or not sys.platform.startswith("linux"), reason="Linux process model"),
    pytest.mark.timeout(90),
]


def shutdown_diagnostic(reaper, gateway_env: dict[str, str], seconds: float) -> subprocess.Popen:
    """Stand-in for Hermes' diagnostic: the gateway's environment, its own session, not a gateway command line."""
    return reaper.spawn([sys.executable, "-c", f"import time; time.sleep({seconds})"], env=gateway_env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_gateways_leftover_subprocess_is_never_adopted_and_ended_before_the_next_start(fleet, reaper):
    fleet.write_manifest({"alpha": None})
    fleet.apply()
    pid = fleet.wait_running("alpha")
    env = environ_of(pid)
    assert env.get("HERMES_FLEET_PROFILE") == "alpha"
    assert fleet.cli("stop", "alpha").returncode == 0
    fleet.wait_gone(pid)
    assert fleet.cli("controller", "stop").returncode == 0
    leftover = shutdown_diagnostic(reaper, env, 60)
    assert fleet.cli("start", "alpha").returncode == 1  # recorded; no controller runs yet
    # A new controller scans the process table before it spawns: the leftover must not pass for alpha,
    # and it is ended before alpha's next gateway starts, although no record names its gateway any more.
    fleet.apply()
    new = fleet.wait_running("alpha", other_than=leftover.pid)
    assert new != leftover.pid
    assert not [e for e in fleet.journal("alpha") if e.kind == "adopted"], fleet.journal("alpha")
    assert leftover.poll() is not None, "the leftover outlived its gateway's successor's start"
    ended = [e for e in fleet.journal("alpha") if e.kind == "leftovers_ended"]
    spawned = [e for e in fleet.journal("alpha") if e.kind == "spawned"]
    assert ended and spawned and ended[-1].at <= spawned[-1].at, fleet.journal("alpha")
    assert fleet.profiles()["alpha"]["pid"] == new


def test_down_waits_for_what_the_gateways_left_behind(fleet, reaper):
    fleet.write_manifest({"alpha": None, "beta": None})
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in ("alpha", "beta")}
    leftover = shutdown_diagnostic(reaper, environ_of(pids["alpha"]), 6)
    started = time.monotonic()
    result = fleet.cli("down", "--timeout", "20s")
    assert result.returncode == 0, fleet.explain(result)
    assert leftover.poll() is not None, f"down returned after {time.monotonic() - started:.1f}s with pid " \
                                        f"{leftover.pid} of the fleet still running"
    assert fleet.leftovers() == [] and fleet._strays() == []


def test_down_ends_a_leftover_that_would_outlive_its_timeout(fleet, reaper):
    fleet.write_manifest({"alpha": None})
    fleet.apply()
    pid = fleet.wait_running("alpha")
    leftover = reaper.spawn([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                             "signal.SIG_IGN); time.sleep(60)"], env=environ_of(pid),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: environ_of(leftover.pid).get("HERMES_FLEET_PROFILE") == "alpha", 10, what="the leftover")
    result = fleet.cli("down", "--timeout", "10s")
    assert result.returncode == 0 and "nothing of the fleet runs" in result.stdout, fleet.explain(result)
    assert leftover.poll() == -9  # it ignored SIGTERM: SIGKILL after the grace
    assert not alive(pid)


def test_a_marked_process_is_a_gateway_only_on_a_gateway_command_line(reaper, tmp_path):
    """For the scan of unrecorded processes: the markers point at a hermes profile's gateway only on a gateway
    command line (Hermes' rules); a process driver's command is its own, so its markers still do."""
    from factories import profile_spec
    from fleet.observe import identity
    from fleet.platform.linux import LinuxPlatform

    env = {**os.environ, **identity.markers("alpha", "/nonexistent/fleet-state")}
    diag = reaper.spawn([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    hermes = tmp_path / "hermes"
    hermes.write_text("import time\ntime.sleep(60)\n")
    gateway = reaper.spawn([sys.executable, str(hermes), "-p", "alpha", "gateway", "run", "--external-supervisor"],
                           env=env)
    platform = LinuxPlatform()

    def info(pid):
        return wait_until(lambda: (lambda i: i if i and i.cmdline else None)(platform.process_info(pid)), 10)

    assert identity.is_gateway_subprocess(profile_spec("alpha"), info(diag.pid))
    assert not identity.is_gateway_subprocess(profile_spec("alpha"), info(gateway.pid))
    assert identity.is_gateway_subprocess(profile_spec("beta"), info(gateway.pid))  # alpha's gateway, not beta's
    assert not identity.is_gateway_subprocess(profile_spec("alpha", driver="process", command=(sys.executable,)),
                                              info(diag.pid))


@pytest.mark.parametrize("change", ["manifest", "stop"])
def test_a_desired_state_changed_while_leftovers_are_ended_is_the_one_the_spawn_follows(fleet, tmp_path, change):
    """A gateway died while no controller ran and left a child that takes SIGKILL to end: the next
    controller's spawn holds its pass for a second or more while it ends that child. A manifest recorded, or
    a `stop` given, meanwhile is what the spawn follows: never a gateway from an older spec replaced at
    once, never one started against the stop and then drained."""
    from fleet.controller.record import record_manifest
    from fleet.spec.load import load_manifest
    from fleet.store.db import Store
    from fleet.store.layout import StateDir

    noted = tmp_path / "leftover-got-sigterm"
    fleet.write_manifest({"alpha": {"env": {"REV": "1"}}}, backoff=["0s"])
    fleet.control("alpha", leave_child="session", leave_child_argv0="test-leftover", leave_child_notes=str(noted))
    fleet.apply()
    first = fleet.wait_running("alpha")
    wait_until(lambda: len(fleet.marked_pids("alpha")) == 2, 10, what="the gateway's child")
    fleet.clear_control("alpha")
    fleet.kill9(fleet.controller_pid())
    fleet.kill9(first)
    fleet.start_controller()
    wait_until(noted.exists, 20, what="the leftover to be sent SIGTERM")
    store = Store(str(StateDir(fleet.state).db))
    try:
        if change == "manifest":
            manifest = fleet.write_manifest({"alpha": {"env": {"REV": "2"}}}, backoff=["0s"])
            record_manifest(store, load_manifest(str(manifest)), {"revision": "test"}, prune=True, source="test",
                            lift_down=False)
        else:  # what `hermes-fleet stop alpha` records
            with store.tx():
                store.update_history("alpha", override_desired="stopped", override_by="stop:test",
                                     override_at=time.time())
    finally:
        store.close()
    if change == "manifest":
        second = fleet.wait_running("alpha", other_than=first)
        assert environ_of(second).get("REV") == "2", fleet.journal("alpha")
    else:
        wait_until(lambda: fleet.journal_kinds("alpha", "leftovers_ended"), 20, what="the leftover to be ended")
        wait_until(lambda: fleet.profiles()["alpha"]["phase"] == "Stopped", 20, what="alpha shown stopped")
        assert len(fleet.journal_kinds("alpha", "spawned")) == 1, fleet.journal("alpha")  # the first apply's
        assert fleet.marked_pids("alpha") == []
    assert not fleet.journal_kinds("alpha", "drain_started"), fleet.journal("alpha")
