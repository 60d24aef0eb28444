"""What one scrape says: an immutable snapshot the controller builds after a pass, and the renderer reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProfileMetrics:
    """One profile's state and counts, as a scrape reports them."""
    name: str
    up: bool
    desired_running: bool
    phase: str
    phase_since: float
    sync: str
    restarts: int
    consecutive_failures: int
    last_exit_code: int | None = None
    last_exit_at: float | None = None
    last_exit_class: str | None = None
    started_at: float | None = None
    heartbeat_at: float | None = None
    active_agents: int | None = None
    drain_deadline: float | None = None
    actions: tuple[tuple[str, int], ...] = ()  # (kind, count); kinds not listed count 0


@dataclass(frozen=True)
class Histogram:
    """A duration histogram: cumulative counts per bucket, with the total count and sum."""
    buckets: tuple[int, ...]  # cumulative counts, one per catalog.DURATION_BUCKETS bound (+Inf is `count`)
    count: int
    sum: float


@dataclass(frozen=True)
class SourceMetrics:
    """The followed git source's sync state and last fetch, as a scrape reports them."""
    sync: str
    failing: bool
    last_fetch_at: float | None


@dataclass(frozen=True)
class ProcessMetrics:
    """The controller process's own start time, CPU time, memory and open descriptors."""
    start_time: float
    cpu_seconds: float
    resident_bytes: int
    open_fds: int | None


@dataclass(frozen=True)
class FleetMetrics:
    """Everything one scrape reports: the controller, its passes, its profiles and its source."""
    version: str
    python_version: str
    generation: int
    digest: str
    commit: str
    observed_generation: int
    converged: bool
    reconciles: int
    duration: Histogram
    last_reconcile_at: float
    actions: tuple[tuple[str, int], ...]
    action_errors: tuple[tuple[str, int], ...]
    maintenance: tuple[tuple[str, int], ...]  # open requests by state
    maintenance_oldest_at: float | None
    store_degraded: bool
    profiles: tuple[ProfileMetrics, ...]
    source: SourceMetrics | None = None
    process: ProcessMetrics | None = None
