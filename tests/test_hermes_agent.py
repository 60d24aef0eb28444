"""Integration test against the REAL hermes-agent 0.19.0 from PyPI (not the demo gateway).

A session fixture provides a venv with `hermes-agent==0.19.0`: the one at
$HERMES_FLEET_TEST_HERMES_VENV, else `<repo>/.cache/hermes-agent-0.19.0` (gitignored), which is
created and installed on first use (about 1-2 minutes; the test is skipped, with pip's error,
when the install fails, e.g. offline). Run only these with `pytest -m hermes`, skip them with
`-m "not hermes"`.

The gateways run offline with no platforms and no keys, in a temporary HERMES_HOME, with
HERMES_GATEWAY_LOCK_DIR sandboxed to the test's tmp directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleet_harness import REPO, FleetHarness, alive, fleet  # noqa: F401
from helpers import read_json, wait_until

HERMES_VERSION = "0.19.0"
VENV_ENV = "HERMES_FLEET_TEST_HERMES_VENV"
PROFILES = ("alpha", "bravo", "charlie")

pytestmark = [
    pytest.mark.hermes,
    pytest.mark.skipif(os.name != "posix" or not sys.platform.startswith("linux"), reason="Linux process model"),
]


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@pytest.fixture(scope="session")
def hermes_venv() -> Path:
    return ensure_hermes_venv()


def ensure_hermes_venv() -> Path:
    """The venv of the real hermes-agent, installed on first use (pytest.skip, saying why, when it cannot be)."""
    explicit = os.environ.get(VENV_ENV)
    venv = Path(explicit or REPO / ".cache" / f"hermes-agent-{HERMES_VERSION}")
    exe = venv / "bin" / "hermes"
    marker = venv / f".installed-hermes-agent-{HERMES_VERSION}"  # written only after a complete install
    if exe.exists() and (explicit or marker.exists()):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock
    with FileLock(str(venv.parent / f".hermes-agent-{HERMES_VERSION}.lock")):  # parallel workers install once
        return _install(venv, exe, marker)


def _install(venv: Path, exe: Path, marker: Path) -> Path:
    if exe.exists() and marker.exists():
        return venv
    if not ((3, 11) <= sys.version_info[:2] < (3, 14)):
        pytest.skip(f"hermes-agent {HERMES_VERSION} needs Python >=3.11,<3.14 (this is {sys.version.split()[0]})")
    if not (venv / "bin" / "python").exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
        if made.returncode != 0:
            pytest.skip(f"could not create a venv at {venv}: {_tail(made.stderr + made.stdout)}")
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                          "-q", f"hermes-agent=={HERMES_VERSION}"],
                         capture_output=True, text=True, timeout=1200)
    if pip.returncode != 0 or not exe.exists():
        pytest.skip(f"pip install hermes-agent=={HERMES_VERSION} failed: {_tail(pip.stderr + pip.stdout)}")
    marker.write_text(f"hermes-agent=={HERMES_VERSION}\n")
    return venv


def gateway_state(fleet: FleetHarness, name: str) -> dict:
    data = read_json(fleet.profile_home(name) / "gateway_state.json")
    return data if isinstance(data, dict) else {}


@pytest.mark.timeout(1500)  # includes the first-time install in the session fixture
def test_real_hermes_fleet_respawn_stop_adopt_down(fleet, hermes_venv, tmp_path):
    fleet.command = [str(hermes_venv / "bin" / "hermes")]
    lock_dir = tmp_path / "gateway-locks"
    lock_dir.mkdir()
    # Hermes answers every stop with a detached `timeout 5 bash -c 'ps auxf ...'` diagnostic that carries the
    # gateway's environment. On a busy host `ps` takes seconds and the diagnostic outlives its gateway; a
    # slow `ps` makes that happen on every run, so adoption and `down` must cope with it.
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    real_ps = shutil.which("ps") or "/bin/ps"
    (slow / "ps").write_text(f"#!/bin/sh\nsleep 3\nexec {real_ps} \"$@\"\n")
    (slow / "ps").chmod(0o755)
    fleet.base_env = {"HERMES_GATEWAY_LOCK_DIR": str(lock_dir), "PATH": f"{slow}{os.pathsep}{os.environ['PATH']}"}
    for name in PROFILES:
        fleet.profile_home(name).mkdir(parents=True)  # `-p NAME` needs the profile directory
    fleet.write_manifest({name: None for name in PROFILES}, stagger="0.2s", drain_timeout="30s",
                         heartbeat_stale="300s", startup_grace="120s", backoff=["0.5s"])

    fleet.apply(timeout=120)
    pids = {name: fleet.wait_running(name, timeout=60) for name in PROFILES}
    for name, pid in pids.items():
        hermes_pid = read_json(fleet.profile_home(name) / "gateway.pid")
        assert isinstance(hermes_pid, dict) and hermes_pid["pid"] == pid, (name, hermes_pid)
        assert hermes_pid["kind"] == "hermes-gateway"

    # kill -9 of one gateway: only it is respawned.
    fleet.kill9(pids["alpha"])
    new_alpha = fleet.wait_running("alpha", other_than=pids["alpha"], timeout=60)
    assert fleet.pid("bravo") == pids["bravo"] and fleet.pid("charlie") == pids["charlie"]
    pids["alpha"] = new_alpha

    # stop: drained, a planned stop (exit 0 path), gateway_state stopped.
    result = fleet.cli("stop", "charlie")
    assert result.returncode == 0, fleet.explain(result)
    fleet.wait_gone(pids["charlie"], timeout=45)
    wait_until(lambda: gateway_state(fleet, "charlie").get("gateway_state") == "stopped", 10,
               what="charlie's gateway_state stopped")
    exited = wait_until(lambda: fleet.journal_kinds("charlie", "exited"), 10, what="charlie's exit in the journal")
    assert exited[-1].data["exit_class"] == "planned", exited
    assert exited[-1].data["code"] in (0, -15), exited  # -15: SIGTERM landed during its own shutdown
    wait_until(lambda: fleet.profiles()["charlie"]["phase"] == "Stopped", 10, what="charlie Stopped")

    # kill -9 of the controller, then a new one: adopted, zero restarts, same PIDs.
    restarts = {name: p["restarts"] for name, p in fleet.profiles().items()}
    old_controller = fleet.controller_pid()
    fleet.kill9(old_controller)
    fleet.apply(timeout=60)
    assert fleet.controller_pid() not in (None, old_controller)
    profiles = fleet.profiles()
    for name in ("alpha", "bravo"):
        assert fleet.pid(name) == pids[name] and alive(pids[name]), name
        assert profiles[name]["restarts"] == restarts[name], (name, profiles[name])
        assert any(line["pid"] == pids[name] for line in fleet.adopt_lines(name)), name
    assert profiles["charlie"]["phase"] == "Stopped" and profiles["charlie"]["pid"] is None
    assert not fleet.adopt_lines("charlie"), "charlie's shutdown diagnostic was adopted as its gateway"

    result = fleet.cli("down", "--timeout", "60s", timeout=90)
    assert result.returncode == 0, fleet.explain(result)
    assert fleet.leftovers() == []
    assert fleet._strays() == [], "processes the gateways started outlived `down`"
    for name in ("alpha", "bravo"):
        assert gateway_state(fleet, name).get("gateway_state") == "stopped", name
