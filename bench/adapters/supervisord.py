"""supervisord (the `supervisor` package): one [program:x] per child, foreground daemon.

Restart delay at its minimum: supervisord has no delay setting; `startsecs=0` makes a
start count at once and `autorestart=true` respawns after any exit. One program per
child (not one group) because that is what lets `supervisorctl update` restart only the
changed child (#1154); the price is that a shutdown stops the groups one after another.
"""

from __future__ import annotations

import subprocess

from bench.adapters.base import ForegroundDaemonAdapter, base_env


class SupervisordAdapter(ForegroundDaemonAdapter):
    name = "supervisord"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.proc: subprocess.Popen | None = None

    @property
    def conf(self):
        return self.s.directory / "supervisord.conf"

    def write_config(self) -> None:
        d = self.s.directory
        (d / "childlogs").mkdir(exist_ok=True)
        lines = [
            "[unix_http_server]",
            f"file={d / 'supervisor.sock'}",
            "[supervisord]",
            "nodaemon=true",
            f"logfile={d / 'supervisord.log'}",
            f"pidfile={d / 'supervisord.pid'}",
            f"childlogdir={d / 'childlogs'}",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]",
            f"serverurl=unix://{d / 'supervisor.sock'}",
        ]
        for name in self.s.names:
            argv = " ".join(self.child.argv(name, self.s.log))
            lines += [
                f"[program:{name}]",
                f"command={argv}",
                "autostart=true",
                "autorestart=true",
                "startsecs=0",
                "startretries=1000",
                "stopsignal=TERM",
                f'environment=BENCH_TOKEN="{self.tokens[name]}"',
            ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _env(self):
        return base_env(self.s.directory / "home")

    def start(self) -> None:
        self.proc = self.spawn_foreground(
            [self.tool.executable("supervisord"), "-n", "-c", str(self.conf)], "supervisord.out", self._env()
        )


    def apply_config(self) -> None:
        self.run([self.tool.executable("supervisorctl"), "-c", str(self.conf), "update"], env=self._env())

    def status_argv(self) -> list[str]:
        return [self.tool.executable("supervisorctl"), "-c", str(self.conf), "status"]

