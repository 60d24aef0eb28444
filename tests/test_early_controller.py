"""`apply` starts its controller held while it plans (fleet/cli/early_controller.py): the held controller
touches nothing until released, ends unseen when its apply ends without releasing it, is released only for
the state directory apply resolved, and the guess of that directory agrees with the real resolution."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from fleet.cli import early_controller
from fleet.cli.apply_cmd import apply
from fleet.cli.common import state_for
from fleet.cli.declared import Opt, declaration, parameter_types
from fleet.spec.load import load_manifest
from fleet.spec.markers import STATE_DIR_ENV
from fleet.store.layout import StateDir
from fleet.store.lock import LockHeld, SupervisorLock
from helpers import wait_until

REPO = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(os.name != "posix", reason="the held controller is started through a POSIX pipe here")
MANIFEST = "version: 1\nprofiles:\n  a: {driver: process, command: [/bin/true]}\n"


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.delenv(STATE_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def ended():
    """Processes a test started (directly or through the CLI), ended by PID when the test is over."""
    started: list[psutil.Process] = []
    yield started
    for proc in started:
        try:
            proc.kill()
            proc.wait(5)
        except psutil.Error:
            pass


def test_the_options_that_take_a_value_are_applys():
    kinds = parameter_types(apply)
    declared = {spelling for param in declaration(apply) or () if isinstance(param, Opt)
                and kinds[param.name] is not bool for spelling in param.spellings}
    assert declared == early_controller.VALUE_OPTIONS


@pytest.mark.parametrize("args, manifest, expected", [
    (["--state-dir", "S"], None, "S"),
    (["--state-dir=S", "--no-wait"], None, "S"),
    (["-o", "json", "--timeout", "1m", "--state-dir", "S", "--force"], None, "S"),
    ([], MANIFEST, "home/.hermes/gateway"),
    (["-f", "other.yaml"], None, None),  # no such file: apply will say so
    ([], "version: 1\nhermes: {home: /h}\nprofiles: {}\n", None),
    ([], "version: 1\n\"hermes\": {home: /h}\nprofiles: {}\n", None),
    ([], "x: &x {hermes: {home: /h}}\n<<: *x\nversion: 1\nprofiles: {}\n", None),
    ([], "{version: 1, hermes: {home: /h}, profiles: {}}\n", None),
    (["--help"], MANIFEST, None),
    (["saved.plan"], MANIFEST, None),
    (["--state-dir", "S", "saved.plan"], None, None),
])
def test_the_state_directory_is_told_before_the_manifest_is_parsed_or_not_at_all(here, args, manifest, expected):
    if manifest is not None:
        (here / "fleet.yaml").write_text(manifest)
    found = early_controller.state_root_of(args)
    assert found == (None if expected is None else here / expected)


def test_the_environment_names_the_state_directory_too(here, monkeypatch):
    monkeypatch.setenv(STATE_DIR_ENV, str(here / "from-env"))
    assert early_controller.state_root_of(["-f", "absent.yaml"]) == here / "from-env"


def test_the_guess_is_the_directory_apply_resolves_for_a_manifest_without_a_home(here):
    (here / "fleet.yaml").write_text(MANIFEST)
    resolved = state_for(None, Path("fleet.yaml"), load_manifest("fleet.yaml")).root
    assert early_controller.state_root_of([]) == resolved


def test_a_held_controller_for_another_directory_is_dismissed_not_handed_over(tmp_path):
    read_end, write_end = os.pipe()
    try:
        early_controller._held = early_controller.HeldController(tmp_path / "guessed", -1, write_end)
        assert early_controller.take(tmp_path / "resolved") is None
        assert os.read(read_end, 1) == b""  # its pipe is closed: it would end
    finally:
        os.close(read_end)
        early_controller._held = None


def held_controller(state: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fleet.controller", "--state-dir", str(state), "--held"],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@posix_only
def test_a_held_controller_whose_apply_ends_without_a_word_touches_nothing_and_ends(tmp_path, ended):
    state = tmp_path / "state"
    proc = held_controller(state)
    ended.append(psutil.Process(proc.pid))
    out, err = proc.communicate(timeout=30)  # closes its stdin, as an apply that ends does
    assert proc.returncode == 0 and out == b"" and err == b""
    assert not state.exists()


@posix_only
def test_a_released_controller_takes_the_lock_and_writes_where_any_controller_writes(tmp_path, ended):
    state = StateDir(tmp_path / "state")
    proc = held_controller(state.root)
    ended.append(psutil.Process(proc.pid))
    proc.stdin.write(b"\n")
    proc.stdin.close()
    with pytest.raises(LockHeld):
        wait_until(lambda: state.holder.exists() and b'"pid": %d' % proc.pid in state.holder.read_bytes(), 30,
                   what="the released controller to hold the lock")
        SupervisorLock(state).acquire()
    wait_until(lambda: state.controller_log.exists() and b"controller started" in state.controller_log.read_bytes(),
               10, what="its log")
    proc.send_signal(signal.SIGTERM)  # the moment it says it runs: a clean stop, not the signal's default death
    assert proc.wait(30) == 0
    assert proc.stdout.read() == b"" and proc.stderr.read() == b""  # all of it went to the log
    assert b"controller stopped" in state.controller_log.read_bytes()


def controllers_of(state: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "fleet.controller" in cmdline and str(state) in cmdline:
            found.append(proc)
    return found


def cli_apply(tmp_path: Path, state: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERMES_FLEET_")}
    return subprocess.run([sys.executable, "-m", "fleet.cli.main", "apply", "-f", str(tmp_path / "fleet.yaml"),
                           "--state-dir", str(state), "--timeout", "20s"], cwd=tmp_path,
                          env={**env, "HOME": str(tmp_path)}, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60)


@posix_only
def test_the_controller_an_apply_starts_is_the_one_it_held_while_it_planned(tmp_path, ended):
    (tmp_path / "fleet.yaml").write_text("version: 1\nprofiles:\n  a: {driver: process, command: [/bin/sleep, '60']}\n")
    state = tmp_path / "state"
    done = cli_apply(tmp_path, state)
    ended.extend(controllers_of(state))
    record = state / "a.pid"
    if record.exists():
        ended.append(psutil.Process(json.loads(record.read_text())["pid"]))
    assert done.returncode == 0, done.stdout + done.stderr
    holder = json.loads((state / ".supervisor.json").read_text())["pid"]
    assert "--held" in psutil.Process(holder).cmdline()


@posix_only
def test_an_apply_that_records_nothing_leaves_no_controller_and_no_state_directory(tmp_path, ended):
    (tmp_path / "fleet.yaml").write_text("version: 1\nprofiles: [not, a, map]\n")
    state = tmp_path / "state"
    done = cli_apply(tmp_path, state)
    assert done.returncode == 2, done.stderr
    wait_until(lambda: not controllers_of(state), 30, what="the held controller to end")
    assert not state.exists()


@posix_only
def test_a_held_controller_nobody_takes_ends_when_the_command_is_over(tmp_path, ended):
    state = tmp_path / "state"
    early_controller.start_for(["--state-dir", str(state)])
    held = early_controller._held
    assert held is not None and held.state_root == state
    ended.append(psutil.Process(held.pid))
    early_controller.dismiss()
    assert early_controller._held is None
    wait_until(lambda: not psutil.pid_exists(held.pid) or psutil.Process(held.pid).status() == psutil.STATUS_ZOMBIE,
               30, what="the dismissed controller to end")
    assert not state.exists()


@posix_only
def test_no_held_controller_is_started_beside_a_running_one(tmp_path, monkeypatch):
    state = StateDir(tmp_path / "state")
    state.root.mkdir(mode=0o700)
    lock = SupervisorLock(state)
    lock.acquire()
    try:
        spawned: list[list[str]] = []
        monkeypatch.setattr("fleet.platform.current_platform", lambda: type("P", (), {
            "spawn_daemon": lambda self, argv, log_fd, stdin_fd=None: spawned.append(argv) or 0})())
        early_controller.start_for(["--state-dir", str(state.root)])
        assert spawned == [] and early_controller.take(state.root) is None
    finally:
        lock.release()
