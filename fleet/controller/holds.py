"""Actions held back in memory after they failed while the store could not record the failure.

Normally a failed action's backoff lives in the store and the planner applies it; only when the store
itself cannot be written does the controller hold the action here, so a failing action cannot spin the loop."""

from __future__ import annotations

from dataclasses import dataclass

ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def backoff_after(failures: int) -> float:
    """The wait after the `failures`-th failure in a row (1 is the first); the last step repeats."""
    return ERROR_BACKOFF[min(failures - 1, len(ERROR_BACKOFF) - 1)]


@dataclass(frozen=True)
class ActionRetry:
    """One profile's action of one kind, failed `failures` times in a row, not retried before `retry_at`."""
    profile: str
    kind: str
    failures: int
    retry_at: float

    def due(self, now: float) -> bool:
        return self.retry_at <= now


@dataclass(frozen=True)
class Holds:
    """The actions held back in memory, each until its retry time."""
    retries: tuple[ActionRetry, ...] = ()

    def failures(self, profile: str, kind: str) -> int:
        return next((r.failures for r in self.retries if (r.profile, r.kind) == (profile, kind)), 0)

    def after_failure(self, profile: str, kind: str, failures: int, now: float) -> Holds:
        retry = ActionRetry(profile, kind, failures, now + backoff_after(failures))
        return Holds(self.cleared(profile, kind).retries + (retry,))

    def cleared(self, profile: str, kind: str) -> Holds:
        return Holds(tuple(r for r in self.retries if (r.profile, r.kind) != (profile, kind)))

    def held(self, now: float) -> frozenset[tuple[str, str]]:
        """The (profile, kind) pairs not due yet: the planner's `skip`."""
        return frozenset((r.profile, r.kind) for r in self.retries if not r.due(now))

    def next_retry(self, now: float) -> float | None:
        return min((r.retry_at for r in self.retries if not r.due(now)), default=None)
