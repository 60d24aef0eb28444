"""The demo's fake `hermes` gateway honours the Hermes gateway contract (real processes)."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import ProcessReaper, poll_until, python_argv, read_json, reaper, wait_until  # noqa: F401

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "demo" / "hermes"
POSIX = os.name == "posix"
posix_only = pytest.mark.skipif(not POSIX, reason="POSIX signals and flock")
linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def proc_start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def boot_epoch() -> str:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot_id}:{proc_start_ticks(1)}"


def iso_now(minutes_ago: float = 0.0) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=minutes_ago)
    return moment.isoformat().replace("+00:00", "Z")


def write_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


@dataclass
class Gateway:
    proc: subprocess.Popen
    home: Path
    out: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def file(self, name: str) -> Path:
        return self.home / name

    def status(self) -> dict:
        return read_json(self.file("gateway_state.json")) or {}

    def wait_state(self, state: str, **fields) -> dict:
        def matches():
            status = self.status()
            ok = status.get("gateway_state") == state and status.get("pid") == self.pid
            return status if ok and all(status.get(k) == v for k, v in fields.items()) else None
        return wait_until(matches, what=f"gateway_state {state} {fields}")

    def wait_exit(self) -> int:
        return self.proc.wait(timeout=15)

    def wait_log(self, text: str) -> None:
        wait_until(lambda: text in self.out.read_text(), what=f"log line {text!r}")

    def control(self, **knobs) -> None:
        write_json(self.file("fake-gateway.json"), knobs)

    def planned_stop_marker(self, target_pid: int | None = None, written_at: str | None = None) -> None:
        write_json(self.file(".gateway-planned-stop.json"), {
            "target_pid": self.pid if target_pid is None else target_pid,
            "target_start_time": proc_start_ticks(self.pid) if target_pid is None else None,
            "stopper_pid": os.getpid(), "written_at": written_at or iso_now()})


class Harness:
    def __init__(self, root: Path, reaper: ProcessReaper) -> None:
        self.root, self.reaper = root, reaper
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("HERMES_", "FAKE_HERMES_"))}
        self.env.update(HERMES_HOME=str(root), HOME=str(root.parent / "home"),
                        FAKE_HERMES_POLL_S="0.05", FAKE_HERMES_HEARTBEAT_S="0.2")
        (root / "profiles" / "alpha").mkdir(parents=True)
        self.runs = 0

    def start(self, *args: str, env: dict | None = None, home: Path | None = None) -> Gateway:
        argv = args or ("-p", "alpha", "gateway", "run", "--external-supervisor")
        self.runs += 1
        out = self.root.parent / f"gateway-{self.runs}.log"
        with open(out, "wb") as sink:
            proc = self.reaper.spawn(python_argv(SCRIPT, *argv), env={**self.env, **(env or {})},
                                     stdout=sink, stderr=subprocess.STDOUT)
        return Gateway(proc, home or self.root / "profiles" / "alpha", out)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(python_argv(SCRIPT, *args), env=self.env, capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.fixture
def hx(tmp_path, reaper) -> Harness:
    return Harness(tmp_path / "hermes", reaper)


def test_script_is_an_executable_named_hermes():
    assert SCRIPT.name == "hermes"
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")
    if POSIX:
        assert os.access(SCRIPT, os.X_OK)


def test_missing_profile_exits_1(hx):
    result = hx.run("-p", "nosuch", "gateway", "run")
    assert result.returncode == 1
    assert "Error: Profile 'nosuch' does not exist" in result.stderr


@pytest.mark.parametrize("argv", [(), ("frobnicate",), ("gateway", "run", "--bogus"), ("-p",)])
def test_unknown_usage_exits_2(hx, argv):
    result = hx.run(*argv)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_reaches_running_and_writes_identity_files(hx):
    gw = hx.start()
    status = gw.wait_state("running", active_agents=0)
    expected_start = proc_start_ticks(gw.pid)  # None off Linux, as the gateway writes
    record = {"pid": gw.pid, "kind": "hermes-gateway", "start_time": expected_start,
              "argv": [str(SCRIPT), "gateway", "run", "--external-supervisor"]}  # -p is stripped
    assert read_json(gw.file("gateway.pid")) == record
    assert read_json(gw.file("gateway.lock")) == record
    assert {k: status[k] for k in record} == record
    assert status["exit_reason"] is None and status["restart_requested"] is False
    assert status["platforms"] == {} and status["updated_at"].endswith("Z")
    first = wait_until(lambda: read_json(gw.file("state/gateway.heartbeat")))
    assert first["pid"] == gw.pid and isinstance(first["start_time"], float)
    assert isinstance(first["monotonic"], float) and first["updated_at"].endswith("Z")
    # the heartbeat is periodic
    wait_until(lambda: (read_json(gw.file("state/gateway.heartbeat")) or first)["monotonic"] > first["monotonic"])


@posix_only
def test_lock_is_held_while_running(hx):
    import fcntl

    gw = hx.start()
    gw.wait_state("running")
    with open(gw.file("gateway.lock"), "a+") as probe, pytest.raises(BlockingIOError):
        fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_second_instance_for_same_home_exits_1(hx):
    gw = hx.start()
    status = gw.wait_state("running")
    second = hx.start()
    assert second.wait_exit() == 1
    assert gw.proc.poll() is None
    assert gw.status() == status  # the loser wrote nothing
    assert read_json(gw.file("gateway.pid"))["pid"] == gw.pid


def test_default_profile_is_the_root(hx):
    for argv in (("gateway",), ("-p", "default", "gateway", "run")):
        gw = hx.start(*argv, home=hx.root)
        gw.wait_state("running")
        gw.planned_stop_marker()
        assert gw.wait_exit() == 0


def test_planned_stop_marker_alone_stops_with_0(hx):
    gw = hx.start()
    gw.wait_state("running")
    gw.planned_stop_marker()
    assert gw.wait_exit() == 0
    assert gw.status()["gateway_state"] == "stopped"
    assert not gw.file("gateway.pid").exists()
    assert not gw.file(".gateway-planned-stop.json").exists()  # consumed
    assert gw.file(".clean_shutdown").exists()


def test_marker_for_another_process_is_left_alone_and_stale_one_removed(hx):
    gw = hx.start()
    gw.wait_state("running")
    gw.planned_stop_marker(target_pid=os.getpid())
    gw.control(active_agents=1)  # seen in a state write => a full poll passed after the marker
    gw.wait_state("running", active_agents=1)
    assert gw.file(".gateway-planned-stop.json").exists() and gw.proc.poll() is None
    gw.planned_stop_marker(target_pid=os.getpid(), written_at=iso_now(minutes_ago=5))
    wait_until(lambda: not gw.file(".gateway-planned-stop.json").exists(), what="stale marker removed")
    assert gw.proc.poll() is None


@posix_only
def test_bare_sigterm_exits_1_and_leaves_running_in_state(hx):
    gw = hx.start()
    gw.wait_state("running")
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.wait_exit() == 1
    assert gw.status()["gateway_state"] == "running"  # Hermes' #42675 trap
    assert not gw.file("gateway.pid").exists()


@posix_only
def test_sigterm_with_marker_exits_0(hx):
    gw = hx.start()
    gw.wait_state("running")
    # a start time that is not the gateway's must not match on Linux...
    if proc_start_ticks(gw.pid) is not None:
        write_json(gw.file(".gateway-planned-stop.json"), {
            "target_pid": gw.pid, "target_start_time": proc_start_ticks(gw.pid) + 1,
            "stopper_pid": os.getpid(), "written_at": iso_now()})
        gw.control(active_agents=1)
        gw.wait_state("running", active_agents=1)
        assert gw.proc.poll() is None
    # ...the right one does, and SIGTERM then counts as planned
    gw.planned_stop_marker()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.wait_exit() == 0
    assert gw.status()["gateway_state"] == "stopped"


@posix_only
def test_sigint_is_a_planned_stop(hx):
    gw = hx.start()
    gw.wait_state("running")
    gw.proc.send_signal(signal.SIGINT)
    assert gw.wait_exit() == 0
    assert gw.status()["gateway_state"] == "stopped"


@posix_only
def test_sigusr1_restarts_with_75(hx):
    gw = hx.start()
    gw.wait_state("running")
    gw.proc.send_signal(signal.SIGUSR1)
    assert gw.wait_exit() == 75
    status = gw.status()
    assert status["gateway_state"] == "stopped" and status["restart_requested"] is True
    assert not gw.file("gateway.pid").exists()


def test_control_active_agents_and_external_drain(hx):
    gw = hx.start()
    gw.wait_state("running", active_agents=0)
    gw.control(active_agents=2)
    gw.wait_state("running", active_agents=2)
    epoch = boot_epoch() if Path("/proc/sys/kernel/random/boot_id").exists() else ""
    write_json(gw.file(".drain_request.json"), {
        "action": "drain", "requested_at": iso_now(), "principal": "test", "epoch": epoch,
        "suppress_notification": True})
    gw.wait_state("draining", active_agents=2)
    gw.control(active_agents=0)
    gw.wait_state("draining", active_agents=0)
    assert gw.proc.poll() is None  # a drain keeps the process up
    gw.file(".drain_request.json").unlink()
    gw.wait_state("running", active_agents=0)


@linux_only
def test_drain_request_from_another_boot_is_ignored(hx):
    gw = hx.start()
    gw.wait_state("running")
    write_json(gw.file(".drain_request.json"), {"action": "drain", "epoch": "other-boot:1"})
    gw.wait_log("ignoring drain request")
    assert gw.status()["gateway_state"] == "running"


def test_crash_exits_1_without_cleanup(hx):
    gw = hx.start()
    gw.wait_state("running")
    gw.control(crash=True)
    assert gw.wait_exit() == 1
    assert gw.status()["gateway_state"] == "running"
    assert read_json(gw.file("gateway.pid"))["pid"] == gw.pid  # stale record left behind


def test_crash_once_affects_only_one_instance(hx):
    gw = hx.start()
    gw.wait_state("running")
    gw.control(crash=True, once=True, active_agents=1)
    assert gw.wait_exit() == 1
    assert read_json(gw.file("fake-gateway.json"))["crash"] is False
    successor = hx.start()
    successor.wait_state("running", active_agents=1)


def test_exit_78_reports_startup_failed(hx):
    gw = hx.start()
    gw.wait_state("running")
    gw.control(exit=78)
    assert gw.wait_exit() == 78
    status = gw.status()
    assert status["gateway_state"] == "startup_failed" and status["exit_reason"]


def test_exit_75_from_control_requests_restart(hx):
    gw = hx.start()
    gw.wait_state("running")
    gw.control(exit=75)
    assert gw.wait_exit() == 75
    assert gw.status()["restart_requested"] is True


def test_startup_failed_exits_0(hx):
    (hx.root / "profiles" / "alpha" / "fake-gateway.json").write_text('{"startup_failed": true}')
    gw = hx.start()
    assert gw.wait_exit() == 0
    status = gw.status()
    assert status["gateway_state"] == "startup_failed" and status["exit_reason"]


def test_exit_after_env(hx):
    gw = hx.start(env={"FAKE_HERMES_EXIT_AFTER": "0", "FAKE_HERMES_EXIT_CODE": "3"})
    assert gw.wait_exit() == 3
    assert gw.status()["gateway_state"] == "running"


@posix_only
def test_hang_stops_heartbeat_and_ignores_sigterm(hx):
    gw = hx.start()
    gw.wait_state("running")
    heartbeat = gw.file("state/gateway.heartbeat")
    before = wait_until(lambda: read_json(heartbeat))
    wait_until(lambda: (read_json(heartbeat) or before) != before, what="a live heartbeat")
    gw.control(hang=True)
    gw.wait_log("wedged")
    frozen = read_json(heartbeat)
    gw.proc.send_signal(signal.SIGTERM)
    # Many heartbeat periods pass without a new heartbeat or an exit; SIGKILL is the reaper's.
    changed = poll_until(lambda: read_json(heartbeat) != frozen or gw.proc.poll() is not None, timeout=1.0)
    assert not changed
    assert gw.status()["gateway_state"] == "running"


def test_chatty_gateway_survives_its_stdout_reader_going_away(hx):
    proc = hx.reaper.spawn(python_argv(SCRIPT, "-p", "alpha", "gateway", "run"), stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, env={**hx.env, "FAKE_HERMES_CHATTY": "1"})
    gw = Gateway(proc, hx.root / "profiles" / "alpha", hx.root.parent / "unused.log")
    assert proc.stdout.readline()
    proc.stdout.close()  # every later poll line now meets EPIPE
    gw.wait_state("running")
    gw.control(active_agents=1)  # proves the loop keeps polling (and printing) after EPIPE
    gw.wait_state("running", active_agents=1)
    gw.planned_stop_marker()
    assert gw.wait_exit() == 0


def test_fleet_child_contract(hx, tmp_path):
    state_file, stop_file = tmp_path / "fleet" / "alpha.state", tmp_path / "fleet" / "alpha.stop"
    state_file.parent.mkdir()
    gw = hx.start(env={"HERMES_FLEET_STATE_FILE": str(state_file), "HERMES_FLEET_STOP_FILE": str(stop_file)})
    first = wait_until(lambda: (s := read_json(state_file)) and s["state"] == "running" and s)
    assert first["active_runs"] == 0 and first["last_activity_at"] is None
    assert first["updated_at"].endswith("Z")
    gw.control(active_agents=3)
    busy = wait_until(lambda: (s := read_json(state_file)) and s["active_runs"] == 3 and s)
    assert busy["last_activity_at"] is not None
    stop_file.write_text("{}")
    assert gw.wait_exit() == 0
    assert read_json(state_file)["state"] == "stopped"
    assert gw.status()["gateway_state"] == "stopped"


@posix_only
def test_replace_takes_over_the_same_home(hx):
    old = hx.start()
    old.wait_state("running")
    new = hx.start("-p", "alpha", "gateway", "run", "--replace")
    assert old.wait_exit() == 0  # a takeover is a planned stop for the old gateway
    new.wait_state("running")
    assert read_json(new.file("gateway.pid"))["pid"] == new.pid
    assert not new.file(".gateway-takeover.json").exists()


def test_update_exit_code_and_output(hx):
    result = hx.run("update")
    assert result.returncode == 0 and "Already up to date." in result.stdout
    (hx.root / "fake-update.json").write_text(json.dumps({"exit": 3, "output": "Update failed: offline"}))
    result = hx.run("update")
    assert result.returncode == 3 and "Update failed: offline" in result.stdout


@posix_only
def test_update_hands_supervised_gateways_back_with_75(hx):
    gw = hx.start()
    gw.wait_state("running")
    (hx.root / "fake-update.json").write_text(json.dumps({"output": "Updated.", "restart_gateways": True}))
    assert hx.run("update").returncode == 0
    assert gw.wait_exit() == 75

