"""From one pass to a metrics snapshot: the counters since start, when each profile's phase began, and the
rows `status` computes (controller/status.py), so a dashboard and `status` never disagree on a phase."""

from __future__ import annotations

import platform as pyplatform
from dataclasses import dataclass

from fleet import __version__
from fleet.controller.pass_counters import PassCounters
from fleet.controller.reconcile import PassResult
from fleet.controller.status import ProfileStatus, SourceStatus, profile_rows, settled
from fleet.metrics.model import FleetMetrics, Histogram, ProcessMetrics, ProfileMetrics, SourceMetrics
from fleet.observe.model import Observed


class PhaseClock:
    """When each profile entered the phase it is in, as this controller saw it."""

    def __init__(self) -> None:
        self.since: dict[str, tuple[str, float]] = {}

    def update(self, rows: tuple[ProfileStatus, ...], now: float) -> bool:
        """Notes new phases; True when any profile's phase changed (or a profile came or went)."""
        changed = len(rows) != len(self.since)
        seen: dict[str, tuple[str, float]] = {}
        for row in rows:
            before = self.since.get(row.name)
            if before is not None and before[0] == row.phase:
                seen[row.name] = before
                continue
            changed = True
            # Seen first while running: it has been running since its start, not since this controller's.
            first_running = before is None and row.phase == "Running" and row.started_at
            seen[row.name] = (str(row.phase), float(row.started_at) if first_running else now)  # type: ignore[arg-type]
        self.since = seen
        return changed


@dataclass(frozen=True)
class GenerationFacts:
    """The current generation, with its manifest digest and git commit."""
    generation: int
    digest: str
    commit: str


def process_metrics(proc) -> ProcessMetrics | None:
    """The controller's own process_* figures, from a psutil.Process; None when the OS will not say."""
    try:
        with proc.oneshot():
            cpu = proc.cpu_times()
            fds = proc.num_fds() if hasattr(proc, "num_fds") else proc.num_handles()
            return ProcessMetrics(start_time=proc.create_time(), cpu_seconds=cpu.user + cpu.system,
                                  resident_bytes=proc.memory_info().rss, open_fds=fds)
    except Exception:  # noqa: BLE001 - psutil.Error or an OS refusal: leave the family out
        return None


def build_snapshot(result: PassResult, counters: PassCounters, phases: PhaseClock, rows: tuple[ProfileStatus, ...],
                   facts: GenerationFacts, *, observed_generation: int, ended: float, store_degraded: bool,
                   source: SourceStatus | None, process: ProcessMetrics | None) -> FleetMetrics:
    observed = result.observed
    assert observed is not None and result.plan is not None
    return FleetMetrics(
        version=__version__, python_version=pyplatform.python_version(),
        generation=facts.generation, digest=facts.digest, commit=facts.commit,
        observed_generation=observed_generation,
        converged=settled(rows, result.plan) and not result.attempted,
        reconciles=counters.reconciles, duration=_histogram(counters), last_reconcile_at=ended,
        actions=tuple(counters.actions.items()), action_errors=tuple(counters.errors.items()),
        maintenance=_maintenance_counts(observed), maintenance_oldest_at=_oldest_request(observed),
        store_degraded=store_degraded,
        profiles=tuple(_profile(row, observed, phases, counters) for row in rows),
        source=None if source is None else SourceMetrics(sync=str(source.sync), failing=source.failing,
                                                         last_fetch_at=source.source.fetched_at),
        process=process)


def _histogram(counters: PassCounters) -> Histogram:
    return Histogram(tuple(counters.buckets), counters.reconciles, counters.duration_sum)


def rows_of(result: PassResult, now: float) -> tuple[ProfileStatus, ...]:
    assert result.desired is not None and result.observed is not None and result.plan is not None
    return profile_rows(result.desired, result.observed, result.plan, now)


def _maintenance_counts(observed: Observed) -> tuple[tuple[str, int], ...]:
    counts: dict[str, int] = {}
    for request in observed.maintenance:
        if request.is_open:
            counts[request.state] = counts.get(request.state, 0) + 1
    return tuple(counts.items())


def _oldest_request(observed: Observed) -> float | None:
    return min((max(r.created_at, r.not_before or 0.0) for r in observed.maintenance if r.is_open), default=None)


def _profile(row: ProfileStatus, observed: Observed, phases: PhaseClock, counters: PassCounters) -> ProfileMetrics:
    history = observed.get(row.name).history
    heartbeat_age = row.heartbeat_age
    return ProfileMetrics(
        name=row.name, up=row.pid is not None, desired_running=row.desired == "running",
        phase=str(row.phase), phase_since=phases.since[row.name][1], sync=str(row.sync),
        restarts=row.restarts, consecutive_failures=history.failures,
        last_exit_code=history.last_exit_code if history.last_exit_class is not None else None,
        last_exit_at=history.last_exit_at if history.last_exit_class is not None else None,
        last_exit_class=history.last_exit_class,
        started_at=row.started_at if row.pid is not None else None,
        heartbeat_at=observed.get(row.name).heartbeat_at if heartbeat_age is not None else None,
        active_agents=row.active_agents,
        drain_deadline=history.drain_deadline if history.drain_intent else None,
        actions=tuple(counters.per_profile.get(row.name, {}).items()))
