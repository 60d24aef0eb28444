"""PM2 from the npm registry: one app per child in an ecosystem file, its own PM2_HOME.

Restart delay at its minimum: `restart_delay: 0` (the default) and `autorestart`.
Children run the interpreter directly (`interpreter: "none"`). Every pm2 command runs
with PM2_HOME inside the session directory, so the daemon it starts is ours alone, and
`pm2 kill` with that PM2_HOME ends it.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.adapters.base import Adapter, CommandFailed, base_env
from bench.procs import alive


class Pm2Adapter(Adapter):
    name = "pm2"

    @property
    def home(self) -> Path:
        return self.s.directory / "pm2home"

    @property
    def ecosystem(self) -> Path:
        return self.s.directory / "ecosystem.config.js"

    def write_config(self) -> None:
        apps = []
        for name in self.s.names:
            argv = self.child.argv(name, self.s.log)
            apps.append(
                {
                    "name": name,
                    "script": argv[0],
                    "args": argv[1:],
                    "interpreter": "none",
                    "exec_mode": "fork",
                    "autorestart": True,
                    "restart_delay": 0,
                    "env": {"BENCH_TOKEN": self.tokens[name]},
                }
            )
        self.ecosystem.write_text("module.exports = " + json.dumps({"apps": apps}, indent=1) + ";\n")

    def _env(self) -> dict[str, str]:
        env = base_env(self.s.directory / "home")
        env["PM2_HOME"] = str(self.home)
        return env

    def _pm2(self, *args: str) -> None:
        self.run([self.tool.executable("pm2"), *args], env=self._env())

    def _daemon_pid(self) -> int | None:
        try:
            return int((self.home / "pm2.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        self._pm2("start", str(self.ecosystem))
        self._track_daemon()

    def _track_daemon(self) -> None:
        pid = self._daemon_pid()
        if pid is not None:
            self.tracker.add(pid, "pm2 daemon")

    def supervisor_pids(self) -> list[int]:
        pid = self._daemon_pid()
        return [pid] if pid is not None and alive(pid) else []

    def managed_child_pids(self) -> dict[str, int]:
        pids = self.supervisor_pids()
        return self.children_of(pids[0]) if pids else {}

    def restart_supervisor(self) -> None:
        # No resurrect: starting the ecosystem again is what brings a crashed PM2 back.
        self.start()

    def apply_config(self) -> None:
        self._pm2("startOrReload", str(self.ecosystem), "--update-env")

    def status_argv(self) -> list[str]:
        return [self.tool.executable("pm2"), "jlist"]

    def stop_all(self) -> None:
        self._pm2("kill")

    def teardown(self) -> None:
        if self.session is not None and self.supervisor_pids():
            try:
                self._pm2("kill")
            except (CommandFailed, OSError):
                pass
