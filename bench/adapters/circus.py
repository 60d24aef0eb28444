"""circus: one [watcher:x] per child, foreground circusd.

Restart delay at its minimum: circus respawns only from its periodic `manage_watchers`
pass, every `check_delay` seconds (5 s by default). The bench sets 0.1 s, the lowest
value that still keeps circusd's own idle CPU moderate; that poll interval bounds its
respawn latency. `warmup_delay = 0` (no stagger), like every tool here. No
`stats_endpoint`: setting one starts a separate `circusd-stats` process even with
`statsd = False` (it outlives a circusd killed with -9 and then spins at ~2 % CPU).
"""

from __future__ import annotations

import subprocess

from bench.adapters.base import ForegroundDaemonAdapter, base_env

CHECK_DELAY = 0.1


class CircusAdapter(ForegroundDaemonAdapter):
    name = "circus"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.proc: subprocess.Popen | None = None

    @property
    def ini(self):
        return self.s.directory / "circus.ini"

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.s.directory / 'endpoint.sock'}"

    def write_config(self) -> None:
        d = self.s.directory
        lines = [
            "[circus]",
            f"check_delay = {CHECK_DELAY}",
            f"endpoint = {self.endpoint}",
            f"pubsub_endpoint = ipc://{d / 'pubsub.sock'}",
            "statsd = False",
            "warmup_delay = 0",
        ]
        for name in self.s.names:
            lines += [
                f"[watcher:{name}]",
                f"cmd = {' '.join(self.child.argv(name, self.s.log))}",
                "numprocesses = 1",
                "warmup_delay = 0",
                f"[env:{name}]",
                f"BENCH_TOKEN = {self.tokens[name]}",
            ]
        self.ini.write_text("\n".join(lines) + "\n")

    def _env(self):
        return base_env(self.s.directory / "home")

    def start(self) -> None:
        self.proc = self.spawn_foreground(
            [self.tool.executable("circusd"), "--log-output", str(self.s.directory / "circusd.log"), str(self.ini)],
            "circusd.out",
            self._env(),
        )


    def apply_config(self) -> None:
        self.run([self.tool.executable("circusctl"), "--endpoint", self.endpoint, "reloadconfig"], env=self._env())

    def status_argv(self) -> list[str]:
        return [self.tool.executable("circusctl"), "--endpoint", self.endpoint, "status"]

