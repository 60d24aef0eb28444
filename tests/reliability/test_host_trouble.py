"""Trouble in the host never leaves the fleet unsupervised: a full, locked, read-only or corrupt
store, a gateway that floods its log, a shell full of secrets, a rolling change held by its budget.

Expected every time: the gateways stay supervised, the operator is told what is wrong (and only
told to discard history when the file is proven corrupt), logs stay bounded, nothing from the
operator's shell leaks into a gateway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fleet_harness import alive, environ_of, fleet  # noqa: F401
from helpers import wait_until
from reliability_support import explain

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process model (/proc)"),
    pytest.mark.timeout(240),
]


# -- the environment of a gateway ---------------------------------------------------------------------------------
def test_a_shell_secret_never_reaches_a_gateway_whoever_started_the_controller(fleet, monkeypatch):
    monkeypatch.setenv("SHELL_ONLY_SECRET", "hunter2")
    monkeypatch.setenv("LC_TIME", "C")
    fleet.write_manifest({"alpha": {"env": {"FROM_MANIFEST": "yes"}}})
    fleet.apply()
    first = fleet.wait_running("alpha")
    env = environ_of(first)
    assert env, "could not read the gateway's environment"
    assert "SHELL_ONLY_SECRET" not in env and "hunter2" not in json.dumps(env)
    assert env["FROM_MANIFEST"] == "yes" and env["HERMES_FLEET_PROFILE"] == "alpha"
    assert env["PATH"] == os.environ["PATH"] and env["LC_TIME"] == "C"  # the documented pass-through list
    config = subprocess.run([sys.executable, "-m", "fleet.cli.main", "config", "-o", "json", "-f", str(fleet.manifest)],
                            env=fleet.env(), capture_output=True, text=True, timeout=60)
    assert config.returncode == 0, explain(config)
    listed = json.loads(config.stdout)["gateway_environment"]
    assert "PATH" in listed["passed_through"] and "SHELL_ONLY_SECRET" not in json.dumps(listed)
    assert set(env) <= ({*listed["set_by_fleet"], *listed["passed_through"], "FROM_MANIFEST", "HERMES_HOME",
                        "LC_TIME"} | set(json.loads(config.stdout)["profiles"]["alpha"]["env"]))

    # The same environment when the controller is started by `controller run` instead of `apply`.
    assert fleet.cli("controller", "stop").returncode == 0
    fleet.start_controller()
    wait_until(lambda: fleet.controller_pid(), 20, what="the foreground controller")
    restarted = fleet.cli("restart", "alpha", "--timeout", "30s")
    assert restarted.returncode == 0, explain(restarted)
    second = fleet.wait_running("alpha", other_than=first)
    assert environ_of(second) == env


# -- apply and the disruption budget -------------------------------------------------------------------------------
def test_apply_waits_through_a_rolling_change_held_by_the_budget(fleet):
    names = [f"p{i:02d}" for i in range(10)]
    fleet.write_manifest({n: None for n in names}, stagger="0s")
    fleet.apply()
    before = {n: fleet.wait_running(n) for n in names}
    fleet.write_manifest({n: {"env": {"ROLL": "2"}} for n in names}, stagger="0s")
    result = fleet.cli("apply", "--timeout", "150s", timeout=180)
    assert result.returncode == 0, explain(result)  # exit 4 ("waiting on gates") only for lasting gates
    assert "Converged" in result.stdout
    for name in names:
        assert fleet.pid(name) != before[name] and alive(fleet.pid(name))
