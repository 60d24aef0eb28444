"""`down` across a restart of the controller: what every service unit runs at each start
(`hermes-fleet controller run -f FILE`, in the foreground) must not bring a downed fleet back,
and `status` must say the fleet is down (never `Synced`) until `apply` or `start` brings it back."""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fleet_harness import alive, create_time, fleet  # noqa: F401
from helpers import wait_until

pytestmark = [
    pytest.mark.skipif(os.name != "posix" or not sys.platform.startswith("linux"), reason="Linux process model"),
    pytest.mark.timeout(90),
]

THREE = {"alpha": None, "beta": None, "gamma": None}


def service_controller(fleet) -> subprocess.Popen:
    """`hermes-fleet controller run -f FILE` in the foreground, as a service unit runs it (it execs the
    controller, so this PID is the controller's). Ended by the test, by PID; the fixture kills it otherwise."""
    with open(fleet.tmp / f"service-{time.monotonic_ns()}.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.cli.main", "controller", "run", "-f", str(fleet.manifest),
             "--state-dir", str(fleet.state)],
            cwd=str(fleet.tmp), env=fleet.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    fleet.controllers[proc.pid] = create_time(proc.pid) or time.time()
    fleet._popens.append(proc)
    return proc


def end(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def status_json(fleet) -> tuple[int, dict]:
    result = fleet.cli("status", "-o", "json")
    assert result.returncode in (0, 1), fleet.explain(result)
    return result.returncode, json.loads(result.stdout)


def test_down_holds_across_a_service_restart_and_status_says_so(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in THREE}
    result = fleet.cli("down", "--timeout", "20s")
    assert result.returncode == 0, fleet.explain(result)
    assert "stays down until `apply` or `start`" in result.stdout
    for pid in pids.values():
        fleet.wait_gone(pid)
    # The controller finished the `down` and left by itself (fleet/controller/down.py), once no gateway ran.
    kinds = [e.kind for e in fleet.journal()]
    assert kinds[kinds.index("down"):][-2:] == ["down_done", "controller_stopped"], kinds
    assert kinds.count("drained") == 3 and kinds.index("drained") < kinds.index("down_done")
    user = getpass.getuser()

    # The service manager starts the controller again, with an edited manifest (a new generation).
    fleet.write_manifest({"alpha": {"env": {"EDITED": "1"}}, "beta": None, "gamma": None})
    controller = service_controller(fleet)
    wait_until(lambda: fleet.controller_pid() == controller.pid, 20, what="the service's controller to hold the lock")
    # Its first pass is done once it has observed the new generation: any spawn would have come before.
    wait_until(lambda: status_json(fleet)[1]["controller"]["observed_generation"] == 2, 20,
               what="the controller to observe generation 2")
    code, status = status_json(fleet)
    assert code == 1, status  # not where the manifest wants it
    for row in status["profiles"]:
        assert row["pid"] is None and row["phase"] == "Stopped", row
        assert row["sync"] == "OutOfSync", row
        assert row["note"].startswith("down since ") and f" by {user};" in row["note"], row
        assert row["note"].endswith(f"`apply` or `start {row['name']}` brings it back"), row
        assert row["hold"]["by"] == "down" and row["hold"]["user"] == user, row
    assert not [e for e in fleet.journal() if e.kind == "spawned" and e.epoch == fleet.holder()["epoch"]]
    applied = [e for e in fleet.journal() if e.kind == "applied"][-1]
    assert applied.data["source"] == "controller run" and applied.data["generation"] == 2, applied
    assert sorted(applied.data["held_down"]) == sorted(THREE), applied
    text = fleet.cli("status")
    assert "fleet: down since " in text.stdout and "Synced" not in text.stdout.replace("OutOfSync", ""), text.stdout
    assert "the fleet is down (since " in (fleet.tmp / next(p.name for p in fleet.tmp.glob("service-*.log"))).read_text()

    # `start` brings one profile back; the others stay down.
    result = fleet.cli("start", "alpha")
    assert result.returncode == 0, fleet.explain(result)
    fleet.wait_running("alpha")
    wait_until(lambda: status_json(fleet)[1]["profiles"][0]["phase"] == "Running", 20, what="alpha Running")
    rows = {p["name"]: p for p in status_json(fleet)[1]["profiles"]}
    assert rows["alpha"]["sync"] == "Synced" and rows["alpha"]["hold"] is None
    assert all(rows[n]["pid"] is None and rows[n]["sync"] == "OutOfSync" for n in ("beta", "gamma")), rows

    # A second service restart: still down (the profile started by hand keeps running, adopted).
    alpha = fleet.pid("alpha")
    end(controller)
    controller = service_controller(fleet)
    wait_until(lambda: fleet.controller_pid() == controller.pid, 20, what="the second controller")
    wait_until(lambda: any(e.kind == "adopted" for e in fleet.journal("alpha")), 20, what="alpha adopted")
    rows = {p["name"]: p for p in status_json(fleet)[1]["profiles"]}
    assert rows["alpha"]["pid"] == alpha and alive(alpha)
    assert all(rows[n]["pid"] is None for n in ("beta", "gamma")), rows

    # `apply` lifts the down.
    fleet.apply()
    code, status = status_json(fleet)
    assert code == 0, status
    assert all(p["phase"] == "Running" and p["sync"] == "Synced" and p["hold"] is None for p in status["profiles"])
    end(controller)


def test_down_with_nothing_running_still_holds(fleet):
    """`down` when no controller and no gateway runs (after a reboot, say) records the down too."""
    fleet.write_manifest({"alpha": None})
    fleet.apply()
    pid = fleet.wait_running("alpha")
    assert fleet.cli("down", "--timeout", "20s").returncode == 0
    fleet.wait_gone(pid)
    result = fleet.cli("start", "alpha")  # undone while no controller runs...
    assert result.returncode == 1 and "waits durably" in result.stderr, fleet.explain(result)
    result = fleet.cli("down")  # ...and down again: nothing runs, but the down is recorded
    assert result.returncode == 0 and "stays down" in result.stdout, fleet.explain(result)
    controller = service_controller(fleet)
    wait_until(lambda: fleet.controller_pid() == controller.pid, 20, what="the service's controller")
    wait_until(lambda: status_json(fleet)[1]["profiles"][0]["note"].startswith("down since"), 20,
               what="alpha reported down")
    assert status_json(fleet)[1]["profiles"][0]["pid"] is None
    end(controller)


def test_stop_is_reported_as_held_not_synced(fleet):
    fleet.write_manifest({"alpha": None, "beta": None})
    fleet.apply()
    pid = fleet.wait_running("beta")
    fleet.wait_running("alpha")
    assert fleet.cli("stop", "beta").returncode == 0
    fleet.wait_gone(pid)
    wait_until(lambda: fleet.profiles()["beta"]["phase"] == "Stopped", 10, what="beta Stopped")
    code, status = status_json(fleet)
    rows = {p["name"]: p for p in status["profiles"]}
    assert code == 1
    assert rows["beta"]["sync"] == "OutOfSync" and rows["beta"]["note"].endswith("`start beta` brings it back")
    assert rows["alpha"]["sync"] == "Synced" and rows["alpha"]["last_exit"] is None


def test_the_drain_wait_watches_a_process_until_it_exits_not_its_pid(tmp_path):
    """`down` waits for the processes its last look at the status showed (`still_runs`, which the executor's
    wait for leftovers and the observer's scan share): one still running counts, one that exited (reaped or a
    zombie) does not, and neither does another process that took its PID later."""
    from dataclasses import replace

    from fleet.platform import current_platform
    from fleet.platform.base import still_runs

    platform = current_platform()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL)
    try:
        info = wait_until(lambda: platform.process_info(proc.pid), 10, what="the sleeper's process info")
        assert still_runs(platform, info)
        reused = replace(info, start_ticks=(info.start_ticks or 0) + 1, create_time=info.create_time + 60)
        assert not still_runs(platform, reused)
        proc.kill()
        wait_until(lambda: not still_runs(platform, info), 10, what="the killed sleeper, a zombie until reaped")
    finally:
        proc.kill()
        proc.wait(10)
    assert not still_runs(platform, info)
