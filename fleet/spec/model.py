"""The effective spec: what fleet.yaml means once defaults are applied and paths resolved."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from fleet.spec.hashing import spec_hash_of

DRIVER_HERMES = "hermes"
DRIVER_PROCESS = "process"


@dataclass(frozen=True)
class RestartPolicy:
    """When and how soon a profile is started again after its process exits, and when it is crash-looping."""
    policy: str  # always | on-failure | never
    backoff: tuple[float, ...]
    cap: float
    reset_after: float
    floor: float = 0.25  # never two starts of one profile closer than this, whatever the backoff says
    start_limit_burst: int = 5  # more starts than this within start_limit_interval: crash-looping (0: off)
    start_limit_interval: float = 10.0

    def delay(self, consecutive_failures: int) -> float:
        """Backoff before the respawn that follows `consecutive_failures` failures (>= 1)."""
        if consecutive_failures <= 0:
            return 0.0
        index = min(consecutive_failures, len(self.backoff)) - 1
        return min(self.backoff[index], self.cap)


@dataclass(frozen=True)
class RetentionPolicy:
    """How much history the state directory keeps, so it stays bounded under any crash loop."""
    max_age: float = 30 * 86400.0  # journal rows, finished requests and adoption-log lines older than this go
    journal_rows: int = 100_000
    request_rows: int = 10_000
    adopt_log_bytes: int = 1_048_576


@dataclass(frozen=True)
class MetricsSpec:
    """Where the controller publishes its Prometheus metrics (fleet-wide); nothing unless set."""
    listen: str = ""  # "host:port" of the HTTP listener ("" = none); the host is always written out here
    token_file: str = ""  # absolute path of the bearer token /metrics requires ("" = none)
    textfile: str = ""  # absolute path of a node_exporter *.prom file ("" = none)

    @property
    def enabled(self) -> bool:
        return bool(self.listen or self.textfile)


@dataclass(frozen=True)
class DrainPolicy:
    """How long a gateway may take to drain before it is killed."""
    timeout: float


@dataclass(frozen=True)
class HealthPolicy:
    """When a gateway counts as wedged: how old its heartbeat may grow, and the grace it has after starting."""
    heartbeat_stale: float
    startup_grace: float


@dataclass(frozen=True)
class MaintenanceWindow:
    """A recurring time (cron schedule, duration, time zone) in which maintenance is allowed or denied."""
    kind: str  # allow | deny
    schedule: str
    duration: float
    timezone: str


@dataclass(frozen=True)
class MaintenancePolicy:
    """How a profile's maintenance runs: the idle time it waits for, the update command and the windows."""
    idle: float
    max_concurrent: int  # the fleet-wide budget (top-level maintenance.max_concurrent); no profile has its own
    update_command: tuple[str, ...]
    windows: tuple[MaintenanceWindow, ...] = ()


@dataclass(frozen=True)
class ProfileSpec:
    """One profile as the fleet runs it: its process (driver, command, cwd, env), desired state and policies."""
    name: str
    driver: str
    command: tuple[str, ...]
    cwd: str
    env: tuple[tuple[str, str], ...]  # only what hermes-fleet sets; sorted by key
    hermes_home: str  # the profile's own home (hermes driver); "" for the process driver
    desired: str  # running | stopped
    suspend: bool
    prune: bool
    stagger: float
    restart: RestartPolicy
    drain: DrainPolicy
    health: HealthPolicy
    maintenance: MaintenancePolicy
    match: str | None = None
    spec_hash: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec_hash", spec_hash_of(self.restart_relevant()))

    def restart_relevant(self) -> dict:
        """The fields whose change means the running process must be replaced."""
        return {
            "driver": self.driver,
            "command": list(self.command),
            "cwd": self.cwd,
            "env": {k: v for k, v in self.env},
            "hermes_home": self.hermes_home,
        }

    @property
    def env_map(self) -> dict[str, str]:
        return dict(self.env)


@dataclass(frozen=True)
class FleetSpec:
    """The whole effective fleet: its fleet-wide settings and every profile."""
    name: str
    stagger: float
    max_concurrent_maintenance: int
    profiles: tuple[ProfileSpec, ...]  # sorted by name
    hermes_root: str
    default_state_dir: str
    retention: RetentionPolicy = RetentionPolicy()
    metrics: MetricsSpec = MetricsSpec()

    def profile(self, name: str) -> ProfileSpec | None:
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, ProfileSpec]:
        return {p.name: p for p in self.profiles}

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.profiles)
