"""Operating a running fleet through the CLI, with real processes: apply changes, removal,
restart, stop/start, down, status, and what commands say when no controller runs."""

from __future__ import annotations

import json
import os
import signal
import sys

import psutil
import pytest

from fleet_harness import alive, fleet  # noqa: F401
from helpers import read_json, wait_until

pytestmark = [
    pytest.mark.skipif(os.name != "posix" or not sys.platform.startswith("linux"), reason="Linux process model"),
    pytest.mark.timeout(60),
]

THREE = {"alpha": None, "beta": None, "gamma": None}


def gateway_log(fleet, name: str) -> str:
    try:
        return (fleet.state / "logs" / f"{name}.log").read_text()
    except OSError:
        return ""


def exited_with(fleet, name: str, pid: int, code: int) -> bool:
    """The gateway `pid` logged its own exit with `code` (the demo gateway logs it last)."""
    return f"fake-hermes[{pid}] exiting with code {code}:" in gateway_log(fleet, name)


def test_changing_one_profiles_env_replaces_only_that_profile(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    before = {n: fleet.wait_running(n) for n in THREE}
    hashes = {n: fleet.record(n)["spec_hash"] for n in THREE}
    fleet.write_manifest({"alpha": None, "beta": {"env": {"EXTRA_SETTING": "2"}}, "gamma": None})
    result = fleet.apply()
    assert "beta" in result.stdout and "Converged: 3 running." in result.stdout, fleet.explain(result)
    new_beta = fleet.wait_running("beta", other_than=before["beta"])
    assert not alive(before["beta"])
    assert exited_with(fleet, "beta", before["beta"], 0), gateway_log(fleet, "beta")  # drained, planned stop
    assert fleet.record("beta")["spec_hash"] != hashes["beta"]
    assert psutil.Process(new_beta).environ()["EXTRA_SETTING"] == "2"
    for name in ("alpha", "gamma"):
        assert fleet.pid(name) == before[name] and alive(before[name]), name
        assert fleet.record(name)["spec_hash"] == hashes[name]
        assert len(fleet.journal_kinds(name, "spawned")) == 1
    profiles = fleet.profiles()
    assert all(p["phase"] == "Running" and p["spec_hash"] == p["desired_spec_hash"] for p in profiles.values())


def test_removing_a_profile_drains_it_and_reclaims_its_record(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    before = {n: fleet.wait_running(n) for n in THREE}
    fleet.write_manifest({"alpha": None, "gamma": None})
    result = fleet.apply()
    assert result.returncode == 0, fleet.explain(result)
    fleet.wait_gone(before["beta"])
    assert exited_with(fleet, "beta", before["beta"], 0), gateway_log(fleet, "beta")
    home = fleet.profile_home("beta")
    assert (home / ".clean_shutdown").exists()
    assert read_json(home / "gateway_state.json")["gateway_state"] == "stopped"
    wait_until(lambda: not (fleet.state / "beta.pid").exists(), 10, what="beta's record to be reclaimed")
    exited = fleet.journal_kinds("beta", "exited")
    assert exited and exited[-1].data["exit_class"] == "planned", exited
    # The gateway took its exit-0 path (logged above); the code the controller reaps is 0, or
    # SIGTERM when the signal that follows the stop markers lands during interpreter shutdown.
    assert exited[-1].data["code"] in (0, -signal.SIGTERM), exited
    wait_until(lambda: "beta" not in fleet.profiles(), 10, what="beta to leave status")
    for name in ("alpha", "gamma"):
        assert fleet.pid(name) == before[name] and alive(before[name])


def test_restart_drains_then_respawns(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    before = {n: fleet.wait_running(n) for n in THREE}
    result = fleet.cli("restart", "beta", "--timeout", "20s")
    assert result.returncode == 0, fleet.explain(result)
    assert "beta: restarted" in result.stdout
    new_beta = fleet.wait_running("beta", other_than=before["beta"])
    assert not alive(before["beta"])
    assert exited_with(fleet, "beta", before["beta"], 0), gateway_log(fleet, "beta")
    kinds = [e.kind for e in fleet.journal("beta")]
    assert "drain_started" in kinds and "stop_sent" in kinds and "killed" not in kinds, kinds
    assert fleet.journal_kinds("beta", "spawned")[-1].data["pid"] == new_beta
    for name in ("alpha", "gamma"):
        assert fleet.pid(name) == before[name] and alive(before[name])
    assert fleet.profiles()["beta"]["restarts"] == 1


def test_restart_force_kills_then_respawns(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    before = {n: fleet.wait_running(n) for n in THREE}
    result = fleet.cli("restart", "beta", "--force", "--timeout", "20s")
    assert result.returncode == 0, fleet.explain(result)
    new_beta = fleet.wait_running("beta", other_than=before["beta"])
    assert not alive(before["beta"])
    assert f"fake-hermes[{before['beta']}] exiting" not in gateway_log(fleet, "beta")  # no graceful exit
    killed = fleet.journal_kinds("beta", "killed")
    assert killed and killed[-1].data["reason"] == "forced" and killed[-1].data["pid"] == before["beta"]
    assert not fleet.journal_kinds("beta", "drain_started")
    assert new_beta != before["beta"]
    for name in ("alpha", "gamma"):
        assert fleet.pid(name) == before[name] and alive(before[name])


def test_restart_of_a_busy_gateway_waits_for_the_drain_then_kills_at_the_deadline(fleet):
    fleet.write_manifest({"alpha": None, "beta": None}, drain_timeout="3s")
    fleet.apply()
    before = {n: fleet.wait_running(n) for n in ("alpha", "beta")}
    fleet.control("beta", active_agents=2)
    wait_until(lambda: (read_json(fleet.profile_home("beta") / "gateway_state.json") or {}).get("active_agents") == 2,
               5, what="beta busy")
    result = fleet.cli("restart", "beta", "--no-wait")
    assert result.returncode == 0, fleet.explain(result)
    # The drain is acknowledged while the agents keep running: the old process stays up.
    state_file = fleet.profile_home("beta") / "gateway_state.json"
    wait_until(lambda: (read_json(state_file) or {}).get("gateway_state") == "draining", 10, what="beta draining")
    # The gateway can see the drain request before the controller's pass has committed its bookkeeping,
    # so `status` may say Running for a moment yet: wait for Draining, with the old process still up.
    wait_until(lambda: fleet.profiles()["beta"]["phase"] == "Draining", 10, interval=0.2, what="status: beta Draining")
    assert alive(before["beta"]) and fleet.pid("beta") == before["beta"]
    new_beta = fleet.wait_running("beta", other_than=before["beta"], timeout=15)
    assert not alive(before["beta"])
    started = fleet.journal_kinds("beta", "drain_started")[-1]
    killed = fleet.journal_kinds("beta", "killed")
    assert killed and killed[-1].data["reason"] == "drain_timeout" and killed[-1].data["pid"] == before["beta"]
    assert killed[-1].at - started.at >= 3.0 - 0.05  # the controller waited the whole drain timeout
    assert not fleet.journal_kinds("beta", "stop_sent"), "a busy gateway gets no planned stop before the deadline"
    assert new_beta != before["beta"]
    assert fleet.pid("alpha") == before["alpha"] and alive(before["alpha"])
    fleet.clear_control("beta")


def test_stop_and_start_one_profile(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    before = {n: fleet.wait_running(n) for n in THREE}
    result = fleet.cli("stop", "beta")
    assert result.returncode == 0, fleet.explain(result)
    fleet.wait_gone(before["beta"])
    assert exited_with(fleet, "beta", before["beta"], 0), gateway_log(fleet, "beta")
    assert (fleet.profile_home("beta") / ".clean_shutdown").exists()
    wait_until(lambda: fleet.profiles()["beta"]["phase"] == "Stopped", 10, what="beta Stopped")
    beta = fleet.profiles()["beta"]
    assert beta["desired"] == "stopped" and beta["pid"] is None
    assert fleet.record("beta") is None
    for name in ("alpha", "gamma"):
        assert fleet.pid(name) == before[name] and alive(before[name])
    # It stays stopped across an apply of the same manifest.
    fleet.apply()
    assert fleet.profiles()["beta"]["phase"] == "Stopped"
    result = fleet.cli("start", "beta")
    assert result.returncode == 0, fleet.explain(result)
    new_beta = fleet.wait_running("beta", other_than=before["beta"])
    wait_until(lambda: fleet.profiles()["beta"]["phase"] == "Running", 10, what="beta Running")
    assert fleet.profiles()["beta"]["desired"] == "running"
    assert new_beta != before["beta"]
    for name in ("alpha", "gamma"):
        assert fleet.pid(name) == before[name] and alive(before[name])


def test_down_leaves_no_process_behind(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    before = {n: fleet.wait_running(n) for n in THREE}
    fleet.kill9(before["alpha"])  # one more pid in this fleet's history
    fleet.wait_running("alpha", other_than=before["alpha"])
    fleet.control("gamma", active_agents=1)  # a busy one: drained until the deadline, then killed
    controller = fleet.controller_pid()
    assert len(fleet.seen) >= 4 and controller
    result = fleet.cli("down", "--timeout", "20s")
    assert result.returncode == 0, fleet.explain(result)
    assert "all profiles stopped" in result.stdout
    assert fleet.leftovers() == [], "processes of the fleet still alive after down"
    assert fleet._strays() == []
    assert not list(fleet.state.glob("*.pid"))
    status = fleet.status()
    assert status["controller"]["running"] is False
    assert all(p["pid"] is None for p in status["profiles"])
    # Every gateway that was stopped on purpose exited 0 (the busy one was killed at the deadline).
    for name in ("alpha", "beta"):
        assert exited_with(fleet, name, fleet.journal_kinds(name, "spawned")[-1].data["pid"], 0)
    # The next apply brings the fleet back.
    fleet.clear_control("gamma")
    fleet.apply()
    assert all(p["phase"] == "Running" for p in fleet.profiles().values())


STATUS_PROFILE_KEYS = {"name", "phase", "pid", "restarts", "spec_hash", "desired", "last_exit"}


def test_status_json_fields(fleet):
    fleet.write_manifest(THREE)
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in THREE}
    result = fleet.cli("status", "-o", "json")
    assert result.returncode == 0, fleet.explain(result)
    status = json.loads(result.stdout)
    ctl = status["controller"]
    assert ctl["pid"] == fleet.controller_pid() and ctl["running"] is True
    assert ctl["generation"] == 1 and ctl["observed_generation"] == 1 and ctl["converged"] is True
    rows = {p["name"]: p for p in status["profiles"]}
    assert set(rows) == set(THREE)
    for name, row in rows.items():
        assert set(row) >= STATUS_PROFILE_KEYS, row
        assert row["phase"] == "Running" and row["pid"] == pids[name] and row["restarts"] == 0
        assert row["spec_hash"] == fleet.record(name)["spec_hash"] == row["desired_spec_hash"]
        assert row["desired"] == "running" and row["last_exit"] is None  # null, never a "-" placeholder
    # A second generation (gamma's env changed) and a restart (alpha killed) show up.
    old_gamma_hash = rows["gamma"]["spec_hash"]
    fleet.write_manifest({"alpha": None, "beta": None, "gamma": {"env": {"X": "1"}}})
    fleet.apply()
    fleet.kill9(pids["alpha"])
    fleet.wait_running("alpha", other_than=pids["alpha"])
    wait_until(lambda: fleet.profiles()["alpha"]["restarts"] == 1, 10, what="alpha restarts 1")
    status = fleet.status()
    assert status["controller"]["generation"] == 2 and status["controller"]["observed_generation"] == 2
    rows = {p["name"]: p for p in status["profiles"]}
    assert rows["alpha"]["last_exit"].startswith("signal 9") and rows["alpha"]["restarts"] == 1
    assert rows["gamma"]["spec_hash"] == rows["gamma"]["desired_spec_hash"] != old_gamma_hash
    assert rows["gamma"]["pid"] not in (None, pids["gamma"])
    assert rows["beta"]["pid"] == pids["beta"] and rows["beta"]["restarts"] == 0


def test_status_deep_prints_probes(fleet):
    fleet.write_manifest({"alpha": None, "beta": None})
    fleet.apply()
    fleet.wait_running("alpha")
    fleet.wait_running("beta")
    result = fleet.cli("status", "--deep")
    assert result.returncode == 0, fleet.explain(result)
    out = result.stdout
    assert "alpha:" in out and "beta:" in out
    assert "[PASS] record present" in out
    assert "[PASS] identity (pid + start time + user)" in out
    assert "[PASS] gateway.lock held by a live process" in out
    assert "[FAIL]" not in out, out
    result = fleet.cli("status", "--deep", "-o", "json")
    rows = {p["name"]: p for p in json.loads(result.stdout)["profiles"]}
    assert all(c["result"] in ("PASS", "FAIL", "SKIP") for c in rows["alpha"]["checks"])
    # A stopped profile fails its liveness probes.
    fleet.cli("stop", "beta")
    wait_until(lambda: fleet.profiles()["beta"]["phase"] == "Stopped", 10, what="beta Stopped")
    result = fleet.cli("status", "--deep", "beta")
    assert "[FAIL] record present" in result.stdout, result.stdout
    assert "[FAIL] gateway.lock held by a live process" in result.stdout


def test_commands_that_need_the_controller_say_so(fleet):
    fleet.write_manifest({"alpha": None, "beta": None})
    fleet.apply()
    pids = {n: fleet.wait_running(n) for n in ("alpha", "beta")}
    result = fleet.cli("controller", "stop")
    assert result.returncode == 0 and "gateways left running" in result.stdout, fleet.explain(result)
    assert all(alive(p) for p in pids.values())

    result = fleet.cli("status")
    assert result.returncode == 1 and "NOT RUNNING" in result.stdout, fleet.explain(result)
    status = fleet.status()
    assert status["controller"]["running"] is False and status["controller"]["pid"] is None
    assert status["controller"]["converged"] is False
    for verb in (("restart", "alpha", "--no-wait"), ("stop", "alpha"), ("start", "alpha")):
        result = fleet.cli(*verb)
        assert result.returncode == 1, fleet.explain(result)
        assert "no controller is running" in result.stderr, fleet.explain(result)
    result = fleet.cli("down", "--timeout", "5s")
    assert result.returncode == 1 and "no controller is running" in result.stderr, fleet.explain(result)
    result = fleet.cli("controller", "stop")
    assert result.returncode == 1 and "no controller is running" in result.stdout
    # Nothing was touched while no controller ran.
    assert all(fleet.pid(n) == p and alive(p) for n, p in pids.items())
    # A new controller picks up the durable requests (down's override, then start/stop...) and
    # the next apply converges everything again.
    fleet.apply()
    assert all(p["phase"] == "Running" for p in fleet.profiles().values())


def test_logs_events_and_history(fleet):
    fleet.write_manifest({"alpha": None})
    fleet.apply()
    pid = fleet.wait_running("alpha")
    result = fleet.cli("logs", "alpha")
    assert result.returncode == 0 and f"fake-hermes[{pid}]" in result.stdout, fleet.explain(result)
    result = fleet.cli("logs", "controller")
    assert result.returncode == 0 and "controller started" in result.stdout
    events = fleet.events("alpha")
    assert any(e["kind"] == "spawned" and e["data"]["pid"] == pid for e in events)
    result = fleet.cli("history", "-o", "json")
    assert result.returncode == 0, fleet.explain(result)
    assert [r["generation"] for r in json.loads(result.stdout)] == [1]
