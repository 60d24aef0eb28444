"""hermes-fleet through its CLI, with the process driver running the bench child.

Manifest: no stagger, restart policy `always` with a zero first backoff, heartbeat
staleness out of the way (the child writes no heartbeat), and `metrics` only when a
scenario asks for it (`adapter.metrics`). `apply` starts a detached controller and
waits for convergence; the controller's identity is in `<state>/.supervisor.json`, the
address its metrics endpoint bound in `<state>/.metrics.json`; `down` drains every
profile and stops the controller.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench import procs
from bench.adapters.base import Adapter, CommandFailed, base_env
from bench.procs import alive, create_time_of

BACKOFF = "[0, 1, 2, 4]"


def render_manifest(profiles: dict[str, tuple[list[str], str]], metrics: dict[str, str] | None = None) -> str:
    """fleet.yaml for `name -> (command, token)`, with fleet.yaml's `metrics` block if given (e.g.
    `{"listen": "127.0.0.1:0", "textfile": "/abs/fleet.prom"}`); JSON-quoted scalars are valid YAML."""
    lines = [
        "version: 1",
        "stagger: 0",
        f"restart: {{policy: always, backoff: {BACKOFF}}}",
        "health: {heartbeat_stale: 1h}",
    ]
    if metrics:
        lines.append("metrics: {" + ", ".join(f"{key}: {json.dumps(value)}" for key, value in metrics.items()) + "}")
    lines.append("profiles:")
    for name, (command, token) in profiles.items():
        argv = ", ".join(json.dumps(a) for a in command)
        lines.append(f"  {name}: {{driver: process, command: [{argv}], env: {{BENCH_TOKEN: {json.dumps(token)}}}}}")
    return "\n".join(lines) + "\n"


class HermesFleetAdapter(Adapter):
    name = "hermes-fleet"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.controller: tuple[int, float] | None = None  # (pid, create_time) last seen
        self.proc: subprocess.Popen | None = None  # a controller we run in the foreground
        self.metrics: dict[str, str] | None = None  # fleet.yaml's `metrics` for the next session (None: off)

    @property
    def manifest(self) -> Path:
        return self.s.directory / "fleet.yaml"

    @property
    def state(self) -> Path:
        return self.s.directory / "state"

    @property
    def cli(self) -> str:
        return self.tool.executable("hermes-fleet")

    def open_session(self, directory, n):
        self.controller = None
        self.proc = None
        return super().open_session(directory, n)

    def write_config(self) -> None:
        profiles = {name: (self.child.argv(name, self.s.log), self.tokens[name]) for name in self.s.names}
        self.manifest.write_text(render_manifest(profiles, self.metrics))

    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) the controller's metrics endpoint bound, from `<state>/.metrics.json`."""
        try:
            listen = json.loads((self.state / ".metrics.json").read_text()).get("listen") or ""
        except (OSError, ValueError, AttributeError):
            return None
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            return None
        return host.strip("[]"), int(port)

    def _env(self) -> dict[str, str]:
        return base_env(self.s.directory / "home", ours=True)

    def _hf(self, *args: str, timeout: float | None = None) -> None:
        self.run([self.cli, *args], env=self._env(), timeout=timeout)

    def _apply(self) -> None:
        # apply's own wait for convergence ends a minute before the bench would end the command.
        wait = max(120, int(self.command_timeout) - 60)
        self._hf("apply", "-f", str(self.manifest), "--state-dir", str(self.state), "--timeout", f"{wait}s")
        self._track_controller()

    def _identity_pid(self) -> int | None:
        try:
            return int(json.loads((self.state / ".supervisor.json").read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _track_controller(self) -> None:
        pid = self._identity_pid()
        if pid is not None and alive(pid):
            created = create_time_of(pid)
            if created is not None:
                self.controller = (pid, created)
                self.tracker.add(pid, "hermes-fleet controller")

    def start(self) -> None:
        self._apply()

    def supervisor_pids(self) -> list[int]:
        self._track_controller()
        if self.controller and alive(*self.controller):
            return [self.controller[0]]
        return []

    def managed_child_pids(self) -> dict[str, int]:
        """What the controller recorded: `<profile>.pid` records written by the live controller."""
        controller = self.supervisor_pids()
        if not controller:
            return {}
        found = {}
        for name in self.s.names:
            try:
                record = json.loads((self.state / f"{name}.pid").read_text())
            except (OSError, ValueError):
                continue
            if record.get("controller_pid") not in (None, controller[0]):
                continue  # written by an earlier controller: not (yet) adopted
            pid = record.get("pid")
            if isinstance(pid, int) and alive(pid):
                found[name] = pid
        return found

    def restart_supervisor(self) -> None:
        # What the generated service unit runs: `controller run -f` in the foreground (it
        # execs the lean controller, keeping its PID).
        self.proc = self.spawn_foreground([self.cli, "controller", "run", "-f", str(self.manifest),
                                           "--state-dir", str(self.state)],
                                          "controller.out", self._env())
        self.controller = None

    def reap_own(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            procs.forget_child(self.proc)

    def apply_config(self) -> None:
        self._apply()

    def status_argv(self) -> list[str]:
        return [self.cli, "status", "-f", str(self.manifest), "--state-dir", str(self.state)]

    def stop_all(self) -> None:
        self._hf("down", "--state-dir", str(self.state))

    def teardown(self) -> None:
        if self.session is not None and self.supervisor_pids():
            try:
                self._hf("down", "--state-dir", str(self.state), timeout=90)
            except (CommandFailed, OSError):
                pass
