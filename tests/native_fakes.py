"""Shared by the take-over tests that run a real controller against the fake `systemctl` (tests/fake_systemctl.py):
a Hermes unit per profile that runs the demo gateway as Hermes' own unit would (HERMES_HOME, `--profile`), and
a watcher that proves no two gateways of one home ever ran at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from fleet.store.db import Store
from fleet.store.takeovers import Takeover, recent
from fleet_harness import DEMO_HERMES, FleetHarness
from helpers import read_json, wait_until

FAKE = Path(__file__).resolve().parent / "fake_systemctl.py"


def proc_start_ticks(pid: int) -> int | None:
    """A live process's start ticks; None once it is gone, a zombie included (a unit's gateway is reparented to
    whoever reaps orphans here, maybe late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


class FakeUnits:
    """The fake user manager: unit files, its state, its hooks; it ends every process it started."""

    def __init__(self, tmp: Path, monkeypatch):
        self.user_home = tmp / "home"
        self.unit_dir = self.user_home / ".config" / "systemd" / "user"
        self.dir = tmp / "fake-systemd"
        bin_dir = tmp / "fake-bin"
        for d in (self.unit_dir, self.dir, bin_dir, tmp / "xdg"):
            d.mkdir(parents=True, exist_ok=True)
        wrapper = bin_dir / "systemctl"
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
        wrapper.chmod(0o755)
        self.env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(self.user_home),
                    "XDG_CONFIG_HOME": str(self.user_home / ".config"), "FAKE_SYSTEMD_DIR": str(self.dir),
                    "XDG_RUNTIME_DIR": str(tmp / "xdg")}
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)

    def install(self, fleet: FleetHarness, name: str, *, start: bool = True) -> str:
        """`hermes -p NAME gateway install`, as far as a take-over cares: the unit, and (start) its gateway up."""
        home = fleet.profile_home(name)
        home.mkdir(parents=True, exist_ok=True)
        unit = f"hermes-gateway-{name}.service"
        (self.unit_dir / unit).write_text(
            "[Unit]\nDescription=Hermes Agent Gateway - Messaging Platform Integration\n\n[Service]\nType=simple\n"
            f"ExecStart={sys.executable} {DEMO_HERMES} --profile {name} gateway run\n"
            f"WorkingDirectory={home}\nEnvironment=\"HERMES_HOME={home}\"\nEnvironment=FAKE_HERMES_POLL_S=0.05\n"
            "Restart=always\nRestartSec=5\n\n[Install]\nWantedBy=default.target\n")
        if start:
            self.ctl("start", unit)
            self.wait_serving(fleet, name)
        return unit

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(FAKE), "--user", *args], env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=60)

    def state(self, unit: str) -> dict:
        data = read_json(self.dir / f"{unit}.json")
        return data if isinstance(data, dict) else {}

    def main_pid(self, unit: str) -> int | None:
        data = self.state(unit)
        pid = data.get("pid")
        return pid if pid and proc_start_ticks(pid) == data.get("start") else None

    def show(self, unit: str) -> dict[str, str]:
        out = self.ctl("show", unit, "-p", "ActiveState,MainPID,Result,ConditionResult").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_serving(self, fleet: FleetHarness, name: str, other_than: int | None = None, timeout: float = 20) -> int:
        """The unit's gateway holds the home: gateway_state running with the unit's main PID."""
        unit = f"hermes-gateway-{name}.service"

        def serving():
            pid = self.main_pid(unit)
            st = read_json(fleet.profile_home(name) / "gateway_state.json")
            ok = pid and pid != other_than and isinstance(st, dict) and st.get("pid") == pid \
                and st.get("gateway_state") == "running"
            return pid if ok else None
        return wait_until(serving, timeout, what=f"{unit} serving")

    def block(self, verb: str) -> None:
        (self.dir / f"block-{verb}").touch()

    def wait_blocked(self, verb: str, timeout: float = 30) -> None:
        wait_until(lambda: (self.dir / f"blocked-{verb}").exists(), timeout, what=f"a controller blocked in {verb}")

    def unblock(self, verb: str) -> None:
        (self.dir / f"block-{verb}").unlink(missing_ok=True)

    def fail(self, verb: str, times: int = 1) -> None:
        (self.dir / f"fail-{verb}").write_text(str(times))

    def calls(self) -> list[list[str]]:
        try:
            text = (self.dir / "calls.log").read_text()
        except OSError:
            return []
        return [json.loads(line)["argv"] for line in text.splitlines() if line.strip()]

    def cleanup(self) -> None:
        for path in self.dir.glob("*.json"):
            data = read_json(path)
            if isinstance(data, dict) and data.get("pid") and proc_start_ticks(data["pid"]) == data.get("start"):
                try:
                    os.killpg(data["pid"], signal.SIGKILL)  # its own session: the gateway and its children
                except OSError:
                    pass


@pytest.fixture
def units(tmp_path, monkeypatch):
    fake = FakeUnits(tmp_path, monkeypatch)
    try:
        yield fake
    finally:
        fake.cleanup()


class GatewayWatch:
    """Samples, every 20 ms, the live gateway processes of each watched Hermes home (a `hermes ... gateway` for
    that profile under this test's Hermes root, whoever started it). `worst` is the most ever seen at once per
    home."""

    def __init__(self, fleet: FleetHarness, names: list[str]):
        self.root = str(fleet.home)  # this test's Hermes root: other tests' gateways run elsewhere
        self.names = names
        self.worst: dict[str, list[int]] = {n: [] for n in names}
        self.seen: dict[str, set[int]] = {n: set() for n in names}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GatewayWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            found: dict[str, list[int]] = {n: [] for n in self.names}
            for proc in psutil.process_iter(["pid", "cmdline", "status"]):
                cmd = proc.info["cmdline"] or []
                if proc.info["status"] == psutil.STATUS_ZOMBIE or not any("hermes" in c for c in cmd):
                    continue
                try:
                    home = proc.environ().get("HERMES_HOME", "")
                except psutil.Error:
                    continue
                if home != self.root and not home.startswith(self.root + os.sep):
                    continue
                for name in self.names:
                    if name in cmd and "gateway" in cmd:
                        found[name].append(proc.info["pid"])
            for name, pids in found.items():
                self.seen[name] |= set(pids)
                if len(pids) > len(self.worst[name]):
                    self.worst[name] = pids
            time.sleep(0.02)

    def assert_never_two(self) -> None:
        doubled = {n: pids for n, pids in self.worst.items() if len(pids) > 1}
        assert not doubled, f"two gateways of one home at once: {doubled}"


def takeovers(fleet: FleetHarness, profile: str | None = None) -> list[Takeover]:
    if not (fleet.state / "fleet.db").exists():
        return []
    store = Store(fleet.state / "fleet.db", readonly=True)
    try:
        return recent(store, profile, 100)
    finally:
        store.close()


def wait_state(fleet: FleetHarness, profile: str, states: tuple[str, ...], timeout: float = 60) -> Takeover:
    def reached():
        rows = takeovers(fleet, profile)
        return rows[-1] if rows and rows[-1].state in states else None
    return wait_until(reached, timeout, what=f"{profile}'s take-over in {states} "
                                             f"(now: {[(r.state, r.detail) for r in takeovers(fleet, profile)][-1:]})")


def lock_holder(fleet: FleetHarness, name: str) -> int | None:
    rec = read_json(fleet.profile_home(name) / "gateway.pid")
    return rec.get("pid") if isinstance(rec, dict) else None
