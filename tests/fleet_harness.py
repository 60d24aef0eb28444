"""A per-test fleet driven through the real `hermes-fleet` CLI, with the demo gateway.

`FleetHarness` writes a manifest under tmp_path (Hermes root and state directory there too),
runs CLI commands as subprocesses and reads the state directory. Its `cleanup()` (run by the
`fleet` fixture) leaves nothing behind: SIGKILL of every controller, then of every gateway or
other process of this test's fleet that is still alive. A process is only ever signalled when it
provably belongs to this test: its pid and create time were recorded by this fleet, and its
environment names this test's state directory (or it is the recorded controller).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from fleet.platform.systemd_scope import strip_service_env
from helpers import poll_until, read_json, wait_until

REPO = Path(__file__).resolve().parent.parent
DEMO_HERMES = REPO / "examples" / "demo" / "hermes"
BASE_PROFILE_ENV = {"FAKE_HERMES_POLL_S": "0.05"}
CLI_TIMEOUT = 60.0


def proc_start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):
        return None


def alive(pid: int, created: float | None = None) -> bool:
    """The process lives (not a zombie) and, when given, is still the one created at `created`."""
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        return created is None or abs(proc.create_time() - created) < 0.05
    except psutil.Error:
        return False


def environ_of(pid: int) -> dict[str, str]:
    try:
        return psutil.Process(pid).environ()
    except psutil.Error:
        return {}


def pids_with_env(wanted: dict[str, str]) -> list[int]:
    """Live (non-zombie) processes whose environment holds every `wanted` item."""
    out = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            env = proc.environ()
        except psutil.Error:
            continue
        if all(env.get(k) == v for k, v in wanted.items()):
            out.append(proc.pid)
    return out


class FleetHarness:
    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        self.home = tmp_path / "hermes"
        self.manifest = tmp_path / "fleet.yaml"
        self.seen: dict[int, float] = {}  # gateway pid -> create time, every one this fleet ever ran
        self.controllers: dict[int, float] = {}
        self.command = [sys.executable, str(DEMO_HERMES)]
        self.cli_entry = [sys.executable, "-m", "fleet.cli.main"]  # how this fleet's CLI and controller start
        self.controller_entry = [sys.executable, "-m", "fleet.controller"]
        self.base_env = dict(BASE_PROFILE_ENV)  # added to every profile's env in the manifest

    # -- manifest ---------------------------------------------------------------------------
    def write_manifest(self, profiles: dict[str, dict | None], *, stagger: str = "0.1s",
                       backoff: list | None = None, drain_timeout: str = "4s",
                       heartbeat_stale: str = "90s", startup_grace: str = "60s",
                       extra: dict | None = None) -> Path:
        body = {}
        for name, p in profiles.items():
            p = dict(p or {})
            p["env"] = {**self.base_env, **(p.get("env") or {})}
            body[name] = p
        doc = {
            "version": 1,
            "name": "test",
            "hermes": {"home": str(self.home), "command": self.command},
            "stagger": stagger,
            "restart": {"policy": "always", "backoff": backoff or ["0.2s"], "reset_after": "60s"},
            "drain": {"timeout": drain_timeout},
            "health": {"heartbeat_stale": heartbeat_stale, "startup_grace": startup_grace},
            "profiles": body,
        }
        if extra:
            doc.update(extra)
        self.manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
        return self.manifest

    def marked_pids(self, name: str) -> list[int]:
        """Live processes carrying this fleet's marker for `name` (duplicates would show here)."""
        return pids_with_env({"HERMES_FLEET_STATE_DIR": str(self.state), "HERMES_FLEET_PROFILE": name})

    def profile_home(self, name: str) -> Path:
        return self.home / "profiles" / name

    # -- CLI ----------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in [k for k in env if k.startswith("HERMES_FLEET_") or k.startswith("FAKE_HERMES_")]:
            del env[key]
        env["HERMES_FLEET_STATE_DIR"] = str(self.state)  # every process of this fleet carries it
        return strip_service_env(env)

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT, with_file: bool = True) -> subprocess.CompletedProcess:
        argv = [*self.cli_entry, *args, "--state-dir", str(self.state)]
        if with_file:
            argv += ["--file", str(self.manifest)]
        try:
            result = subprocess.run(argv, cwd=str(self.tmp), env=self.env(), stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=timeout)
        finally:
            self.note_pids()
        return result

    def apply(self, *extra: str, timeout: float = CLI_TIMEOUT, expect: int | None = 0) -> subprocess.CompletedProcess:
        result = self.cli("apply", "--timeout", "30s", *extra, timeout=timeout)
        if expect is not None:
            assert result.returncode == expect, self.explain(result)
        return result

    def status(self) -> dict:
        result = self.cli("status", "-o", "json")
        assert result.returncode in (0, 1), self.explain(result)
        return json.loads(result.stdout)

    def profiles(self) -> dict[str, dict]:
        return {p["name"]: p for p in self.status()["profiles"]}

    def explain(self, result: subprocess.CompletedProcess) -> str:
        log = ""
        try:
            log = (self.state / "logs" / "controller.log").read_text()[-3000:]
        except OSError:
            pass
        return (f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
                f"\n--- controller.log (tail)\n{log}")

    def events(self, profile: str | None = None) -> list[dict]:
        args = ["events", "-o", "json", "-n", "10000"] + (["--profile", profile] if profile else [])
        result = self.cli(*args)
        assert result.returncode == 0, self.explain(result)
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def journal(self, profile: str | None = None) -> list:
        """The controller's journal with precise timestamps (JournalEntry: at, epoch, profile, kind, message, data)."""
        from fleet.store.db import Store
        store = Store(self.state / "fleet.db", readonly=True)
        try:
            return store.events(profile=profile, limit=100000)
        finally:
            store.close()

    def journal_kinds(self, profile: str, kind: str) -> list:
        return [e for e in self.journal(profile) if e.kind == kind]

    # -- state directory ----------------------------------------------------------------------
    def record(self, name: str) -> dict | None:
        data = read_json(self.state / f"{name}.pid")
        return data if isinstance(data, dict) else None

    def pid(self, name: str) -> int | None:
        rec = self.record(name)
        return rec.get("pid") if rec else None

    def holder(self) -> dict | None:
        data = read_json(self.state / ".supervisor.json")
        return data if isinstance(data, dict) else None

    def controller_pid(self) -> int | None:
        h = self.holder()
        if h and alive(int(h["pid"])):
            return int(h["pid"])
        return None

    def note_pids(self) -> None:
        """Remember every gateway and controller this fleet recorded (pid + create time)."""
        try:
            entries = list(self.state.glob("*.pid"))
        except OSError:
            entries = []
        for path in entries:
            rec = read_json(path)
            if isinstance(rec, dict) and isinstance(rec.get("pid"), int):
                pid = rec["pid"]
                ct = create_time(pid)
                if ct is not None and pid not in self.seen and self._ours(pid):
                    self.seen[pid] = ct
        h = self.holder()
        if h and isinstance(h.get("pid"), int):
            ct = create_time(h["pid"])
            if ct is not None and abs(ct - float(h.get("create_time", 0))) < 1.0:
                self.controllers.setdefault(h["pid"], ct)

    def _ours(self, pid: int) -> bool:
        return environ_of(pid).get("HERMES_FLEET_STATE_DIR") == str(self.state)

    def wait_pid(self, name: str, *, other_than: int | None = None, timeout: float = 15.0) -> int:
        """The pid of a live, recorded gateway of `name` (a different one than `other_than`)."""
        def ready():
            self.note_pids()
            pid = self.pid(name)
            if pid and pid != other_than and alive(pid):
                return pid
            return None
        return wait_until(ready, timeout, what=f"a live gateway for {name} (not {other_than})")

    def wait_running(self, name: str, *, other_than: int | None = None, timeout: float = 15.0) -> int:
        """Like wait_pid, and the gateway reports gateway_state running with its own pid."""
        pid = self.wait_pid(name, other_than=other_than, timeout=timeout)

        def running():
            st = read_json(self.profile_home(name) / "gateway_state.json")
            return isinstance(st, dict) and st.get("pid") == pid and st.get("gateway_state") == "running"
        wait_until(running, timeout, what=f"{name} pid {pid} running")
        self.note_pids()  # again: at its first sight the gateway may not have been exec'd yet (not ours by environ)
        return pid

    def wait_gone(self, pid: int, timeout: float = 15.0) -> None:
        ct = self.seen.get(pid)
        wait_until(lambda: not alive(pid, ct), timeout, what=f"pid {pid} to exit")

    def control(self, name: str, **knobs) -> None:
        path = self.profile_home(name) / "fake-gateway.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(knobs))
        os.replace(tmp, path)

    def clear_control(self, name: str) -> None:
        (self.profile_home(name) / "fake-gateway.json").unlink(missing_ok=True)

    def adopt_lines(self, name: str) -> list[dict]:
        try:
            text = (self.state / f"{name}.adopt.log").read_text()
        except OSError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def kill9(self, pid: int) -> None:
        """SIGKILL a process this fleet created (checked), and wait until it is gone."""
        ct = self.seen.get(pid) or self.controllers.get(pid)
        assert ct is not None, f"pid {pid} was not created by this test's fleet"
        assert alive(pid, ct)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid, ct), 10, what=f"pid {pid} to die")

    def start_controller(self) -> subprocess.Popen:
        """A controller in the foreground of a subprocess (the lean entry point)."""
        with open(self.tmp / f"controller-{time.monotonic_ns()}.log", "wb") as log:
            proc = subprocess.Popen([*self.controller_entry, "--state-dir", str(self.state)],
                                    cwd=str(self.tmp), env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.controllers[proc.pid] = create_time(proc.pid) or time.time()
        self._popens.append(proc)
        return proc

    _popens: list

    # -- teardown -----------------------------------------------------------------------------
    def cleanup(self) -> None:
        """SIGKILL everything this fleet runs, controllers first (so that none starts a gateway again),
        then its gateways and whatever else carries this test's state directory, until nothing is left.

        No `down` here: its result was never looked at, so it proved nothing, and it cost every test a
        CLI start and a drain (about a tenth of the suite's CPU). The tests about `down` run it and
        check what it did."""
        for _ in range(5):
            self.note_pids()
            controllers = [(pid, ct) for pid, ct in self.controllers.items() if alive(pid, ct)]
            controllers += _identities([p for p in self._strays() if _is_controller(p)])  # one never recorded
            _kill_all(controllers)
            _wait_gone(controllers)
            # Only now the rest: a gateway a dying controller started in the meantime is found here.
            rest = _identities(self._strays())
            rest += [(pid, ct) for pid, ct in self.seen.items() if alive(pid, ct) and self._ours(pid)]
            _kill_all(rest)
            _wait_gone(rest)
            if not (controllers or rest):
                break
        for proc in self._popens:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for pid, ct in list(self.seen.items()):
            poll_until(lambda: not alive(pid, ct), 5)

    def _strays(self) -> list[psutil.Process]:
        """Live processes whose environment names this test's state directory (ours, by construction)."""
        out = []
        me = os.getpid()
        for proc in psutil.process_iter(["pid", "uids"]):
            try:
                if proc.pid == me or proc.info["uids"] is None or proc.info["uids"].real != os.getuid():
                    continue
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if proc.environ().get("HERMES_FLEET_STATE_DIR") == str(self.state):
                    out.append(proc)
            except psutil.Error:
                continue
        return out

    def leftovers(self) -> list[int]:
        """Every process ever recorded by this fleet (gateways and controllers) still alive."""
        self.note_pids()
        out = [pid for pid, ct in self.seen.items() if alive(pid, ct)]
        out += [pid for pid, ct in self.controllers.items() if alive(pid, ct)]
        return out


def _is_controller(proc: psutil.Process) -> bool:
    """The lean entry point, or the Windows-platform one of tests/platform_fakes.py."""
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return False
    return "fleet.controller" in cmdline or "windows-controller" in cmdline


def _identities(procs: list[psutil.Process]) -> list[tuple[int, float]]:
    """(pid, create time) of each process, taken before it is signalled (the PID-reuse guard)."""
    return [(p.pid, ct) for p in procs if (ct := create_time(p.pid)) is not None]


def _kill_all(procs: list[tuple[int, float]]) -> None:
    for pid, ct in procs:
        if alive(pid, ct):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _wait_gone(procs: list[tuple[int, float | None]], timeout: float = 5.0) -> None:
    """Until none of (pid, create time) lives (a zombie counts as gone), at most `timeout` seconds."""
    poll_until(lambda: not any(alive(pid, ct) for pid, ct in procs), timeout)


@pytest.fixture
def fleet(tmp_path):
    harness = FleetHarness(tmp_path)
    harness._popens = []
    try:
        yield harness
    finally:
        harness.cleanup()
